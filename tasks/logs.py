"""Follow Pluto's log inside the container."""

from __future__ import annotations

import sys

import paramiko
from invoke import Exit

from pluto_deploy import scripts
from pluto_deploy.cli import task
from pluto_deploy.journal import mask
from pluto_deploy.settings import load
from pluto_deploy.ssh import ACCEPT_NEW_HELP, connect, host_connection
from pluto_deploy.stream import Stream

INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


@task(
    short={"lines": "n"},
    help={
        "lines": "how many past lines to show first (default 50)",
        "no_follow": "print the past lines and return instead of following",
        "container": "show the container unit's log on the host (boot, nspawn) instead",
        "show_secret": "show the secret in links instead of secret=********",
        "accept_new_host_key": ACCEPT_NEW_HELP,
    },
)
def logs(
    c, lines=None, no_follow=False, container=False, show_secret=False, accept_new_host_key=False
):
    """Follow Pluto's log inside the container (secrets masked); Ctrl-C ends it.

    Reads `journalctl -M <container> -u pluto.service` line by line as it
    arrives, keeping only the current line in memory however long it runs.
    """
    settings = load(c.config)
    text = "50" if lines is None else str(lines)
    if not text.isdigit():
        raise Exit(f"--lines: {text!r} is not a number of lines (0 or more)")
    lines = int(text)
    cxn = connect(host_connection(c, settings), accept_new_host_key)
    script = scripts.logs(settings, lines, follow=not no_follow, container_unit=container)
    with Stream(cxn, script) as stream:
        try:
            for line in stream.lines():
                if line is not None:
                    # One write per whole line: a Ctrl-C never leaves half a line behind.
                    sys.stdout.write(f"{line if show_secret else mask(line)}\n")
                    sys.stdout.flush()
        except KeyboardInterrupt:
            # A flush the Ctrl-C cut short would otherwise end up after the message.
            sys.stdout.flush()
            raise Exit("Interrupted.", code=INTERRUPTED) from None
        except (EOFError, ConnectionError, paramiko.SSHException) as problem:
            raise Exit(f"Lost the SSH connection to {cxn.original_host} ({problem})") from None
        code = stream.exit_status()
    if code != 0:
        raise Exit(
            f"journalctl on {cxn.original_host} failed (exit {code}); is Pluto deployed there?",
            code=code,
        )
    sys.stdout.flush()
