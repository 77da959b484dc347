"""`fab tunnel`: the SSH tunnel to Pluto, as the system's OpenSSH runs it."""

from __future__ import annotations

from invoke import Exit

from pluto_deploy import scripts, web
from pluto_deploy.cli import task
from pluto_deploy.progress import Progress
from pluto_deploy.settings import load
from pluto_deploy.ssh import ACCEPT_NEW_HELP, connect, host_connection
from pluto_deploy.tunnel import read_secret, require_free_port, run


@task(
    help={
        "local_port": "port of the tunnel on this machine (default pluto.local_port)",
        "open_": "open the link in a browser once the tunnel is up",
        "accept_new_host_key": ACCEPT_NEW_HELP,
    }
)
def tunnel(c, local_port=None, open_=False, accept_new_host_key=False):
    """Open the SSH tunnel to Pluto and print the link; Ctrl-C closes it.

    Forwards 127.0.0.1:<local port> here to Pluto on the host through the
    system's ssh (same user, key, ssh_config and host keys as fab), checks
    /ping through it before printing the link, and reconnects by itself when
    the connection drops.
    """
    settings = load(c.config, local_port=("--local-port", local_port))
    require_free_port(settings.local_port)
    cxn = connect(host_connection(c, settings), accept_new_host_key)
    secret = read_secret(cxn, settings)
    if web.get(cxn, settings.pluto_address, settings.port, "/ping") is None:
        if not cxn.run(scripts.is_deployed(settings), warn=True, hide=True).ok:
            raise Exit(f"Pluto is not deployed on {cxn.original_host}; run `fab deploy` first")
        raise Exit(f"Pluto is not running on {cxn.original_host}; see `fab logs`")
    run(cxn, settings, secret, open_, Progress(total=1), accept_new_host_key)
