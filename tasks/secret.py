"""Replace Pluto's secret, so the old link and cookies stop working."""

from __future__ import annotations

import hashlib

from invoke import Exit

from pluto_deploy import scripts, web
from pluto_deploy.cli import task
from pluto_deploy.errors import StepFailed
from pluto_deploy.journal import local_link
from pluto_deploy.progress import Progress
from pluto_deploy.settings import load
from pluto_deploy.ssh import ACCEPT_NEW_HELP, check, connect, host_connection, run_as_root
from pluto_deploy.waiting import wait_for_link

# How long the launcher gets to notice the new file (it polls every second).
SWAP_TIMEOUT = 20


@task(
    help={
        "restart": "restart pluto.service (running notebooks stop) instead of swapping it live",
        "accept_new_host_key": ACCEPT_NEW_HELP,
    }
)
def rotate_secret(c, restart=False, accept_new_host_key=False):
    """Give Pluto a new secret; the old link and cookies stop working at once.

    The new secret is generated on the host (never on a command line) and the
    running server swaps it in without a restart, so open notebooks keep
    running. With --restart, or if the launcher does not confirm the swap,
    only pluto.service is restarted (never the container).
    """
    s = load(c.config)
    cxn = connect(host_connection(c, s), accept_new_host_key)
    host, progress = cxn.original_host, Progress(total=3)
    if web.get(cxn, s.pluto_address, s.port, "/ping") is None:
        raise Exit(f"Pluto is not running on {host}; run `fab deploy` (or see `fab logs`)")
    progress.begin(1, f"new secret in {s.secret_file}")
    values = dict(
        line.split("=", 1)
        for line in check(run_as_root(cxn, scripts.rotate_secret(s)), "rotate").stdout.splitlines()
        if "=" in line
    )
    old, new = values["old"].strip(), values["secret"].strip()
    fingerprint = hashlib.sha256(new.encode()).hexdigest()[:12]
    progress.end(f"written (fingerprint {fingerprint})")
    cursor, since = values.get("cursor") or None, int(values["now"])

    progress.begin(2, "Pluto takes it")
    applied = False
    if not restart:
        try:
            wait_for_link(
                cxn,
                s,
                cursor,
                since,
                progress,
                f"Secret rotated (fingerprint {fingerprint})",
                SWAP_TIMEOUT,
            )
            applied = True
            progress.end("swapped in live, no restart")
        except StepFailed:
            progress.note("the launcher did not confirm; restarting pluto.service")
    if not applied:
        check(run_as_root(cxn, scripts.restart_pluto(s)), "restart")
        link, _ = wait_for_link(cxn, s, cursor, since, progress)
        if new not in link:
            raise Exit(
                f"Pluto on {host} restarted with another secret than the new one; see `fab logs`"
            )
        progress.end("restarted pluto.service (the container kept running)")

    progress.begin(3, "check")
    fresh = web.get(cxn, s.pluto_address, s.port, f"/?secret={new}")
    stale = web.get(cxn, s.pluto_address, s.port, f"/?secret={old}")
    if not (fresh and fresh.status == 200 and stale and stale.status == 403):
        raise Exit(
            f"after the rotation on {host}, the new link answers {fresh and fresh.status} "
            f"and the old {stale and stale.status}"
        )
    progress.end("the new link answers 200, the old one 403")
    progress.say(f"New link (through `fab tunnel`): {local_link(new, s.local_port)}")
