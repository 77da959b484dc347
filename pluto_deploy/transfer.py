"""Move an archive between this machine and the host over one SSH channel, as root.

Binary, so no pty; the bytes go straight between the channel and a local
file in 1 MiB chunks, so memory stays bounded and nothing is staged on the
host. Sudo reads its password from the channel's stdin: for a download the
password goes first (tar never reads stdin), for an upload only after sudo
asked for it, and the data only once the remote side says READY.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from typing import BinaryIO

from fabric import Connection
from invoke import Exit

from .ssh import SUDO_PROMPT, explain_sudo_failure, sudo_prefix

CHUNK = 1 << 20


def _start(cxn: Connection, script: str):
    channel = cxn.transport.open_session()
    channel.exec_command(f"{sudo_prefix(cxn)}sh -c {shlex.quote(script)}")
    return channel


def _fail(cxn: Connection, channel, stderr: bytes, what: str) -> None:
    text = stderr.decode(errors="replace")
    explain_sudo_failure(cxn, text)
    last = [line for line in text.splitlines() if line.strip()]
    code = channel.recv_exit_status()
    raise Exit(
        f"{what} on {cxn.original_host} failed (exit {code}): {last[-1] if last else 'no message'}"
    )


def download(cxn: Connection, script: str, out: BinaryIO, progress: Callable[[int], None]) -> int:
    """Write the script's stdout to `out`; return the byte count."""
    channel = _start(cxn, script)
    password = cxn.config.sudo.password
    if sudo_prefix(cxn).startswith("sudo -S") and password is not None:
        channel.sendall(f"{password}\n".encode())
    # The archive needs no input: end it, so a sudo that asks again (wrong password)
    # reads end-of-file and gives up instead of waiting forever.
    channel.shutdown_write()
    total, stderr = 0, b""
    while True:
        chunk = channel.recv(CHUNK)
        while channel.recv_stderr_ready():
            stderr += channel.recv_stderr(65536)
        if not chunk:
            break
        out.write(chunk)
        total += len(chunk)
        progress(total)
    while channel.recv_stderr_ready():
        stderr += channel.recv_stderr(65536)
    if channel.recv_exit_status() != 0:
        _fail(cxn, channel, stderr, "archiving")
    return total


def upload(cxn: Connection, script: str, source: BinaryIO, progress: Callable[[int], None]) -> int:
    """Feed `source` to the script's stdin once it printed READY on stderr."""
    channel = _start(cxn, script)
    stderr, deadline = b"", time.monotonic() + 60
    while b"READY\n" not in stderr:
        if channel.exit_status_ready() or time.monotonic() > deadline:
            _fail(cxn, channel, stderr + channel.recv_stderr(65536), "unpacking")
        if channel.recv_stderr_ready():
            stderr += channel.recv_stderr(65536)
            if SUDO_PROMPT.encode() in stderr:
                if cxn.config.sudo.password is None or stderr.count(SUDO_PROMPT.encode()) > 1:
                    _fail(cxn, channel, b"sudo: incorrect password attempt", "sudo")
                channel.sendall(f"{cxn.config.sudo.password}\n".encode())
                stderr = stderr.replace(SUDO_PROMPT.encode(), b"", 1)
        else:
            time.sleep(0.02)
    total = 0
    while chunk := source.read(CHUNK):
        channel.sendall(chunk)
        total += len(chunk)
        progress(total)
    channel.shutdown_write()
    while not channel.exit_status_ready():
        if channel.recv_stderr_ready():
            stderr += channel.recv_stderr(65536)
        time.sleep(0.02)
    stderr += channel.recv_stderr(65536) if channel.recv_stderr_ready() else b""
    if channel.recv_exit_status() != 0:
        _fail(cxn, channel, stderr.replace(b"READY\n", b""), "unpacking")
    return total


def byte_counter(label: str) -> Callable[[int], None]:
    """Progress in bytes on one updating line, on a terminal only."""
    if not sys.stdout.isatty():
        return lambda _: None
    last = [0.0]

    def show(total: int) -> None:
        now = time.monotonic()
        if now - last[0] > 0.25:
            last[0] = now
            sys.stdout.write(f"\r{label}: {total / 1e6:.1f} MB")
            sys.stdout.flush()

    return show
