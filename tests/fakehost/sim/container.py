"""Stand-in for systemd-nspawn: the host unit `container@NAME.service`.

`container.py supervise NAME` is the main process of `container@NAME.service`
(nspawn with --keep-unit, nixos.md §2.1). It takes the container's evaluated
configuration from /run/current-system, applies the defaults of nixpkgs'
nixos-containers.nix (bind mounts read-only unless isReadOnly = false,
§1.3), refuses to start when a bind-mount source is missing (§4), and starts
`guest.py init` in new mount, PID, UTS and IPC namespaces (and a network
namespace with a veth pair when privateNetwork, §3.2). It registers the
machine (what machined does), so `journalctl -M`, `systemctl -M` and
`nixos-container run` find it.

Fault switch: container_fails (nspawn refuses to start the container; true,
or a text that must occur in the container's configuration, so that only a
new configuration fails and a rollback recovers).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import common

SIM_DIR = os.path.dirname(os.path.abspath(__file__))
PYTHON = "/usr/bin/python3"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def effective_config(name: str, system: dict | None = None) -> dict | None:
    """containers.NAME with the defaults nixos-containers.nix gives missing options."""
    system = system if system is not None else common.current_config()
    container = (system.get("containers") or {}).get(name)
    if container is None:
        return None
    mounts = {}
    for mount_name, mount in (container.get("bindMounts") or {}).items():
        mount_point = mount.get("mountPoint") or mount_name
        mounts[mount_point] = {
            "hostPath": mount.get("hostPath") or mount_point,
            "isReadOnly": mount.get("isReadOnly", True) is not False,
        }
    unit = (system.get("units") or {}).get(f"container@{name}", {})
    return {
        "name": name,
        "autoStart": bool(container.get("autoStart", False)),
        "restartIfChanged": container.get("restartIfChanged", True) is not False,
        "ephemeral": bool(container.get("ephemeral", False)),
        "privateNetwork": bool(container.get("privateNetwork", False)),
        "hostAddress": container.get("hostAddress"),
        "localAddress": container.get("localAddress"),
        "bindMounts": mounts,
        "system": container.get("config") or {},
        "limits": unit.get("serviceConfig") or {},
    }


# --- host side: container@NAME.service -------------------------------------


def host_journal(name: str, message: str, identifier: str = "systemd") -> None:
    common.journal_append(
        common.HOST_JOURNAL,
        message,
        UNIT=f"container@{name}.service",
        SYSLOG_IDENTIFIER=identifier,
        _HOSTNAME=os.uname().nodename,
    )


def supervise(name: str) -> int:
    unit = f"container@{name}.service"
    config = effective_config(name)
    if config is None:
        host_journal(name, f"/etc/nixos-containers/{name}.conf: No such file or directory")
        return _failed(unit, 1)
    host_journal(name, f"Starting Container '{name}'...")
    fails = common.faults().get("container_fails")
    if fails is True or (isinstance(fails, str) and fails in json.dumps(config)):
        host_journal(
            name, "Failed to allocate a pty: No such device (fault container_fails)", "nspawn"
        )
        host_journal(name, f"{unit}: Main process exited, code=exited, status=1/FAILURE")
        host_journal(name, f"Failed to start Container '{name}'.")
        return _failed(unit, 1)
    for mount in config["bindMounts"].values():
        if not os.path.exists(mount["hostPath"]):
            # What nspawn reports for a missing --bind= source (nixos.md §4).
            host_journal(
                name, f"Failed to stat {mount['hostPath']}: No such file or directory", "nspawn"
            )
            host_journal(name, f"{unit}: Main process exited, code=exited, status=1/FAILURE")
            host_journal(name, f"{unit}: Failed with result 'exit-code'.")
            host_journal(name, f"Failed to start Container '{name}'.")
            return _failed(unit, 1)

    root = common.container_root(name, config["ephemeral"])
    if config["ephemeral"]:
        shutil.rmtree(root, ignore_errors=True)
    os.makedirs(f"{root}/var/log/journal", exist_ok=True)
    common.new_boot(f"{root}/var/log/journal/sim.jsonl")
    spec_path = f"/run/sim/nspawn/{name}.json"
    common.write_json(spec_path, {**config, "root": root})

    ready_read, ready_write = os.pipe()
    go_read, go_write = os.pipe()
    namespaces = ["--mount", "--uts", "--ipc", "--pid", "--fork", "--propagation", "private"]
    if config["privateNetwork"]:
        namespaces.append("--net")
    init = subprocess.Popen(
        [
            "unshare",
            *namespaces,
            PYTHON,
            f"{SIM_DIR}/guest.py",
            "init",
            spec_path,
            str(ready_write),
            str(go_read),
        ],
        pass_fds=(ready_write, go_read),
        stdin=subprocess.DEVNULL,
    )
    os.close(ready_write)
    os.close(go_read)
    leader = _namespace_child(init.pid)
    if config["privateNetwork"]:
        _veth(name, leader, config)
    os.write(go_write, b"go\n")
    os.close(go_write)

    stopping = threading.Event()

    def stop(*_):
        stopping.set()
        host_journal(name, f"Stopping Container '{name}'...")
        # nspawn --kill-signal=SIGRTMIN+3 asks the container's systemd to halt.
        if common.pid_alive(leader):
            os.kill(leader, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    with os.fdopen(ready_read) as ready:
        booted = ready.readline().strip() == "ready"
    if booted and not stopping.is_set():
        common.write_json(
            f"{common.MACHINES}/{name}.json",
            {
                "leader": leader,
                "root": root,
                "privateNetwork": config["privateNetwork"],
                "localAddress": config["localAddress"],
            },
        )
        common.update_unit_state(
            unit,
            ActiveState="active",
            SubState="running",
            MainPID=os.getpid(),
            ActiveEnterTimestamp=time.time(),
            Result="success",
        )
        host_journal(name, f"Started Container '{name}'.")
    code = init.wait()
    if os.path.exists(f"{common.MACHINES}/{name}.json"):
        os.unlink(f"{common.MACHINES}/{name}.json")
    if config["ephemeral"]:
        shutil.rmtree(root, ignore_errors=True)
    if stopping.is_set() or code == 0:
        host_journal(name, f"Stopped Container '{name}'.")
        common.mark_inactive(unit)
        return 0
    host_journal(name, f"{unit}: Main process exited, code=exited, status={code}")
    return _failed(unit, code)


def _failed(unit: str, code: int) -> int:
    common.update_unit_state(
        unit,
        ActiveState="failed",
        SubState="failed",
        Result="exit-code",
        ExecMainStatus=code,
        MainPID=0,
        InactiveEnterTimestamp=time.time(),
    )
    return code


def _namespace_child(unshare_pid: int) -> int:
    """PID (in our namespace) of the container's init that `unshare --fork` started."""
    for _ in range(200):
        try:
            with open(f"/proc/{unshare_pid}/task/{unshare_pid}/children") as file:
                children = file.read().split()
            if children:
                return int(children[0])
        except FileNotFoundError:
            break
        time.sleep(0.01)
    raise RuntimeError("container init did not start")


def _veth(name: str, leader: int, config: dict) -> None:
    """Host side of privateNetwork: ve-NAME with hostAddress, a route to localAddress."""
    host_if = f"ve-{name}"
    _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", str(leader))
    _run("ip", "addr", "add", f"{config['hostAddress']}/32", "dev", host_if)
    _run("ip", "link", "set", host_if, "up")
    _run("ip", "route", "add", f"{config['localAddress']}/32", "dev", host_if)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "supervise":
        sys.exit(supervise(sys.argv[2]))
    sys.exit("usage: container.py supervise NAME")
