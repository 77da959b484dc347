"""Stand-in for systemctl on the simulated host.

Host units: `container@NAME.service` for each declared container, started by
running `container.py supervise NAME` detached (as systemd would run nspawn),
`sshd.service` (always active), anything else inactive/not-found. Verbs:
start, stop, restart, is-active, is-failed, show (-p/--property, --value),
status, daemon-reload. `show` on a container unit reports its limits from the
current configuration (MemoryMax in bytes, CPUQuotaPerSecUSec, TasksMax) and
live usage measured over its process tree (MemoryCurrent, MemoryPeak,
CPUUsageNSec, TasksCurrent), where systemd would read the cgroup.

`-M NAME` (root only, nixos.md §2.3) forwards the verb to the service manager
inside the running container; a stopped one gives "Failed to connect to bus:
Host is down". Simpler than the real thing: no D-Bus, no unit files, limits are
reported but not enforced (there are no cgroups here).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import common
import units

SIM_DIR = os.path.dirname(os.path.abspath(__file__))
CONTAINER_UNIT = "container@"


def _container_name(unit: str) -> str | None:
    if unit.startswith(CONTAINER_UNIT) and unit.endswith(".service"):
        return unit[len(CONTAINER_UNIT) : -len(".service")]
    return None


def _size(value) -> str:
    """A systemd size setting as `systemctl show` prints it (bytes)."""
    if value in (None, "", "infinity"):
        return "infinity"
    text = str(value)
    scale = 1024 ** " KMGT".index(text[-1]) if text[-1] in "KMGT" else 1
    number = text[:-1] if text[-1] in "KMGT" else text
    return str(int(float(number) * scale))


def _cpu_quota(value) -> str:
    if not value:
        return "infinity"
    microseconds = int(str(value).rstrip("%")) * 10_000
    return (
        f"{microseconds // 1_000_000}s"
        if microseconds % 1_000_000 == 0
        else f"{microseconds // 1000}ms"
    )


def _usage(pid: int) -> dict:
    memory = cpu_ticks = tasks = 0
    for member in common.process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as file:
                fields = file.read().rsplit(") ", 1)[1].split()
            with open(f"/proc/{member}/statm") as file:
                memory += int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError):
            continue
        cpu_ticks += int(fields[11]) + int(fields[12])
        tasks += int(fields[17])
    return {
        "MemoryCurrent": memory,
        "CPUUsageNSec": cpu_ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK"),
        "TasksCurrent": tasks,
    }


def container_properties(unit: str) -> dict:
    name = _container_name(unit)
    declared = name in (common.current_config().get("containers") or {})
    state = common.unit_state(unit)
    if not declared and not state:
        return {"Id": unit, "LoadState": "not-found", "ActiveState": "inactive", "SubState": "dead"}
    limits = ((common.current_config().get("units") or {}).get(f"container@{name}") or {}).get(
        "serviceConfig"
    ) or {}
    properties = units.base_properties(unit, {"Description": f"Container '{name}'", **state})
    properties.update(
        MemoryMax=_size(limits.get("MemoryMax")),
        MemoryHigh=_size(limits.get("MemoryHigh")),
        CPUQuotaPerSecUSec=_cpu_quota(limits.get("CPUQuota")),
        TasksMax=limits.get("TasksMax", "infinity"),
        MemoryCurrent="[not set]",
        MemoryPeak="[not set]",
        CPUUsageNSec="[not set]",
        TasksCurrent="[not set]",
    )
    if properties["ActiveState"] == "active" and common.pid_alive(state.get("MainPID")):
        usage = _usage(int(state["MainPID"]))
        peak = max(usage["MemoryCurrent"], int(state.get("MemoryPeak", 0)))
        common.update_unit_state(unit, MemoryPeak=peak)
        properties.update(usage, MemoryPeak=peak)
    return properties


def _state(unit: str) -> str:
    if unit == "sshd.service":
        return "active"
    if _container_name(unit) is None:
        return "inactive"
    state = common.unit_state(unit)
    if state.get("ActiveState") == "active" and not common.pid_alive(state.get("MainPID")):
        return "failed"
    return state.get("ActiveState", "inactive")


def start(unit: str) -> int:
    name = _container_name(unit)
    if name is None or name not in (common.current_config().get("containers") or {}):
        print(f"Failed to start {unit}: Unit {unit} not found.", file=sys.stderr)
        return 5
    if _state(unit) in ("active", "activating"):
        return 0
    os.makedirs("/var/log/sim", exist_ok=True)
    log = open(f"/var/log/sim/{unit}.log", "a")  # noqa: SIM115 (the detached process keeps it)
    process = subprocess.Popen(
        ["/usr/bin/python3", f"{SIM_DIR}/container.py", "supervise", name],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    common.update_unit_state(
        unit, ActiveState="activating", SubState="start", MainPID=process.pid, Result="success"
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if common.unit_state(unit).get("ActiveState") in ("active", "failed"):
            break
        time.sleep(0.05)
    if _state(unit) != "active":
        print(
            f"Job for {unit} failed because the control process exited with error code.\n"
            f'See "systemctl status {unit}" and "journalctl -xeu {unit}" for details.',
            file=sys.stderr,
        )
        return 1
    return 0


def stop(unit: str) -> int:
    state = common.unit_state(unit)
    pid = state.get("MainPID")
    if common.pid_alive(pid):
        os.kill(int(pid), signal.SIGTERM)
        deadline = time.monotonic() + 90
        while common.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if common.pid_alive(pid):
            os.kill(int(pid), signal.SIGKILL)
    if _container_name(unit) is not None:
        common.mark_inactive(unit)
    return 0


def _forward(machine_name: str, argv: list[str]) -> int:
    if os.geteuid() != 0:
        print("Failed to connect to bus: Permission denied", file=sys.stderr)
        return 1
    record = common.machine(machine_name)
    if record is None:
        print("Failed to connect to bus: Host is down", file=sys.stderr)
        return 1
    path = f"/proc/{record['leader']}/root{common.CONTROL_SOCKET}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        try:
            connection.connect(path)
        except OSError:
            print("Failed to connect to bus: Host is down", file=sys.stderr)
            return 1
        connection.sendall(json.dumps(argv).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            reply += chunk
    answer = json.loads(reply)
    sys.stdout.write(answer["stdout"])
    sys.stderr.write(answer["stderr"])
    return answer["code"]


def _journal_tail(unit: str) -> list[str]:
    lines = []
    try:
        with open(common.HOST_JOURNAL) as file:
            for line in file:
                entry = json.loads(line)
                if unit in (entry.get("UNIT"), entry.get("_SYSTEMD_UNIT")):
                    lines.append(f"{entry.get('SYSLOG_IDENTIFIER', '')}: {entry['MESSAGE']}")
    except FileNotFoundError:
        pass
    return lines


def main(argv: list[str]) -> int:
    machine_name = None
    rest = []
    iterator = iter(argv)
    for arg in iterator:
        if arg in ("-M", "--machine"):
            machine_name = next(iterator)
        elif arg.startswith("--machine="):
            machine_name = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if machine_name:
        return _forward(machine_name, rest)

    value_only = "--value" in rest
    wanted: list[str] = []
    words = []
    iterator = iter(
        a for a in rest if a not in ("--value", "--no-pager", "--full", "-l", "--quiet", "-q")
    )
    for arg in iterator:
        if arg in ("-p", "--property"):
            wanted += next(iterator).split(",")
        elif arg.startswith("--property="):
            wanted += arg.split("=", 1)[1].split(",")
        else:
            words.append(arg)
    if not words:
        print("Too few arguments.", file=sys.stderr)
        return 1
    verb = words[0]
    names = [n if "." in n else f"{n}.service" for n in words[1:]]
    if verb == "daemon-reload":
        return 0
    if verb in ("start", "stop", "restart"):
        if os.geteuid() != 0:
            print(f"Failed to {verb} {names[0]}: Access denied", file=sys.stderr)
            return 4
        code = 0
        for unit in names:
            if verb in ("stop", "restart"):
                code = max(code, stop(unit))
            if verb in ("start", "restart"):
                code = max(code, start(unit))
        return code
    if verb == "is-active":
        text, code = units.is_active([_state(u) for u in names])
        sys.stdout.write(text)
        return code
    if verb == "is-failed":
        text, code = units.is_failed([_state(u) for u in names])
        sys.stdout.write(text)
        return code
    if verb == "show":
        for unit in names:
            if _container_name(unit) is not None:
                properties = container_properties(unit)
            else:
                properties = {"Id": unit, "ActiveState": _state(unit), "LoadState": "loaded"}
            properties["ActiveState"] = (
                _state(unit) if properties.get("LoadState") != "not-found" else "inactive"
            )
            sys.stdout.write(units.show(properties, wanted, value_only))
        return 0
    if verb == "status":
        code = 0
        for unit in names:
            properties = (
                container_properties(unit)
                if _container_name(unit)
                else {"ActiveState": _state(unit)}
            )
            properties["ActiveState"] = _state(unit)
            sys.stdout.write(units.status(unit, properties, _journal_tail(unit)))
            if properties["ActiveState"] != "active":
                code = 3
        return code
    print(f'Unknown command verb "{verb}".', file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
