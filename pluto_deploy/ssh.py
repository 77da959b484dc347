"""Open the SSH connection to the host: default host, verified host keys, sudo, clear errors."""

from __future__ import annotations

import contextlib
import io
import os
import re
import select
import shlex
import socket
import subprocess
from pathlib import Path

import paramiko
from fabric import Connection
from invoke import Exit, FailingResponder
from invoke.exceptions import CommandTimedOut, Failure
from paramiko.ssh_exception import NoValidConnectionsError, ProxyCommandFailure

from .errors import StepFailed
from .settings import Settings

SUDO_PROMPT = "[pluto-deploy] sudo password: "
ACCEPT_NEW_HELP = (
    "trust an SSH host key seen for the first time and add it to known_hosts "
    "(like StrictHostKeyChecking=accept-new)"
)


class UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey):
        super().__init__(hostname)
        self.hostname = hostname
        self.key = key


class RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """Fabric accepts any host key (AutoAddPolicy, fabric#2071); we refuse unknown ones."""

    def missing_host_key(self, client, hostname, key):
        raise UnknownHostKey(hostname, key)


class AcceptNew(paramiko.MissingHostKeyPolicy):
    """Trust a first-seen key and append it to the user's known_hosts."""

    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as file:
            file.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        print(f"Added the host key of {hostname} ({fingerprint(key)}) to {self.known_hosts}")


def fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def known_hosts_files(cxn: Connection) -> tuple[list[Path], list[Path]]:
    """(user files, global files) as OpenSSH would use them for this host."""
    user = cxn.ssh_config.get("userknownhostsfile", "~/.ssh/known_hosts ~/.ssh/known_hosts2")
    system = cxn.ssh_config.get(
        "globalknownhostsfile", "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2"
    )
    expand = lambda text: [Path(os.path.expanduser(p)) for p in shlex.split(text)]  # noqa: E731
    return expand(user), expand(system)


class ProxyCommand(paramiko.ProxyCommand):
    """paramiko's ProxyCommand, except that a command which ends, ends the connection.

    paramiko 5.1's recv() keeps calling os.read() after the command's output reached its
    end (paramiko/proxy.py, `ProxyCommand.recv`): a loop at 100% CPU that never reports
    the lost connection, and the command's own stderr (OpenSSH's "Connection refused",
    socat's error) is never shown. Here the end of its output, or writing to a command
    that has ended, raises ProxyCommandFailure with the last line it wrote to stderr.
    """

    @classmethod
    def for_host(cls, host: str, command: str) -> ProxyCommand:
        """%h, %p, %r expanded as Fabric's Connection.open_gateway does (via SSHConfig)."""
        config = paramiko.SSHConfig()
        config.parse(io.StringIO(f"Host {host}\n    ProxyCommand {command}\n"))
        return cls(config.lookup(host)["proxycommand"])

    def send(self, content: bytes) -> int:
        try:
            self.process.stdin.write(content)
        except OSError:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)  # so that its stderr is complete
            raise ProxyCommandFailure(" ".join(self.cmd), self._last_error()) from None
        return len(content)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # it may have ended, and been reaped
            super().close()

    def recv(self, size: int) -> bytes:
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        if not ready:
            raise TimeoutError
        data = os.read(self.process.stdout.fileno(), size)
        if data:
            return data
        raise ProxyCommandFailure(" ".join(self.cmd), self._last_error())

    def _last_error(self) -> str:
        os.set_blocking(self.process.stderr.fileno(), False)
        try:
            text = (self.process.stderr.read() or b"").decode(errors="replace")
        except OSError:
            text = ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else "it ended the connection"


def host_connection(c, settings: Settings) -> Connection:
    """The Connection for this task: `-H` if given, else `pluto.host` from the settings.

    Fabric has no config key for a default host (docs/fabric-facts.md), so a task run
    without -H gets a plain local Context; build the Connection from the same
    config then, so ssh_config (-S), identities and prompts still apply.
    """
    if isinstance(c, Connection):
        return c
    return Connection(settings.host, config=c.config)


