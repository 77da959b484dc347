"""Forward a local port to Pluto through the system's OpenSSH client, reconnecting on drops.

Why OpenSSH and not Fabric's forward_local: forward_local copies 1 KB chunks
between polling threads and dies for good on the first refused channel
(docs/fabric-facts.md; measured at 12 vs 254 MB/s). `ssh -N -L` moves data in
OpenSSH's own event loop, so the tunnel is as fast as plain ssh by
construction; this module only supervises it: same user, port, identities,
ssh_config (including a file given with `fab -S`) and host-key policy as the
Fabric connection, one line per drop and per reconnect, Ctrl-C ends it.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import signal
import socket
import subprocess
import time
import webbrowser

import psutil
from fabric import Connection
from invoke import Exit

from . import scripts
from .journal import local_link
from .progress import Progress
from .settings import Settings
from .ssh import known_hosts_files, run_as_root

BACKOFF_LIMIT = 30


def port_holder(port: int) -> psutil.Process | str | None:
    """Who listens on 127.0.0.1:`port` here: the process if it can be told, None if free."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return None
        except OSError as problem:
            if problem.errno != errno.EADDRINUSE:
                return f"unusable ({problem.strerror})"
    with contextlib.suppress(psutil.Error):
        for connection in psutil.net_connections(kind="tcp"):
            if (
                connection.status == psutil.CONN_LISTEN
                and connection.laddr.port == port
                and connection.pid
            ):
                return psutil.Process(connection.pid)
    return "another program"


def _is_our_tunnel(process: psutil.Process, port: int) -> bool:
    """`ssh -N -L 127.0.0.1:PORT:…` as `fab tunnel` (ssh_command) starts it."""
    with contextlib.suppress(psutil.Error):
        argv = process.cmdline()
        return process.name() == "ssh" and "-N" in argv and f"127.0.0.1:{port}:" in " ".join(argv)
    return False


def require_free_port(port: int) -> None:
    holder = port_holder(port)
    if holder is None:
        return
    if isinstance(holder, psutil.Process) and _is_our_tunnel(holder, port):
        raise Exit(
            f"your tunnel from `fab tunnel` (pid {holder.pid}) already serves local port "
            f"{port}: use it, or deploy with --no-tunnel"
        )
    if isinstance(holder, psutil.Process):
        with contextlib.suppress(psutil.Error):
            holder = f"pid {holder.pid} ({holder.name()})"
    raise Exit(
        f"local port {port} is already in use on this machine by {holder}; "
        "pick a free one with --local-port N (or pluto.local_port)"
    )


def ssh_command(
    cxn: Connection, settings: Settings, accept_new_host_key: bool = False
) -> list[str]:
    """`ssh -N -L` with everything the Fabric connection uses."""
    user_files, global_files = known_hosts_files(cxn)
    command = [
        "ssh", "-N",
        "-L", f"127.0.0.1:{settings.local_port}:{settings.pluto_address}:{settings.port}",
        "-o", "ExitOnForwardFailure=yes",
        "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3",
        "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
        "-o", f"StrictHostKeyChecking={'accept-new' if accept_new_host_key else 'yes'}",
        "-o", "UserKnownHostsFile=" + " ".join(str(p) for p in user_files),
        "-o", "GlobalKnownHostsFile=" + " ".join(str(p) for p in global_files),
        "-l", cxn.user, "-p", str(cxn.port),
    ]  # fmt: skip
    # `fab -S FILE` lands only in the private _runtime_ssh_path (docs/fabric-facts.md).
    ssh_config = getattr(cxn.config, "_runtime_ssh_path", None) or cxn.config.get("ssh_config_path")
    if ssh_config:
        command += ["-F", str(ssh_config)]
    identities = cxn.connect_kwargs.get("key_filename") or []
    for identity in [identities] if isinstance(identities, str) else identities:
        command += ["-i", str(identity)]
    return [*command, cxn.original_host]


def _pings(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/ping")
        response = connection.getresponse()
        return response.status == 200 and response.read() == b"OK!"
    except (OSError, http.client.HTTPException):
        return False


def _listening(port: int, process: subprocess.Popen, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        time.sleep(0.05)
    return False


def _why(stderr: str, cxn: Connection) -> str:
    if "Permission denied" in stderr:
        where = f"{cxn.user}@{cxn.original_host}"
        return f"SSH login as {where} was refused (the tunnel needs a key, not a password)"
    if (
        "Host key verification failed" in stderr
        or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr
    ):
        host = cxn.original_host
        return f"the SSH host key of {host} is unknown or changed (see --accept-new-host-key)"
    if "Address already in use" in stderr or "cannot listen" in stderr:
        return "the local port was taken meanwhile (--local-port)"
    last = [line for line in stderr.splitlines() if line.strip()]
    return last[-1] if last else "ssh exited"


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _start(command: list[str], port: int, cxn: Connection) -> tuple[subprocess.Popen, str | None]:
    """Start ssh; (process, None) once Pluto answers through it, else (process, why not)."""
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True, text=True,
    )  # fmt: skip
    if _listening(port, process) and _pings(port):
        return process, None
    forwarding = process.poll() is None
    _stop(process)
    if forwarding:  # ssh forwards, but nothing answers on the host
        return process, f"Pluto is not running on {cxn.original_host}; see `fab logs`"
    return process, _why(process.stderr.read(), cxn)


def run(
    cxn: Connection,
    settings: Settings,
    secret: str | None,
    open_browser: bool = False,
    progress: Progress | None = None,
    accept_new_host_key: bool = False,
) -> None:
    """Keep the tunnel up until Ctrl-C; print the link once Pluto answers through it."""
    progress = progress or Progress(total=1)
    host, port = cxn.original_host, settings.local_port
    command = ssh_command(cxn, settings, accept_new_host_key)
    url = local_link(secret, port) if secret else f"http://localhost:{port}/"
    cxn.close()  # the tunnel is OpenSSH's from here on
    process = None
    # A closed terminal (SIGHUP), `kill` or `timeout` (SIGTERM) end the tunnel like
    # Ctrl-C: ssh runs in a session of its own and would otherwise keep the port.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        process, problem = _start(command, port, cxn)
        if problem:
            if progress.label:
                progress.fail("no tunnel")
            raise Exit(f"Tunnel to {host} failed: {problem}")
        shown = url if secret else f"{url} (ask your admin for the secret link)"
        (progress.end if progress.label else progress.say)(shown)
        progress.say("Tunnel open; Ctrl-C closes it.")
        if open_browser:
            webbrowser.open(url)
        while True:
            process.wait()
            backoff = 1
            progress.say(
                f"Connection to {host} lost ({_why(process.stderr.read(), cxn)}); reconnecting."
            )
            while True:
                time.sleep(backoff)
                process, problem = _start(command, port, cxn)
                if problem is None:
                    break
                backoff = min(backoff * 2, BACKOFF_LIMIT)
                progress.say(f"Reconnecting to {host} failed ({problem}); retrying in {backoff}s.")
            progress.say(f"Reconnected to {host}.")
    except KeyboardInterrupt:
        progress.say("Tunnel closed.")
    finally:
        if process is not None:
            _stop(process)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def read_secret(cxn: Connection, settings: Settings) -> str | None:
    """The secret, read as root; None (with a note) for a user without sudo."""
    try:
        result = run_as_root(cxn, scripts.read_secret(settings))
    except Exit:
        if cxn.config.sudo.password is not None:
            raise
        print(f"Note: {cxn.user} cannot read the secret on {cxn.original_host} (no sudo).")
        return None
    secret = result.stdout.strip()
    return secret if result.ok and secret else None
