"""Stand-in for nixos-container (nixos.md §2.5).

list: names of /etc/nixos-containers/*.conf; status: up/down; start, stop,
restart: through systemctl on container@NAME; run NAME -- CMD...: root only,
enters the running container's namespaces with nsenter (the real tool adds
`su root -l -c`); show-ip: LOCAL_ADDRESS, or dies without privateNetwork;
destroy: refuses declarative containers with the real message.
"""

from __future__ import annotations

import os
import sys

import common
import systemctl


def _conf(name: str) -> dict | None:
    path = f"{common.CONTAINER_CONFS}/{name}.conf"
    if not os.path.exists(path):
        return None
    values = {}
    with open(path) as file:
        for line in file:
            key, _, value = line.strip().partition("=")
            values[key] = value.strip('"')
    return values


def main(argv: list[str]) -> int:
    if not argv:
        print(
            "Usage: nixos-container list|status|start|stop|restart|run|show-ip|destroy ...",
            file=sys.stderr,
        )
        return 1
    verb, rest = argv[0], argv[1:]
    if verb == "list":
        for entry in (
            sorted(os.listdir(common.CONTAINER_CONFS))
            if os.path.isdir(common.CONTAINER_CONFS)
            else []
        ):
            if entry.endswith(".conf"):
                print(entry[: -len(".conf")])
        return 0
    if not rest:
        print(f"nixos-container: {verb}: missing container name", file=sys.stderr)
        return 1
    name = rest[0]
    conf = _conf(name)
    if conf is None:
        if verb == "status":
            print("gone")
        print(
            f"/etc/nixos-containers/{name}.conf: container '{name}' does not exist", file=sys.stderr
        )
        return 1
    unit = f"container@{name}.service"
    if verb == "status":
        print("up" if systemctl._state(unit) == "active" else "down")
        return 0
    if verb in ("start", "stop", "restart"):
        code = systemctl.main([verb, unit])
        if code != 0:
            print(f"nixos-container: failed to {verb} container", file=sys.stderr)
        return code
    if verb == "destroy":
        print(
            "cannot destroy declarative container (remove it from your configuration.nix instead)",
            file=sys.stderr,
        )
        return 1
    if verb == "show-ip":
        if not conf.get("LOCAL_ADDRESS"):
            print(f"{name} does not have an IP address", file=sys.stderr)
            return 1
        print(conf["LOCAL_ADDRESS"])
        return 0
    if verb == "run":
        if os.geteuid() != 0:
            print("nixos-container: run requires root", file=sys.stderr)
            return 1
        record = common.machine(name)
        if record is None:
            print(f"container '{name}' is not running", file=sys.stderr)
            return 1
        command = rest[rest.index("--") + 1 :] if "--" in rest else rest[1:]
        os.execvp(
            "nsenter",
            ["nsenter", "-t", str(record["leader"]), "-m", "-u", "-i", "-n", "-p", "--", *command],
        )
    print(f"nixos-container: unknown command '{verb}'", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