def connect(cxn: Connection, accept_new_host_key: bool = False) -> Connection:
    """Open `cxn` with host-key checking; any failure ends the task with one line."""
    user_files, global_files = known_hosts_files(cxn)
    for path in global_files:
        if path.is_file():
            cxn.client.load_system_host_keys(str(path))
    for path in user_files:
        if path.is_file():
            cxn.client.get_host_keys().load(str(path))
    policy = AcceptNew(user_files[0]) if accept_new_host_key else RefuseUnknown()
    cxn.client.set_missing_host_key_policy(policy)
    where = f"{cxn.user}@{cxn.original_host}"
    if isinstance(cxn.gateway, str):
        proxy = ProxyCommand.for_host(cxn.host, cxn.gateway)
        cxn.connect_kwargs = {**cxn.connect_kwargs, "sock": proxy}
        cxn.gateway = None
    try:
        cxn.open()
    except UnknownHostKey as problem:
        raise Exit(
            f"{cxn.original_host}: unknown SSH host key {fingerprint(problem.key)}; "
            "check it with the host's admin, then run again with --accept-new-host-key"
        ) from None
    except paramiko.BadHostKeyException as problem:
        raise Exit(
            f"{cxn.original_host}: the SSH host key CHANGED (now {fingerprint(problem.key)}); "
            "if the host was reinstalled, remove the old key with "
            f"`ssh-keygen -R {problem.hostname}`"
        ) from None
    except paramiko.PasswordRequiredException:
        keys = cxn.connect_kwargs.get("key_filename") or cxn.ssh_config.get("identityfile")
        key = (keys[0] if isinstance(keys, list) and keys else keys) or "your key"
        raise Exit(
            f"SSH login as {where}: the key {key} is locked with a passphrase and not in "
            f"your agent; run `ssh-add {key}` and try again"
        ) from None
    except paramiko.AuthenticationException:
        raise Exit(
            f"SSH login as {where} was refused; use a key the host accepts "
            "(ssh-agent, -i KEY or IdentityFile in ~/.ssh/config)"
        ) from None
    except socket.gaierror:
        raise Exit(
            f"Unknown host {cxn.original_host}: neither DNS nor your ssh_config knows it "
            "(pass -H HOST or set pluto.host)"
        ) from None
    except ProxyCommandFailure as problem:
        raise Exit(
            f"Could not reach {cxn.original_host} through its ProxyCommand: {problem.error}"
        ) from None
    except (NoValidConnectionsError, OSError, paramiko.SSHException) as problem:
        raise Exit(f"Could not connect to {where}: {problem}") from None
    return cxn


def is_root(cxn: Connection) -> bool:
    return cxn.user == "root"


def sudo_prefix(cxn: Connection) -> str:
    """How a command becomes root here: nothing as root, else sudo (never asks twice)."""
    if is_root(cxn):
        return ""
    if cxn.config.sudo.password is None:
        return "sudo -n "
    return f"sudo -S -p {shlex.quote(SUDO_PROMPT)} "


def explain_sudo_failure(cxn: Connection, output: str) -> None:
    """Raise Exit if `output` shows sudo, not the command, failed."""
    host = cxn.original_host
    asks = "a password is required" in output
    refused = "incorrect password" in output or "Sorry, try again" in output
    if (asks or refused) and not _in_wheel(cxn):
        # sudo says the same to a user with no sudo rights at all, who has no password
        # that could help; NixOS grants sudo through the wheel group (security.sudo).
        raise Exit(
            f"{cxn.user} has no sudo on {host} (not in the wheel group); "
            "log in as root or as a wheel user (-H)"
        )
    if asks:
        raise Exit(
            f"sudo on {host} asks {cxn.user} for a password; "
            "run again with --prompt-for-sudo-password (or log in as root)"
        )
    if refused:
        raise Exit(f"sudo on {host} rejected the password for {cxn.user}; run again and retype it")
    if "is not in the sudoers file" in output or "not allowed to execute" in output:
        raise Exit(f"{cxn.user} may not use sudo on {host}; log in as root or a wheel user (-H)")


def _in_wheel(cxn: Connection) -> bool:
    groups = cxn.run("id -nG", warn=True, hide=True, in_stream=False).stdout.split()
    return "wheel" in groups


def run_as_root(cxn: Connection, script: str):
    """Run a POSIX shell script as root in one remote command; sudo problems end the task.

    Output is hidden (it may hold the secret) and returned; a failing script
    is the caller's to judge (see `check`).
    """
    command = f"{sudo_prefix(cxn)}sh -c {shlex.quote(script)}"
    asks = not is_root(cxn) and cxn.config.sudo.password is not None
    watchers = [_password_responder(cxn)] if asks else []
    try:
        result = cxn.run(command, warn=True, hide=True, in_stream=False, watchers=watchers)
    except CommandTimedOut as timeout:
        raise Exit(
            f"a command on {cxn.original_host} took longer than {timeout.timeout:g}s "
            "(-T/--command-timeout); run again with a larger one, or without"
        ) from None
    except Failure as failure:
        explain_sudo_failure(cxn, failure.result.stderr + failure.result.stdout)
        raise
    if result.failed:
        explain_sudo_failure(cxn, result.stderr)
    return result


def _password_responder(cxn: Connection) -> FailingResponder:
    return FailingResponder(
        pattern=re.escape(SUDO_PROMPT),
        response=f"{cxn.config.sudo.password}\n",
        sentinel="Sorry, try again.\n",
    )


def check(result, what: str):
    """`result` if the remote command succeeded, else StepFailed naming `what` and its error."""
    if result.failed:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        host = result.connection.original_host
        detail = lines[-1].strip() if lines else "no message"
        if "No space left on device" in (result.stderr or "") + (result.stdout or ""):
            raise StepFailed(f"{what} on {host} failed: the disk is full ({detail})")
        raise StepFailed(f"{what} on {host} failed (exit {result.exited}): {detail}")
    return result
