"""A simulated NixOS host "hainich": real systemd, journald, machined, nspawn and OpenSSH.

`FakeHost` boots the machine's systemd as PID 1 of new PID, mount, network, UTS,
IPC and cgroup namespaces (root only; tests/fakehost/init.py, docs/simulated-host.md).
A real sshd unit listens on 127.0.0.1:22 of the host's own loopback; clients reach
it through a ProxyCommand that enters only the network namespace
(`nsenter -t PID -n socat - TCP:127.0.0.1:22,nodelay`), so no address outside
loopback is ever used and the host's 127.0.0.1:9999 is not the client's. Users:
root, admin (sudo without password), alice (sudo with password SUDO_PASSWORD),
guest (no sudo); all log in with one throwaway Ed25519 client key.

Real: systemd, systemctl, journalctl, machinectl, systemd-nspawn (every container
is a real `container@NAME.service` booting a second systemd), nix-instantiate and
nix-env. Stand-ins, each documented in its module under sim/ with the upstream
source it follows:

    nixos-rebuild and switch-to-configuration   sim/nixos_rebuild.py
    nixos-container (its verbs over systemctl)  sim/nixos_container.py
    nixos-version                               sim/nixos_version.py
    container@NAME's start scripts              sim/container_start.py
    Pluto (Julia)                               sim/pluto.py
    the NixOS module system                     nix/ (mini lib.evalModules, real Nix)

`HostVariant` picks the NixOS release and version string, the host's stateVersion
and a failing unit of someone else's. Fault switches: `set_faults(...)` (each
stand-in's docstring lists its own), `occupy_port(9999)`, `kill_ssh_sessions(user)`.

Tests read the host's state through `run` (a shell inside all its namespaces),
the logs of every SSH request (`commands`), every program started (`execs`),
sshd's journal (`connections`) and the journals (`journal`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
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
    "/usr/bin/systemd-nspawn",
    "/usr/bin/machinectl",
    "/usr/bin/chattr",
    "/usr/bin/dbus-daemon",
    "/usr/sbin/nginx",
    "/usr/bin/curl",
    "/usr/sbin/xtables-nft-multi",
    SYSTEM_PYTHON,
)
NIXOS_STABLE = "25.05.20250612.6c62cf2 (Warbler)"
NIXOS_UNSTABLE = "25.11pre812345.0a1b2c3 (Xantusia)"
NIXOS_PINNED = "25.05pre-git (Warbler)"
NIXOS_25_11 = "25.11.20251201.9f8e7d6 (Xantusia)"


@dataclass(frozen=True)
class HostVariant:
    """What kind of NixOS host to simulate.

    nixos_version: what `nixos-version` prints (stable, unstable, pinned, 25.11);
    it also selects the nixos-rebuild of that release (25.05: bash, exit 1 after
    a failed unit; 25.11: nixos-rebuild-ng, exit 4). state_version: the host's
    `system.stateVersion`; before 22.05 containers live in /etc/containers and
    /var/lib/containers. failing_unit: a unit of someone else's on the host that
    is failed, so every switch reports it.
    """

    nixos_version: str = NIXOS_STABLE
    state_version: str = "25.05"
    failing_unit: bool = False

    def spec(self) -> dict:
        return {
            "nixos_version": self.nixos_version,
            "state_version": self.state_version,
            "failing_unit": self.failing_unit,
        }


def _cgroup2_mount() -> Path:
    """Where the machine mounts the unified cgroup hierarchy (pure or hybrid)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        if fields[separator + 1] == "cgroup2":
            return Path(fields[4])
    raise RuntimeError("no cgroup2 hierarchy is mounted on this machine")


def _own_cgroup(name: str) -> Path:
    current = next(
        line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines()
        if line.startswith("0::")
    )  # fmt: skip
    path = _cgroup2_mount() / current.lstrip("/") / f"fakehost-{name}-{os.getpid()}"
    path.mkdir()
    return path


