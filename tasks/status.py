"""`fab status`: one screen (or JSON) about Pluto on the host."""

from __future__ import annotations

import json

from invoke import Exit
from rich.console import Console

from pluto_deploy import bundle, scripts, web
from pluto_deploy.cli import task
from pluto_deploy.facts import parse
from pluto_deploy.journal import mask
from pluto_deploy.report import assess, read_extras, screen
from pluto_deploy.settings import load
from pluto_deploy.ssh import ACCEPT_NEW_HELP, connect, host_connection, run_as_root

# Like nagios plugins and `systemctl is-active`, scripts can tell "unhealthy" from "unknown".
COULD_NOT_LOOK = 2


@task(
    help={
        "json_": "print the same facts as JSON, for scripts",
        "show_secret": "show the secret in the link instead of ********",
        "accept_new_host_key": ACCEPT_NEW_HELP,
    }
)
def status(c, json_=False, show_secret=False, accept_new_host_key=False):
    """Show Pluto's state on the host.

    One read-only remote command: container and service state, Pluto's
    version, /ping, memory, CPU and tasks against the limits, notebook
    directory size and free disk, drift against what deploy would push now.
    Exit status: 0 healthy, 1 unhealthy, 2 could not look (no connection, no
    root) or Pluto is not deployed there. --json always prints one JSON object,
    with an "error" field when it could not look.
    """
    s = load(c.config)
    cxn = host_connection(c, s)
    try:
        connect(cxn, accept_new_host_key)
        output = run_as_root(cxn, scripts.facts(s, bundle.FILE_NAMES) + scripts.status_extras(s))
    except Exit as problem:
        if json_:
            print(
                json.dumps({"host": cxn.original_host, "healthy": False, "error": problem.message})
            )
            raise Exit(code=COULD_NOT_LOOK) from None
        raise Exit(problem.message, code=COULD_NOT_LOOK) from None
    facts = parse(output.stdout)
    ping = None
    if facts.container_state == "active":
        answer = web.get(cxn, s.pluto_address, s.port, "/ping")
        ping = answer.status if answer else None
    report = assess(s, cxn.original_host, facts, read_extras(output.stdout), ping)
    if json_:
        if not show_secret and report["link"]:
            report["link"] = mask(report["link"])
        print(json.dumps(report, indent=2))
    elif report["deployed"]:
        body, _, verdict = screen(report, show_secret).rpartition("\n")
        console = Console(highlight=False)  # colour only on a terminal, never with NO_COLOR
        console.print(body, markup=False, soft_wrap=True)
        colour = "green" if report["healthy"] else "bold red"
        console.print(verdict, style=colour, markup=False, soft_wrap=True)
    if not report["deployed"]:
        host = cxn.original_host
        message = f"Pluto is not deployed on {host} ({s.module_dir} is missing); run `fab deploy`"
        raise Exit(None if json_ else message, code=COULD_NOT_LOOK)
    if not report["healthy"]:
        raise Exit(code=1)
