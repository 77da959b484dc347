"""Stand-in for nixos-container, ported from nixpkgs' nixos-container.pl (nixpkgs @ 00ef614e,
pkgs/by-name/ni/nixos-container/nixos-container.pl): every verb asks the real systemd.

list: basenames of the *.conf files; status: `up` when `systemctl show container@NAME`
has ActiveState=active; start, stop: `systemctl start|stop container@NAME`; restart:
stop, then start; terminate: `machinectl terminate`; run NAME -- CMD: root only,
`nsenter -t <Leader> -m -u -i -n -p -- CMD` with the leader from machinectl (the real
tool adds `su root -l -c`); show-ip: LOCAL_ADDRESS of the conf; destroy: refuses
declarative containers with the real message. Imperative containers (create,
update) are not simulated.
"""

from __future__ import annotations

import os
import subprocess
import sys

import common


def die(message: str) -> int:
    print(f"nixos-container: {message}", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if not argv:
        return die("usage: nixos-container list|status|start|stop|restart|run|show-ip|destroy")
    verb, rest = argv[0], argv[1:]
    if verb == "list":
        names = set()
        for directory in ("/etc/nixos-containers", "/etc/containers"):
            if os.path.isdir(directory):
                names |= {e[:-5] for e in os.listdir(directory) if e.endswith(".conf")}
        print("".join(f"{n}\n" for n in sorted(names)), end="")
        return 0
    if not rest:
        return die(f"{verb}: missing container name")
    name = rest[0]
    conf = common.find_container_conf(name)
    unit = f"container@{name}"
    if conf is None:
        if verb == "status":
            print("gone")
        return die(f"/etc/nixos-containers/{name}.conf: container '{name}' does not exist")
    if verb == "status":
        shown = subprocess.run(["systemctl", "show", unit], capture_output=True, text=True)
        print("up" if "\nActiveState=active\n" in f"\n{shown.stdout}" else "down")
        return 0
    if verb in ("start", "stop", "restart"):
        for step in ["stop", "start"] if verb == "restart" else [verb]:
            if subprocess.run(["systemctl", step, unit]).returncode != 0:
                return die(f"failed to {step} container")
        return 0
    if verb == "terminate":
        return subprocess.run(["machinectl", "terminate", name]).returncode
    if verb == "destroy":
        return die(
            "cannot destroy declarative container (remove it from your configuration.nix instead)"
        )
    if verb == "show-ip":
        address = common.read_conf(conf).get("LOCAL_ADDRESS")
        return print(address) or 0 if address else die(f"{name} does not have an IP address")
    if verb == "run":
        if os.geteuid() != 0:
            return die("run requires root")
        leader = subprocess.run(
            ["machinectl", "show", name, "-p", "Leader", "--value"], capture_output=True, text=True
        ).stdout.strip()
        if not leader:
            return die(f"container '{name}' is not running")
        command = rest[rest.index("--") + 1 :] if "--" in rest else rest[1:]
        os.execvp(
            "nsenter", ["nsenter", "-t", leader, "-m", "-u", "-i", "-n", "-p", "--", *command]
        )
    return die(f"unknown command '{verb}'")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
