"""Shared state of the simulated NixOS host's stand-ins (run by /usr/bin/python3).

Where things live on the simulated host, as on NixOS unless marked "sim":

    /run/current-system/config.json   the evaluated configuration (sim; NixOS
                                      keeps the built system here instead)
    /nix/var/nix/profiles/system-N-link  generations (nixos.md §7.2)
    /etc/nixos-containers/NAME.conf   container environment file (nixos.md §1.5)
    /var/lib/nixos-containers/NAME    container root (persistent state)
    /run/nixos-containers/NAME        container root when ephemeral
    /var/log/journal/sim.jsonl        host journal, one JSON entry per line (sim)
    ROOT/var/log/journal/sim.jsonl    a container's journal inside its root
    /var/lib/sim/units/UNIT.json      host unit state (sim; systemd keeps it in memory)
    /var/lib/sim/machines/NAME.json   registered machines (sim; systemd-machined)
    /etc/sim/faults.json              fault switches set by tests (sim)
    /var/log/sim/                     command, exec and sshd logs for tests (sim)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid

SIM = "/var/lib/sim"
UNITS = f"{SIM}/units"
MACHINES = f"{SIM}/machines"
FAULTS = "/etc/sim/faults.json"
HOST_JOURNAL = "/var/log/journal/sim.jsonl"
CURRENT_SYSTEM = "/run/current-system"
PROFILE = "/nix/var/nix/profiles/system"
CONTAINER_CONFS = "/etc/nixos-containers"
CONTAINER_STATE = "/var/lib/nixos-containers"
CONTAINER_EPHEMERAL = "/run/nixos-containers"
# Inside a container: its service manager's control socket and ready flag.
CONTROL_SOCKET = "/run/sim/systemd.sock"


def read_json(path: str, default=None):
    try:
        with open(path) as file:
            return json.load(file)
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def write_json(path: str, data) -> None:
    """Replace `path` atomically, so readers never see half a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as file:
        json.dump(data, file, indent=1, sort_keys=True)
    os.replace(temporary, path)


def faults() -> dict:
    return read_json(FAULTS, {}) or {}


def current_config() -> dict:
    return read_json(f"{CURRENT_SYSTEM}/config.json", {}) or {}


@contextlib.contextmanager
def locked(path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def boot_id(journal: str) -> str:
    """One boot id per journal writer start, as a fresh boot would have."""
    key = f"{journal}.boot"
    existing = read_json(key)
    if existing is None:
        existing = uuid.uuid4().hex
        write_json(key, existing)
    return existing


def new_boot(journal: str) -> None:
    write_json(f"{journal}.boot", uuid.uuid4().hex)


def journal_append(journal: str, message: str, **fields) -> None:
    """Append one entry; cursors grow monotonically like journald's seqnum."""
    os.makedirs(os.path.dirname(journal), exist_ok=True)
    with locked(journal):
        sequence = (read_json(f"{journal}.seq", 0) or 0) + 1
        write_json(f"{journal}.seq", sequence)
        boot = boot_id(journal)
        entry = {
            "__CURSOR": f"s={boot};i={sequence:x}",
            "__REALTIME_TIMESTAMP": str(time.time_ns() // 1000),
            "_BOOT_ID": boot,
            "MESSAGE": message,
            "PRIORITY": "6",
        }
        entry.update({key: str(value) for key, value in fields.items()})
        with open(journal, "a") as file:
            file.write(json.dumps(entry) + "\n")


def unit_state_path(unit: str) -> str:
    return f"{UNITS}/{unit}.json"


def unit_state(unit: str) -> dict:
    return read_json(unit_state_path(unit), {}) or {}


def update_unit_state(unit: str, **fields) -> dict:
    with locked(unit_state_path(unit)):
        state = unit_state(unit)
        state.update(fields)
        write_json(unit_state_path(unit), state)
        return state


def mark_inactive(unit: str) -> None:
    """The state systemd records for a unit that stopped cleanly."""
    update_unit_state(
        unit, ActiveState="inactive", SubState="dead", MainPID=0, InactiveEnterTimestamp=time.time()
    )


def pid_alive(pid) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{int(pid)}/stat") as file:
            return file.read().split(") ")[-1][0] != "Z"
    except (FileNotFoundError, ValueError):
        return False


def machine(name: str) -> dict | None:
    """The registered, running machine `name`, like machined's GetMachine."""
    record = read_json(f"{MACHINES}/{name}.json")
    if record and pid_alive(record.get("leader")):
        return record
    return None


def container_root(name: str, ephemeral: bool) -> str:
    base = CONTAINER_EPHEMERAL if ephemeral else CONTAINER_STATE
    return f"{base}/{name}"


def timestamp(seconds: float | None) -> str:
    """systemd's timestamp format in `systemctl show`."""
    if not seconds:
        return ""
    return time.strftime("%a %Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def process_tree(root_pid: int) -> list[int]:
    """`root_pid` and all its descendants (what a unit's cgroup would hold)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                parent = int(file.read().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree
