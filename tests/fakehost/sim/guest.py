"""Stand-in for the systemd inside a declarative container (run as its PID 1).

`guest.py init` builds a root with only /nix/store (read-only), the
container's own /var and /etc, and the declared bind mounts, then runs the
container's systemd services the way systemd would: User/Group (uids from
users.users), Environment, WorkingDirectory (200/CHDIR), UMask,
StateDirectory, PrivateTmp, ProtectSystem=strict with ReadWritePaths
(226/NAMESPACE when a path is missing), ProtectHome, NoNewPrivileges, an
empty CapabilityBoundingSet, Restart=on-failure with RestartSec and the
default start limit (5 starts in 10 s), and journal lines for stdout/stderr
and for systemd's own messages about the unit. `systemctl -M` talks to it
through a socket in the container's /run.

Simpler than the real thing: the container also sees the host's /usr
(read-only, for python3) and the fault switches in /run/sim-host; ExecStart's
Julia is replaced by the stand-in Pluto server (pluto.py) given the same
arguments; the other hardening settings are not enforced (tests score them
with systemd-analyze instead); a container has no other services.
"""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import common
import units

SIM_DIR = os.path.dirname(os.path.abspath(__file__))
PYTHON = "/usr/bin/python3"
CLONE_NEWNS = 0x00020000
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
LIBC = ctypes.CDLL(None, use_errno=True)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _mount(*args: str) -> None:
    _run("mount", *args)


def _bind(source: str, target: str, read_only: bool) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount("--bind", source, target)
    if read_only:
        _mount("-o", "remount,bind,ro", target)


def _build_root(spec: dict) -> str:
    """A root holding only what an nspawn container of NixOS would see."""
    new_root = f"/run/sim/nspawn/{spec['name']}.root"
    os.makedirs(new_root, exist_ok=True)
    _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", new_root)
    _bind("/usr", f"{new_root}/usr", read_only=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        if os.path.islink(f"/{link}"):
            os.symlink(os.readlink(f"/{link}"), f"{new_root}/{link}")
    _bind("/nix/store", f"{new_root}/nix/store", read_only=True)
    os.makedirs(f"{spec['root']}/var", exist_ok=True)
    _bind(f"{spec['root']}/var", f"{new_root}/var", read_only=False)
    os.makedirs(f"{spec['root']}/root", mode=0o700, exist_ok=True)
    _bind(f"{spec['root']}/root", f"{new_root}/root", read_only=False)
    for directory, mode in (("tmp", "1777"), ("run", "0755"), ("etc", "0755")):
        os.makedirs(f"{new_root}/{directory}")
        _mount("-t", "tmpfs", "-o", f"mode={mode}", "tmpfs", f"{new_root}/{directory}")
    os.makedirs(f"{new_root}/proc")
    _mount("-t", "proc", "proc", f"{new_root}/proc")
    os.makedirs(f"{new_root}/dev")
    _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", f"{new_root}/dev")
    for node in ("null", "zero", "full", "random", "urandom"):
        _bind(f"/dev/{node}", f"{new_root}/dev/{node}", read_only=False)
    os.symlink("/proc/self/fd", f"{new_root}/dev/fd")
    if os.path.isdir("/etc/sim"):
        _bind("/etc/sim", f"{new_root}/run/sim-host", read_only=True)
    for mount_point, mount in spec["bindMounts"].items():
        _bind(mount["hostPath"], f"{new_root}{mount_point}", mount["isReadOnly"])
    _write_etc(new_root, spec)
    os.makedirs(f"{new_root}/.oldroot")
    os.chdir(new_root)
    _run("pivot_root", ".", ".oldroot")
    os.chroot(".")
    os.chdir("/")
    _mount("--make-rprivate", "/")
    _run("umount", "-l", "/.oldroot")
    os.rmdir("/.oldroot")
    return new_root


def _users(spec: dict) -> tuple[list[str], list[str]]:
    """passwd and group lines from users.users/users.groups (system uids from 999 down)."""
    users_config = (spec["system"].get("users") or {}).get("users") or {}
    groups_config = (spec["system"].get("users") or {}).get("groups") or {}
    groups = {"root": 0, "nogroup": 65534}
    next_gid = 999
    for group, attrs in sorted(groups_config.items()):
        gid = (attrs or {}).get("gid")
        if gid is None:
            gid, next_gid = next_gid, next_gid - 1
        groups[group] = gid
    passwd = ["root:x:0:0:System administrator:/root:/bin/sh"]
    next_uid = 999
    for user, attrs in sorted(users_config.items()):
        attrs = attrs or {}
        uid = attrs.get("uid")
        if uid is None:
            uid, next_uid = next_uid, next_uid - 1
        gid = groups.get(attrs.get("group") or "nogroup", 65534)
        home = attrs.get("home") or "/var/empty"
        passwd.append(f"{user}:x:{uid}:{gid}::{home}:/run/current-system/sw/bin/nologin")
    passwd.append("nobody:x:65534:65534:Unprivileged account:/var/empty:/bin/sh")
    return passwd, [f"{g}:x:{gid}:" for g, gid in groups.items()]


def _write_etc(new_root: str, spec: dict) -> None:
    passwd, group = _users(spec)
    files = {
        "passwd": "\n".join(passwd) + "\n",
        "group": "\n".join(group) + "\n",
        "hostname": spec["name"] + "\n",
        "hosts": f"127.0.0.1 localhost\n::1 localhost\n127.0.0.2 {spec['name']}\n",
        "os-release": 'NAME=NixOS\nID=nixos\nVERSION_ID="25.05"\n',
    }
    for file_name in ("resolv.conf", "nsswitch.conf"):
        if os.path.exists(f"/etc/{file_name}"):
            with open(f"/etc/{file_name}") as file:
                files[file_name] = file.read()
    for file_name, content in files.items():
        with open(f"{new_root}/etc/{file_name}", "w") as file:
            file.write(content)


class Service:
    """One systemd service inside the container (Type=simple)."""

    START_LIMIT_BURST = 5
    START_LIMIT_INTERVAL = 10.0

    def __init__(self, manager: Manager, name: str, config: dict):
        self.manager = manager
        self.unit = f"{name}.service"
        self.config = config
        self.service_config = config.get("serviceConfig") or {}
        self.state = {
            "ActiveState": "inactive",
            "SubState": "dead",
            "Description": config.get("description", self.unit),
        }
        self.process: subprocess.Popen | None = None
        self.starts: list[float] = []
        self.restart_at: float | None = None
        self.stopping = False

    def journal(self, message: str, **fields) -> None:
        self.manager.journal(message, **fields)

    def systemd_says(self, message: str) -> None:
        self.journal(message, UNIT=self.unit, SYSLOG_IDENTIFIER="systemd", _PID=1)

    def start(self, manual: bool = True) -> None:
        if self.process is not None:
            return
        now = time.monotonic()
        if manual:
            self.starts = []
        self.starts = [t for t in self.starts if now - t < self.START_LIMIT_INTERVAL] + [now]
        if len(self.starts) > self.START_LIMIT_BURST:
            self.systemd_says(f"{self.unit}: Start request repeated too quickly.")
            self.systemd_says(f"{self.unit}: Failed with result 'start-limit-hit'.")
            self.systemd_says(f"Failed to start {self.state['Description']}.")
            self.state.update(ActiveState="failed", SubState="failed", Result="start-limit-hit")
            return
        self.restart_at = None
        self.stopping = False
        self._prepare_state_directory()
        read_end, write_end = os.pipe()
        try:
            # A fresh interpreter sets up the execution environment and execs
            # the command; forking this multi-threaded manager would not be safe.
            self.process = subprocess.Popen(
                [PYTHON, __file__, "exec-service", json.dumps(self.service_config), *self._argv()],
                stdin=subprocess.DEVNULL,
                stdout=write_end,
                stderr=write_end,
                env=self._environment(),
                start_new_session=True,
            )
        finally:
            os.close(write_end)
        self.state.update(
            ActiveState="active",
            SubState="running",
            MainPID=self.process.pid,
            ActiveEnterTimestamp=time.time(),
            Result="success",
        )
        self.systemd_says(f"Started {self.state['Description']}.")
        threading.Thread(target=self._pump, args=(read_end, self.process.pid), daemon=True).start()

    def _argv(self) -> list[str]:
        argv = shlex.split(self.service_config["ExecStart"])
        if os.path.basename(argv[0]) == "julia":
            return [PYTHON, f"{SIM_DIR}/pluto.py", *argv]
        return argv

    def _environment(self) -> dict:
        user = self.service_config.get("User", "root")
        entry = pwd.getpwnam(user)
        environment = {
            "PATH": "/run/current-system/sw/bin:/usr/bin:/bin",
            "USER": user,
            "LOGNAME": user,
            "HOME": entry.pw_dir,
            "SHELL": entry.pw_shell,
            "INVOCATION_ID": os.urandom(16).hex(),
        }
        environment.update({k: str(v) for k, v in (self.config.get("environment") or {}).items()})
        return environment

    def _prepare_state_directory(self) -> None:
        directory = self.service_config.get("StateDirectory")
        if not directory:
            return
        path = f"/var/lib/{directory}"
        os.makedirs(path, exist_ok=True)
        entry = pwd.getpwnam(self.service_config.get("User", "root"))
        os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(path, int(str(self.service_config.get("StateDirectoryMode", "0755")), 8))

    def _pump(self, fd: int, pid: int) -> None:
        identifier = os.path.basename(shlex.split(self.service_config["ExecStart"])[0])
        with os.fdopen(fd, "rb") as stream:
            for raw in stream:
                line = raw.decode(errors="replace").rstrip("\n")
                self.journal(line, _SYSTEMD_UNIT=self.unit, SYSLOG_IDENTIFIER=identifier, _PID=pid)

    def exited(self, code: int) -> None:
        self.process = None
        clean = code == 0 or (self.stopping and code in (-signal.SIGTERM, 143))
        if self.stopping:
            self.state.update(ActiveState="inactive", SubState="dead", MainPID=0)
            self.systemd_says(f"Stopped {self.state['Description']}.")
            return
        signal_number = -code if code < 0 else None
        self.state["ExecMainStatus"] = code if code >= 0 else 0
        self.systemd_says(
            f"{self.unit}: Main process exited, "
            f"{units.result_text(code if code >= 0 else None, signal_number)}"
        )
        if clean:
            self.state.update(ActiveState="inactive", SubState="dead", MainPID=0)
            return
        self.systemd_says(f"{self.unit}: Failed with result 'exit-code'.")
        self.state["Result"] = "exit-code"
        if self.service_config.get("Restart") in ("on-failure", "always"):
            delay = float(self.service_config.get("RestartSec", 0.1))
            self.state.update(ActiveState="activating", SubState="auto-restart", MainPID=0)
            self.restart_at = time.monotonic() + delay
        else:
            self.state.update(ActiveState="failed", SubState="failed", MainPID=0)

    def tick(self) -> None:
        if self.restart_at is not None and time.monotonic() >= self.restart_at:
            self.restart_at = None
            self.state["NRestarts"] = self.state.get("NRestarts", 0) + 1
            count = self.state["NRestarts"]
            self.systemd_says(f"{self.unit}: Scheduled restart job, restart counter is at {count}.")
            self.start(manual=False)

    def stop(self) -> None:
        self.restart_at = None
        if self.process is None:
            if self.state["ActiveState"] != "failed":
                self.state.update(ActiveState="inactive", SubState="dead")
            return
        self.stopping = True
        self.systemd_says(f"Stopping {self.state['Description']}...")
        self.state.update(ActiveState="deactivating", SubState="stop-sigterm")
        os.killpg(self.process.pid, signal.SIGTERM)

    def properties(self) -> dict:
        return units.base_properties(self.unit, self.state)


def exec_service(service_config: dict, argv: list[str]) -> int:
    """systemd's execution environment for one service, then exec (runs as root)."""
    try:
        _namespace(service_config)
    except OSError as problem:
        print(f"Failed to set up mount namespacing: {problem.strerror}", file=sys.stderr)
        return 226
    if service_config.get("UMask") is not None:
        os.umask(int(str(service_config["UMask"]), 8))
    # Last of the root-only steps: once dropped, no mount or chown works any more.
    if service_config.get("CapabilityBoundingSet") == "":
        for capability in range(41):
            LIBC.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)
    user = service_config.get("User", "root")
    try:
        entry = pwd.getpwnam(user)
        os.initgroups(user, entry.pw_gid)
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except (KeyError, OSError):
        print(f"Failed to determine user credentials: {user}", file=sys.stderr)
        return 217
    if service_config.get("WorkingDirectory"):
        try:
            os.chdir(service_config["WorkingDirectory"])
        except OSError as problem:
            print(
                f"Changing to the requested working directory failed: {problem.strerror}",
                file=sys.stderr,
            )
            return 200
    if service_config.get("NoNewPrivileges"):
        LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    try:
        os.execvpe(argv[0], argv, os.environ)
    except OSError as problem:
        print(f"Failed to execute {argv[0]}: {problem.strerror}", file=sys.stderr)
        return 203


def _namespace(config: dict) -> None:
    """PrivateTmp, ProtectHome, ProtectSystem=strict with ReadWritePaths."""
    if not (config.get("PrivateTmp") or config.get("ProtectSystem") or config.get("ProtectHome")):
        return
    read_write = list(config.get("ReadWritePaths") or [])
    if config.get("StateDirectory"):
        read_write.append(f"/var/lib/{config['StateDirectory']}")
    if LIBC.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    _mount("--make-rprivate", "/")
    if config.get("PrivateTmp"):
        _mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", "/tmp")
    if config.get("ProtectHome") in (True, "yes", "true", "read-only"):
        for home in ("/home", "/root", "/run/user"):
            if os.path.isdir(home):
                _mount("-t", "tmpfs", "-o", "ro,mode=0755", "tmpfs", home)
    if config.get("ProtectSystem") == "strict":
        for path in read_write:
            if not os.path.exists(path):
                raise OSError(2, f"{path}: No such file or directory")
            _mount("--bind", path, path)
        keep = set(read_write) | {"/tmp"}
        for mount_point in _mount_points():
            if mount_point in keep or mount_point.startswith(("/proc", "/dev", "/sys")):
                continue
            subprocess.run(
                ["mount", "-o", "remount,bind,ro", mount_point], stderr=subprocess.DEVNULL
            )


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as file:
        return [line.split()[4] for line in file]


