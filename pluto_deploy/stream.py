"""Run a long remote command and read it line by line, with bounded memory.

Invoke keeps all of a command's output in memory and re-joins it for every
chunk (invoke#1079, docs/fabric-facts.md), which is fine for short commands but not
for following a journal for hours. This reads a raw Paramiko channel instead.
It asks for a pty, so closing the channel hangs up the remote command (sshd
sends SIGHUP), and answers sudo's password prompt only once it appears, so
the password is never echoed.
"""

from __future__ import annotations

import collections
import contextlib
import shlex
from collections.abc import Iterator

import paramiko
from fabric import Connection
from invoke import Exit
from paramiko.ssh_exception import ProxyCommandFailure

from .ssh import SUDO_PROMPT, explain_sudo_failure, sudo_prefix

LONGEST_LINE = 1 << 20


class Stream:
    def __init__(self, cxn: Connection, script: str, as_root: bool = True):
        prefix = sudo_prefix(cxn) if as_root else ""
        self.cxn = cxn
        self.password = cxn.config.sudo.password if prefix.startswith("sudo -S") else None
        self.channel = cxn.transport.open_session()
        self.channel.get_pty(term="dumb", width=4000, height=50)
        self.channel.exec_command(f"{prefix}sh -c {shlex.quote(script)}")
        self.channel.settimeout(0.2)
        self.pending = b""
        self.prompted = False

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        # Closing sends a message; on a connection that is already gone (a Ctrl-C at the
        # terminal also ends the ProxyCommand) there is nobody left to tell.
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self.channel.close()

    def lines(self) -> Iterator[str | None]:
        """Each complete line; None after 0.2 s of silence (to check deadlines); ends at EOF."""
        prompt = SUDO_PROMPT.encode()
        while True:
            try:
                chunk = self.channel.recv(65536)
            except TimeoutError:
                if not self.cxn.transport.is_active():
                    # The SSH connection is gone (host down, proxy ended): say so once
                    # instead of waiting forever.
                    raise EOFError(self._why_closed()) from None
                yield None
                continue
            if not chunk:
                if self.pending:
                    yield self._line(self.pending)
                if not self.cxn.transport.is_active():
                    raise EOFError(self._why_closed())
                return
            self.pending += chunk
            if prompt in self.pending:
                self._answer_prompt()
                self.pending = self.pending.replace(prompt, b"")
            while b"\n" in self.pending or len(self.pending) > LONGEST_LINE:
                line, _, self.pending = self.pending.partition(b"\n")
                yield self._line(line)

    def _why_closed(self) -> str:
        saved = self.cxn.transport.saved_exception
        if isinstance(saved, ProxyCommandFailure):
            return f"its ProxyCommand ended: {saved.error}"
        return "the SSH connection closed"

    def _answer_prompt(self) -> None:
        if self.prompted or self.password is None:
            self.close()
            raise Exit(
                f"sudo on {self.cxn.original_host} rejected the password for {self.cxn.user}"
            )
        self.prompted = True
        self.channel.sendall(f"{self.password}\n".encode())

    def _line(self, raw: bytes) -> str:
        text = raw.decode(errors="replace").rstrip("\r")
        if text.startswith("sudo: "):
            explain_sudo_failure(self.cxn, text)
        return text

    def exit_status(self) -> int:
        return self.channel.recv_exit_status()


def run_streamed(cxn: Connection, script: str, progress) -> tuple[int, list[str]]:
    """Run `script` as root, showing its lines as progress; (exit code, last 200 lines)."""
    lines: collections.deque[str] = collections.deque(maxlen=200)
    with Stream(cxn, script) as stream:
        for line in stream.lines():
            if line is not None:
                lines.append(line)
                if not line.startswith("@@pluto-deploy"):  # the tool's own markers
                    progress.remote(line)
                    progress.note(line)
        return stream.exit_status(), list(lines)