def _remove_cgroup(path: Path) -> None:
    """rmdir the host's cgroups bottom-up once their processes are gone."""
    deadline = time.monotonic() + 10
    while path.exists() and time.monotonic() < deadline:
        for directory, _, _ in sorted(os.walk(path), key=lambda d: -len(d[0])):
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        time.sleep(0.05)


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

    def __init__(
        self, directory: str | os.PathLike | None = None, variant: HostVariant | None = None
    ):
        self.directory = Path(directory or tempfile.mkdtemp(prefix="fakehost-"))
        self.variant = variant or HostVariant()
        self.cgroup: Path | None = None
        self.state = self.directory / "state"
        self.client = self.directory / "client"
        self.unshare: subprocess.Popen | None = None
        self.pid: int | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self, timeout: float = 60) -> FakeHost:
        self.state.mkdir(parents=True, exist_ok=True)
        self.client.mkdir(parents=True, exist_ok=True)
        os.chmod(self.client, 0o700)
        keys = self._keys()
        spec = {**keys, **self.variant.spec()}
        (self.state / "spec.json").write_text(json.dumps(spec))
        self.cgroup = _own_cgroup(self.directory.name)
        log = open(self.directory / "init.log", "ab")  # noqa: SIM115 (outlives start)
        self.unshare = subprocess.Popen(
            [
                "unshare", "--pid", "--fork", "--mount", "--net", "--uts", "--ipc", "--cgroup",
                "--propagation", "private",
                SYSTEM_PYTHON, str(HERE / "init.py"), str(self.state), str(HERE),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            # Into a cgroup of its own first, so the host's cgroup namespace
            # has that as its root and stop() can remove everything under it.
            preexec_fn=lambda: (self.cgroup / "cgroup.procs").write_text("0"),
        )  # fmt: skip
        try:
            self._await_boot(timeout)
        except Exception:
            self.stop()
            raise
        self._write_client_config(keys)
        return self

    def _await_boot(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.pid is None and time.monotonic() < deadline:
            if self.unshare.poll() is not None:
                break
            with contextlib.suppress(OSError, ValueError, IndexError):
                children = Path(
                    f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children"
                ).read_text()
                pid = int(children.split()[0])
                if Path(f"/proc/{pid}/exe").resolve().name == "systemd":
                    self.pid = pid
            time.sleep(0.02)
        while self.pid is not None and time.monotonic() < deadline:
            # "running", or "degraded" on a host variant with a failing unit;
            # until systemd listens on its socket, systemctl fails at once.
            state = self.run("systemctl is-system-running --wait", check=False, timeout=timeout)
            if state.stdout.strip() in ("running", "degraded"):
                if self.run("systemctl is-active --quiet sshd.service", check=False).ok:
                    return
                break
            time.sleep(0.05)
        log = (self.directory / "init.log").read_text(errors="replace")
        journal = (
            self.run("journalctl -b --no-pager | tail -50", check=False).stdout if self.pid else ""
        )
        raise RuntimeError(f"simulated host did not boot:\n{log}\n{journal}")

    def stop(self) -> None:
        """End the host: SIGKILL to its PID 1 ends every process of its PID namespace."""
        if self.unshare is None:
            return
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self.cgroup is not None and (self.cgroup / "cgroup.kill").exists():
            # Everything the host started, wherever it went (systemd calls setsid()).
            (self.cgroup / "cgroup.kill").write_text("1")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.unshare.pid, signal.SIGKILL)
        self.unshare.wait(timeout=30)
        self.unshare = None
        if self.cgroup is not None:
            _remove_cgroup(self.cgroup)
            self.cgroup = None

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
        """path -> "type owner mode sha256" of what the host itself holds under `roots`.

        Under /etc and /var that is the host's own overlay layer (STATE/etc.upper,
        STATE/var.upper: its changes, deletions as whiteouts), never the machine's
        files below it; other roots are the host's own directories. Compare two
        listings to prove a command left the host unchanged.
        """
        entries: dict[str, str] = {}
        inside = []
        for root in roots or ("/etc", "/data", "/var/lib", "/nix/var/nix/profiles", "/srv"):
            top, _, rest = root.strip("/").partition("/")
            if top in ("etc", "var"):
                entries.update(self._layer_listing(root, self.state / f"{top}.upper" / rest))
            else:
                inside.append(root)
        if inside:
            entries.update(self._listing_inside(inside))
        return entries

    @staticmethod
    def _layer_listing(root: str, layer: Path) -> dict[str, str]:
        entries = {}
        paths = [layer] if layer.exists() else []
        for directory, subdirectories, files in os.walk(layer):
            paths += [Path(directory, name) for name in subdirectories + files]
        for path in paths:
            info = path.lstat()
            if stat.S_ISDIR(info.st_mode):
                kind = "directory"
            elif stat.S_ISREG(info.st_mode):
                kind = "regular file"
            elif stat.S_ISLNK(info.st_mode):
                kind = "symbolic link"
            else:
                kind = "other"  # whiteouts: files the host deleted
            entry = f"{kind} {info.st_uid}:{info.st_gid} {oct(info.st_mode & 0o7777)[2:]}"
            if kind == "regular file":
                entry += " " + hashlib.sha256(path.read_bytes()).hexdigest()
            elif kind == "symbolic link":
                entry += " -> " + os.readlink(path)
            entries[root.rstrip("/") + str(path)[len(str(layer)) :]] = entry
        return entries

    def _listing_inside(self, roots: list[str]) -> dict[str, str]:
        quoted = " ".join(shlex.quote(r) for r in roots)
        script = (
            f"find {quoted} -xdev -print0 2>/dev/null"
            " | xargs -0 -r stat -c '%n|%F|%u:%g|%a' 2>/dev/null"
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
        log = self.run("journalctl -u sshd.service -o cat --no-pager", check=False).stdout
        return log.count("Accepted publickey")

    def journal(self, machine: str | None = None, unit: str | None = None) -> list[str]:
        """Messages of the host's journal, or of a running container's."""
        command = "journalctl -o cat --no-pager -q"
        if machine:
            command += f" -M {shlex.quote(machine)}"
        if unit:
            command += f" -u {shlex.quote(unit)}"
        return self.run(command, check=False).stdout.splitlines()

    def log_in_unit(self, machine: str, unit: str, identifier: str, message: str) -> None:
        """A journal line from a process in `unit`'s cgroup inside a container.

        The process joins the unit's cgroup on the host first, so the container's
        journald attributes the line to the unit (_SYSTEMD_UNIT), as it does Pluto's own.
        """
        cgroup = (
            f"/sys/fs/cgroup/machine.slice/container@{machine}.service/payload/system.slice/{unit}"
        )
        leader = self.run(f"machinectl show {shlex.quote(machine)} -p Leader --value").stdout
        # The writer stays alive a while: journald reads its cgroup (hence the unit) when
        # it takes the line from the stream, which can be after a short-lived one exited.
        writer = shlex.join([
            "nsenter", "-t", leader.strip(), "-m", "-u", "-i", "-n", "-p", "--",
            "systemd-cat", "-t", identifier, "sh", "-c", 'echo "$1"; exec sleep 5', "sh", message,
        ])  # fmt: skip
        inner = f"echo $$ > {shlex.quote(cgroup)}/cgroup.procs && exec {writer}"
        self.run(f"sh -c {shlex.quote(inner)} >/dev/null 2>&1 &")
        shown = (
            f"journalctl -M {shlex.quote(machine)} -u {shlex.quote(unit)} -o cat --no-pager"
            f" | grep -qxF -- {shlex.quote(message)}"
        )
        self.run(f"for i in $(seq 100); do {shown} && exit 0; sleep 0.05; done; exit 1")

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
