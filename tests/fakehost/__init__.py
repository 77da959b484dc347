"""A simulated NixOS host "hainich" reached over real OpenSSH.

`FakeHost` starts tests/fakehost/init.py as PID 1 of new PID, mount, network,
UTS and IPC namespaces (root only). Inside, a real sshd listens on 127.0.0.1:22
of the host's own loopback; clients reach it through a ProxyCommand that
enters only the network namespace (`nsenter -t PID -n socat - TCP:127.0.0.1:22,nodelay`),
so no address outside loopback is ever used and the host's 127.0.0.1:9999 is
not the client's. Users: root, admin (sudo without password), alice (sudo with
password SUDO_PASSWORD), guest (no sudo); all log in with one throwaway
Ed25519 client key.

The NixOS commands on the host are stand-ins, documented each in its module
under sim/ with the reference fact it follows:

    nixos-rebuild     sim/nixos_rebuild.py  (nixos.md §7, §2.4)
    systemctl         sim/systemctl.py      (nixos.md §2)
    journalctl        sim/journalctl.py     (nixos.md §2.3)
    nixos-container   sim/nixos_container.py (nixos.md §2.5)
    nixos-version     sim/nixos_version.py
    container@NAME    sim/container.py      (nixos.md §1-§4: nspawn, bind mounts, veth)
    inside a container sim/guest.py         (the container's systemd and its services)
    Pluto (Julia)     sim/pluto.py          (pluto.md, files/launcher.jl)
    the NixOS module  evaluated with real Nix through nix/ (mini lib.evalModules)

Fault switches: `set_faults(...)` (each stand-in's docstring lists its own),
`occupy_port(9999)` (port already taken), `kill_ssh_sessions(user)`.

Tests read the host's state through `run` (a shell inside all its
namespaces), the logs of every SSH request (`commands`), every program started
(`execs`), sshd's log (`connections`) and the journals.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEM_PYTHON = "/usr/bin/python3"
SUDO_PASSWORD = "correct horse battery staple"
REQUIRED_PROGRAMS = (
    "/usr/sbin/sshd",
    "/usr/bin/ssh",
    "/usr/bin/socat",
    "/usr/bin/nsenter",
    "/usr/bin/unshare",
    "/usr/bin/nix-instantiate",
    "/usr/bin/sudo",
    "/usr/bin/gcc",
    SYSTEM_PYTHON,
)


def missing_requirements() -> str | None:
    """Why the simulated host cannot run here, or None."""
    if os.geteuid() != 0:
        return "the simulated host needs root (namespaces, mounts, sshd)"
    missing = [p for p in REQUIRED_PROGRAMS if not os.path.exists(p)]
    if missing:
        return f"missing {', '.join(missing)} (run tests/install-host-deps)"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount", "--net", "true"], capture_output=True
    )
    if probe.returncode != 0:
        return f"cannot create namespaces: {probe.stderr.decode().strip()}"
    return None


def _execlog_library() -> str:
    """Compile execlog.c once per source version (cached under the temp dir)."""
    source = (HERE / "execlog.c").read_bytes()
    cache = (
        Path(tempfile.gettempdir())
        / f"pluto-fakehost-execlog-{hashlib.sha256(source).hexdigest()[:12]}.so"
    )
    if not cache.exists():
        partial = cache.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(
            ["gcc", "-shared", "-fPIC", "-O2", "-o", str(partial), str(HERE / "execlog.c")],
            check=True,
        )
        partial.replace(cache)
    return str(cache)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.code == 0


class FakeHost:
    """The simulated host; use as a context manager or call start()/stop()."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory or tempfile.mkdtemp(prefix="fakehost-"))
        self.state = self.directory / "state"
        self.client = self.directory / "client"
        self.unshare: subprocess.Popen | None = None
        self.pid: int | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self, timeout: float = 30) -> FakeHost:
        self.state.mkdir(parents=True, exist_ok=True)
        self.client.mkdir(parents=True, exist_ok=True)
        os.chmod(self.client, 0o700)
        keys = self._keys()
        (self.state / "keys.json").write_text(json.dumps(keys))
        ready_read, ready_write = os.pipe()
        log = open(self.directory / "init.log", "ab")  # noqa: SIM115 (outlives start)
        self.unshare = subprocess.Popen(
            [
                "unshare", "--pid", "--fork", "--mount", "--net", "--uts", "--ipc",
                "--propagation", "private",
                SYSTEM_PYTHON, str(HERE / "init.py"), str(self.state), str(HERE), str(ready_write),
            ],
            pass_fds=(ready_write,),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )  # fmt: skip
        os.close(ready_write)
        try:
            self._await_ready(ready_read, timeout)
        except Exception:
            self.stop()
            raise
        self._write_client_config(keys)
        return self

    def _await_ready(self, ready_read: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with os.fdopen(ready_read) as ready:
            os.set_blocking(ready.fileno(), False)
            while time.monotonic() < deadline:
                line = ready.readline()
                if line.strip() == "ready":
                    break
                if self.unshare.poll() is not None:
                    break
                time.sleep(0.02)
            else:
                line = ""
        if line.strip() != "ready":
            log = (self.directory / "init.log").read_text(errors="replace")
            raise RuntimeError(f"simulated host did not start:\n{log}")
        children = Path(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children").read_text()
        self.pid = int(children.split()[0])

    def stop(self) -> None:
        """Stop every process of the host; its namespaces and mounts go with PID 1."""
        if self.unshare is None:
            return
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        try:
            self.unshare.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.unshare.pid, signal.SIGKILL)
                if self.pid:
                    os.kill(self.pid, signal.SIGKILL)
            self.unshare.wait(timeout=10)
        self.unshare = None

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> FakeHost:
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()
        self.remove()

    # -- client side ----------------------------------------------------------

    def _keys(self) -> dict:
        for name in ("host_key", "client_key"):
            path = self.directory / name
            if not path.exists():
                subprocess.run(
                    [
                        "ssh-keygen",
                        "-q",
                        "-t",
                        "ed25519",
                        "-N",
                        "",
                        "-C",
                        f"fakehost-{name}",
                        "-f",
                        str(path),
                    ],
                    check=True,
                )
        return {
            "host_key": (self.directory / "host_key").read_text(),
            "host_key_pub": (self.directory / "host_key.pub").read_text(),
            "client_key_pub": (self.directory / "client_key.pub").read_text(),
            "execlog": _execlog_library(),
        }

    @property
    def ssh_config(self) -> Path:
        return self.client / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.client / "known_hosts"

    @property
    def identity(self) -> Path:
        return self.directory / "client_key"

    @property
    def proxy_command(self) -> str:
        # nodelay: without it socat's Nagle meets sshd's delayed ACK and small
        # SSH packets (a new forwarded connection) can stall 40 ms at random.
        return f"nsenter -t {self.pid} -n socat - TCP:127.0.0.1:22,nodelay"

    def _write_client_config(self, keys: dict) -> None:
        host_key = " ".join(keys["host_key_pub"].split()[:2])
        self.known_hosts.write_text(f"hainich {host_key}\n")
        self.ssh_config.write_text(
            "# Simulated NixOS host; use with `fab -S THIS_FILE -H hainich ...`.\n"
            "Host hainich\n"
            "  User admin\n"
            f"  IdentityFile {self.identity}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n"
            f"  ProxyCommand {self.proxy_command}\n"
        )

    def ssh(self, command: str, user: str = "root", **kwargs) -> subprocess.CompletedProcess:
        """Run `command` over real OpenSSH as `user`."""
        return subprocess.run(
            [
                "ssh",
                "-F",
                str(self.ssh_config),
                "-o",
                "BatchMode=yes",
                "-l",
                user,
                "hainich",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=kwargs.pop("timeout", 60),
            **kwargs,
        )

    # -- the host's state, read from inside ------------------------------------

    def run(
        self, command: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> Result:
        """`command` as root in a shell inside all the host's namespaces (not over SSH)."""
        done = subprocess.run(
            [
                "nsenter",
                "-t",
                str(self.pid),
                "-m",
                "-u",
                "-i",
                "-n",
                "-p",
                "--",
                "/bin/sh",
                "-c",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env={"PATH": "/run/current-system/sw/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C"},
        )
        result = Result(done.returncode, done.stdout, done.stderr)
        if check and not result.ok:
            raise AssertionError(
                f"on the simulated host, `{command}` failed ({result.code}):\n{result.stderr}"
            )
        return result

    def read(self, path: str) -> str:
        return self.run(f"cat {shlex.quote(path)}").stdout

    def write(self, path: str, content: str, owner: str = "root:root", mode: str = "0644") -> None:
        q = shlex.quote(path)
        self.run(
            f"mkdir -p $(dirname {q}) && cat > {q} && chown {owner} {q} && chmod {mode} {q}",
            input=content,
        )

    def exists(self, path: str) -> bool:
        return self.run(f"test -e {shlex.quote(path)}", check=False).ok

    def stat(self, path: str) -> tuple[int, int, str]:
        """(uid, gid, octal mode) of `path`."""
        uid, gid, mode = self.run(f"stat -c '%u %g %a' {shlex.quote(path)}").stdout.split()
        return int(uid), int(gid), mode.zfill(4)

    def listing(self, *roots: str) -> dict[str, str]:
        """path -> "type owner mode sha256" for everything under `roots` (host unchanged?)."""
        quoted = " ".join(
            shlex.quote(r)
            for r in roots or ("/etc", "/data", "/var/lib", "/nix/var/nix/profiles", "/srv")
        )
        script = (
            f"find {quoted} -xdev \\( -path /var/lib/sim -o -path /var/log \\) -prune"
            " -o -print0 2>/dev/null | xargs -0 -r stat -c '%n|%F|%u:%g|%a' 2>/dev/null"
        )
        entries = {}
        for line in self.run(script, check=False).stdout.splitlines():
            path, kind, owner, mode = line.rsplit("|", 3)
            entries[path] = f"{kind} {owner} {mode}"
        files = [p for p, v in entries.items() if v.startswith("regular")]
        if files:
            sums = self.run("xargs -0 -r sha256sum", input="\0".join(files), check=False).stdout
            for line in sums.splitlines():
                digest, path = line.split(maxsplit=1)
                entries[path] += f" {digest}"
        return entries

    def set_faults(self, **faults) -> None:
        """Fault switches read by the stand-ins (see their docstrings)."""
        current = json.loads(self.read("/etc/sim/faults.json") or "{}")
        current.update(faults)
        current = {k: v for k, v in current.items() if v not in (None, False)}
        self.write("/etc/sim/faults.json", json.dumps(current))

    def commands(self) -> list[dict]:
        """Every SSH session request so far: user, command (None for a login shell)."""
        text = self.read("/var/log/sim/commands.jsonl")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def execs(self) -> list[tuple[int, list[str]]]:
        """(uid, argv) of every dynamically linked program started on the host."""
        entries = []
        # split("\n"), not splitlines(): that also splits on the 0x1d/0x1f separators
        for line in filter(None, self.read("/var/log/sim/exec.log").split("\n")):
            uid, _, argv = line.partition("\t")
            entries.append((int(uid), argv.replace("\x1d", "\n").split("\x1f")))
        return entries

    def connections(self) -> int:
        """SSH logins accepted so far (sshd's log)."""
        return self.read("/var/log/sim/sshd.log").count("Accepted publickey")

    def journal(self, machine: str | None = None, unit: str | None = None) -> list[str]:
        """Messages of the host's journal, or of a running container's."""
        command = "journalctl -o cat --no-pager -q"
        if machine:
            command += f" -M {shlex.quote(machine)}"
        if unit:
            command += f" -u {shlex.quote(unit)}"
        return self.run(command, check=False).stdout.splitlines()

    def kill_ssh_sessions(self, user: str) -> None:
        """Cut every SSH connection of `user`, like a network drop."""
        self.run(f"pkill -KILL -f {shlex.quote('sshd: ' + user)}", check=False)

    def occupy_port(self, port: int) -> None:
        """Fault "port already taken": a real listener on the host's 127.0.0.1:`port`."""
        listener = (
            "import socket, time; s = socket.socket(); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            f"s.bind(('127.0.0.1', {int(port)})); s.listen(); time.sleep(86400)"
        )
        self.run(f"setsid python3 -c {shlex.quote(listener)} >/dev/null 2>&1 < /dev/null &")
        wait = f"ss -Hltn 'sport = :{int(port)}' | grep -q . && exit 0"
        self.run(f"for i in $(seq 50); do {wait}; sleep 0.1; done; exit 1")

    def processes(self) -> list[str]:
        return self.run("ps -eo pid,user,args --no-headers").stdout.splitlines()
