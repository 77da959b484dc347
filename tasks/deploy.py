"""Deploy Pluto to the host in one step, safely re-runnable."""

from __future__ import annotations

import sys
import time

import paramiko
from fabric import Connection
from invoke import Exit

from pluto_deploy import tunnel
from pluto_deploy.cli import WOULD_CHANGE, task
from pluto_deploy.deployment import Deployment, Options, command_line_hosts
from pluto_deploy.errors import StepFailed
from pluto_deploy.journal import mask
from pluto_deploy.progress import Progress
from pluto_deploy.settings import load
from pluto_deploy.ssh import ACCEPT_NEW_HELP, host_connection

_OUTCOMES: list[tuple[str, str]] = []


@task(
    short={"verbose": "v"},
    help={
        "dry_run": "show what would change (diffs, rebuild, directories) and change nothing",
        "no_tunnel": "stop after the health check instead of opening the tunnel",
        "open_": "open the link in a browser once the tunnel is up",
        "force": "run nixos-rebuild switch even when nothing changed",
        "no_rollback": "on failure, leave the host as it is instead of rolling back",
        "timeout": "seconds to wait for Pluto's link (default pluto.start_timeout, 900)",
        "add_import": "add the module to imports in configuration.nix (keeps a backup)",
        "fix_ownership": "chown the data directory itself (not its contents) to Pluto's uid",
        "fix_ownership_recursive": "with --fix-ownership: chown everything inside too",
        "local_port": "port of the tunnel on this machine (default pluto.local_port)",
        "accept_new_host_key": ACCEPT_NEW_HELP,
        "verbose": "show the full remote output (secrets masked)",
        "show_secret": "print the secret link even when the output is not a terminal",
    },
)
def deploy(
    c,
    dry_run=False,
    no_tunnel=False,
    open_=False,
    force=False,
    no_rollback=False,
    timeout=None,
    add_import=False,
    fix_ownership=False,
    fix_ownership_recursive=False,
    local_port=None,
    accept_new_host_key=False,
    verbose=False,
    show_secret=False,
):
    """Deploy Pluto to the host, wait until it answers, then open the tunnel.

    Steps: pre-flight checks (read-only), push the module, create the data
    directory, nixos-rebuild switch, wait for Pluto's link in the journal,
    health check, tunnel. Nothing that is already right is done again; a
    failure after the host was changed rolls back. With several hosts (-H a,b)
    each is deployed in turn and no tunnel is opened. When the output is not a
    terminal (cron, CI, a pipe) no tunnel is opened and the secret link is
    masked unless --show-secret. --dry-run exits 0 when there is nothing to
    change and 3 when deploy would change something.
    """
    arguments = {name: value for name, value in locals().items() if name != "c"}
    hosts = command_line_hosts()
    if len(hosts) <= 1:
        _deploy(c, **arguments)
        return
    # Fabric calls this once per host of -H a,b and would stop at the first failure:
    # try each, then say in one line per host how it went.
    try:
        _deploy(c, **arguments)
        outcome = "nothing to change" if dry_run else "deployed"
    except Exit as failure:
        if failure.code == WOULD_CHANGE:
            outcome = "would change"
        else:
            print(failure.message, file=sys.stderr)
            outcome = f"FAILED: {failure.message}"
    _OUTCOMES.append((c.original_host if isinstance(c, Connection) else "?", outcome))
    if len(_OUTCOMES) == len(hosts):
        print("Summary:")
        for host, result in _OUTCOMES:
            print(f"  {host}: {result}")
        results = [result for _, result in _OUTCOMES]
        if any(result.startswith("FAILED") for result in results):
            raise Exit(code=1)
        if "would change" in results:
            raise Exit(code=WOULD_CHANGE)


def _deploy(
    c,
    dry_run,
    no_tunnel,
    open_,
    force,
    no_rollback,
    timeout,
    add_import,
    fix_ownership,
    fix_ownership_recursive,
    local_port,
    accept_new_host_key,
    verbose,
    show_secret,
):
    settings = load(
        c.config, local_port=("--local-port", local_port), start_timeout=("--timeout", timeout)
    )
    if fix_ownership_recursive and not fix_ownership:
        raise Exit("--fix-ownership-recursive: only together with --fix-ownership")
    interactive = sys.stdout.isatty()
    several = len(command_line_hosts()) > 1
    with_tunnel = not (no_tunnel or dry_run or several) and interactive
    if with_tunnel:
        tunnel.require_free_port(settings.local_port)
    options = Options(
        force=force,
        rollback=not no_rollback,
        add_import=add_import,
        fix_ownership=(
            "recursive" if fix_ownership_recursive else "directory" if fix_ownership else ""
        ),
    )
    progress = Progress(total=7, verbose=verbose)
    cxn = host_connection(c, settings)
    run = Deployment(cxn, settings, options, progress)
    started = time.monotonic()
    try:
        run.preflight(accept_new_host_key)
        if dry_run:
            run.describe_changes()
            if run.plan.actions(settings):
                raise Exit(code=WOULD_CHANGE)
            return
        run.push()
        run.data_dir()
        run.system()
        run.await_pluto()
        run.health()
    except StepFailed as failure:
        run.roll_back_after(failure)
    except KeyboardInterrupt:
        run.explain_interruption()
    except (paramiko.SSHException, EOFError, ConnectionError) as problem:
        run.explain_lost_connection(problem)
    for warning in run.warnings:
        progress.say(f"warning: {warning}")
    progress.say(f"Deployed to {cxn.original_host} in {time.monotonic() - started:.0f}s.")
    if with_tunnel:
        progress.begin(7, f"tunnel 127.0.0.1:{settings.local_port} → {cxn.original_host}")
        tunnel.run(cxn, settings, run.secret, open_, progress, accept_new_host_key)
    else:
        if no_tunnel or several:
            reason = "--no-tunnel" if no_tunnel else "several hosts"
        else:
            reason = "the output is not a terminal"
        link = run.link() if interactive or show_secret else f"{mask(run.link())} (--show-secret)"
        progress.begin(7, "tunnel")
        progress.end(f"skipped ({reason}); `fab tunnel` opens it, then: {link}")