class Manager:
    """The container's service manager: PID 1, a control socket, restarts."""

    def __init__(self, spec: dict):
        self.spec = spec
        services = (spec["system"].get("systemd") or {}).get("services") or {}
        self.services = {f"{n}.service": Service(self, n, c) for n, c in services.items()}
        self.journal_path = "/var/log/journal/sim.jsonl"
        self.lock = threading.RLock()

    def journal(self, message: str, **fields) -> None:
        fields.setdefault("_HOSTNAME", self.spec["name"])
        common.journal_append(self.journal_path, message, **fields)

    def boot(self) -> None:
        self.journal("systemd 252 running in system mode (simulated)", SYSLOG_IDENTIFIER="systemd")
        for service in self.services.values():
            if "multi-user.target" in (service.config.get("wantedBy") or []):
                service.start()
        self.journal("Reached target Multi-User System.", SYSLOG_IDENTIFIER="systemd")

    def handle(self, argv: list[str]) -> dict:
        """One `systemctl -M` request: answer like systemctl would."""
        with self.lock:
            return _systemctl(self, argv)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            with self.lock:
                for service in self.services.values():
                    if service.process is not None and service.process.pid == pid:
                        service.process.returncode = code
                        service.exited(code)

    def shutdown(self) -> None:
        with self.lock:
            for service in self.services.values():
                service.stop()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(s.process for s in self.services.values()):
            self.reap()
            time.sleep(0.05)
        for service in self.services.values():
            if service.process is not None:
                os.killpg(service.process.pid, signal.SIGKILL)
        self.journal("Reached target System Power Off.", SYSLOG_IDENTIFIER="systemd")


def _systemctl(manager: Manager, argv: list[str]) -> dict:
    value_only = "--value" in argv
    properties_wanted: list[str] = []
    words = []
    iterator = iter(a for a in argv if a not in ("--value", "--no-pager", "--quiet", "-q"))
    for arg in iterator:
        if arg in ("-p", "--property"):
            properties_wanted += next(iterator).split(",")
        elif arg.startswith("--property="):
            properties_wanted += arg.split("=", 1)[1].split(",")
        else:
            words.append(arg)
    if not words:
        return {"stdout": "", "stderr": "Too few arguments.\n", "code": 1}
    verb, names = words[0], [n if "." in n else f"{n}.service" for n in words[1:]]
    found = [manager.services.get(n) for n in names]
    if verb in ("start", "stop", "restart"):
        for name, service in zip(names, found, strict=True):
            if service is None:
                return {
                    "stdout": "",
                    "stderr": f"Failed to {verb} {name}: Unit {name} not found.\n",
                    "code": 5,
                }
        for service in found:
            if verb in ("stop", "restart"):
                service.stop()
        if verb == "restart":
            deadline = time.monotonic() + 10
            while any(s.process for s in found) and time.monotonic() < deadline:
                manager.lock.release()
                time.sleep(0.05)
                manager.lock.acquire()
        for service in found:
            if verb in ("start", "restart"):
                service.start()
        return {"stdout": "", "stderr": "", "code": 0}
    states = [s.state["ActiveState"] if s else "inactive" for s in found]
    if verb == "is-active":
        text, code = units.is_active(states)
        return {"stdout": text, "stderr": "", "code": code}
    if verb == "is-failed":
        text, code = units.is_failed(states)
        return {"stdout": text, "stderr": "", "code": code}
    if verb == "show":
        text = "".join(
            units.show(
                s.properties() if s else {"Id": n, "LoadState": "not-found"},
                properties_wanted,
                value_only,
            )
            for n, s in zip(names, found, strict=True)
        )
        return {"stdout": text, "stderr": "", "code": 0}
    if verb == "status":
        outputs, code = [], 0
        for name, service in zip(names, found, strict=True):
            if service is None:
                return {"stdout": "", "stderr": f"Unit {name} could not be found.\n", "code": 4}
            outputs.append(units.status(name, service.properties(), []))
            if service.state["ActiveState"] != "active":
                code = 3
        return {"stdout": "".join(outputs), "stderr": "", "code": code}
    return {"stdout": "", "stderr": f'Unknown command verb "{verb}".\n', "code": 1}


def init(spec_path: str, ready_fd: int, go_fd: int) -> int:
    with open(spec_path) as file:
        spec = json.load(file)
    with os.fdopen(go_fd) as go:
        go.readline()
    socket.sethostname(spec["name"])
    _build_root(spec)
    if spec["privateNetwork"]:
        _run("ip", "link", "set", "lo", "up")
        _run("ip", "addr", "add", f"{spec['localAddress']}/32", "dev", "eth0")
        _run("ip", "link", "set", "eth0", "up")
        _run("ip", "route", "add", f"{spec['hostAddress']}/32", "dev", "eth0")
        _run("ip", "route", "add", "default", "via", spec["hostAddress"], "dev", "eth0")

    manager = Manager(spec)
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    signal.set_wakeup_fd(wakeup_write)
    stop = threading.Event()
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGRTMIN + 3, lambda *_: stop.set())

    os.makedirs(os.path.dirname(common.CONTROL_SOCKET), exist_ok=True)
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    control.bind(common.CONTROL_SOCKET)
    os.chmod(common.CONTROL_SOCKET, 0o600)
    control.listen(16)
    threading.Thread(target=_serve_control, args=(control, manager), daemon=True).start()

    manager.boot()
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)
    selector = selectors.DefaultSelector()
    selector.register(wakeup_read, selectors.EVENT_READ)
    while not stop.is_set():
        for key, _ in selector.select(timeout=0.1):
            os.read(key.fd, 512)
        manager.reap()
        with manager.lock:
            for service in manager.services.values():
                service.tick()
    manager.shutdown()
    return 0


def _serve_control(control: socket.socket, manager: Manager) -> None:
    while True:
        connection, _ = control.accept()
        with connection:
            request = b""
            while not request.endswith(b"\n"):
                chunk = connection.recv(65536)
                if not chunk:
                    break
                request += chunk
            reply = manager.handle(json.loads(request))
            connection.sendall(json.dumps(reply).encode() + b"\n")


if __name__ == "__main__":
    if sys.argv[1] == "init":
        sys.exit(init(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    if sys.argv[1] == "exec-service":
        sys.exit(exec_service(json.loads(sys.argv[2]), sys.argv[3:]))
    sys.exit(f"usage: {sys.argv[0]} init SPEC READY_FD GO_FD | exec-service CONFIG ARGV...")
