"""The start and post-start scripts of `container@NAME.service` (sim).

`prepare` is the unit's ExecStartPre, after nixos-containers.nix's preStartScript
(nixpkgs @ 00ef614e, nixos/modules/virtualisation/nixos-containers.nix): it creates
the container root's directories and fills its /etc from the container's system, as
NixOS's activation does inside (setup-etc); like that activation
(nixos/modules/system/activation/activation-script.nix, the `var` snippet) it makes
`/var/empty` immutable. Simpler: /etc is copied, not linked to /etc/static, and the
root gets the links into /usr that Debian's systemd needs to boot.
`host-network` is postStartScript: the host end of the veth of a private network.

Fault switch container_fails: the start fails (true, or a text that must occur in
the container's .conf, so that only a new configuration fails and a rollback
recovers); matched against the .conf and the unit file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import common


def prepare(name: str, root: str) -> int:
    conf_path = common.find_container_conf(name)
    if conf_path is None:
        print(f"{name}.conf: No such file or directory", file=sys.stderr)
        return 1
    with open(conf_path) as file:
        conf_text = file.read()
    with open(f"{common.UNITS}/container@{name}.service") as file:
        conf_text += file.read()
    conf = common.read_conf(conf_path)
    fails = common.faults().get("container_fails")
    if fails is True or (isinstance(fails, str) and fails in conf_text):
        print("Failed to allocate a pty: No such device (fault container_fails)", file=sys.stderr)
        return 1
    system = conf["SYSTEM_PATH"]
    for directory, mode in (("etc", 0o755), ("var/lib", 0o755), ("var/log/journal", 0o755),
                            ("root", 0o700), ("usr", 0o755), ("nix/store", 0o755),
                            ("run", 0o755), ("tmp", 0o1777), ("proc", 0o555),
                            ("sys", 0o555), ("dev", 0o755)):  # fmt: skip
        os.makedirs(f"{root}/{directory}", exist_ok=True)
        os.chmod(f"{root}/{directory}", mode)
    for link in ("bin", "sbin", "lib", "lib64"):
        if os.path.islink(f"/{link}") and not os.path.lexists(f"{root}/{link}"):
            os.symlink(os.readlink(f"/{link}"), f"{root}/{link}")
    install_etc(f"{system}/etc", f"{root}/etc")
    machine_id = f"{root}/etc/machine-id"
    if not os.path.exists(machine_id) or os.path.getsize(machine_id) == 0:
        with open(machine_id, "w") as file:
            file.write(hashlib.sha256(f"container {name}".encode()).hexdigest()[:32] + "\n")
    empty = f"{root}/var/empty"
    if not os.path.isdir(empty):
        os.makedirs(empty, mode=0o555)
        subprocess.run(["chattr", "+i", empty], check=False, capture_output=True)
    return 0


def install_etc(source: str, target: str) -> None:
    """Replace what the system manages in /etc; leave the container's own files."""
    for directory, subdirectories, files in os.walk(source):
        relative = os.path.relpath(directory, source)
        os.makedirs(os.path.join(target, relative), exist_ok=True)
        for entry in files + [d for d in subdirectories if os.path.islink(f"{directory}/{d}")]:
            destination = os.path.normpath(os.path.join(target, relative, entry))
            if os.path.isdir(destination) and not os.path.islink(destination):
                shutil.rmtree(destination)
            elif os.path.lexists(destination):
                os.unlink(destination)
            origin = f"{directory}/{entry}"
            if os.path.islink(origin):
                os.symlink(os.readlink(origin), destination)
            else:
                shutil.copy(origin, destination)
    units = f"{target}/systemd/system"
    managed = f"{source}/systemd/system"
    for directory, _, files in os.walk(units):
        for entry in files:
            path = f"{directory}/{entry}"
            if not os.path.lexists(f"{managed}/{os.path.relpath(path, units)}"):
                os.unlink(path)


def host_network(name: str) -> int:
    conf = common.read_conf(common.find_container_conf(name))
    if conf.get("PRIVATE_NETWORK") != "1":
        return 0
    interface = f"ve-{name}"[:15]
    for command in (
        ["ip", "link", "set", "dev", interface, "up"],
        ["ip", "addr", "add", conf["HOST_ADDRESS"], "dev", interface],
        ["ip", "route", "add", conf["LOCAL_ADDRESS"], "dev", interface],
    ):
        subprocess.run(command, check=True)
    return 0


if __name__ == "__main__":
    verb, instance = sys.argv[1], os.environ["INSTANCE"]
    if verb == "prepare":
        # nixos-containers.nix names the unit's variable `root`.
        sys.exit(prepare(instance, os.environ["root"]))  # noqa: SIM112
    if verb == "host-network":
        sys.exit(host_network(instance))
    sys.exit(f"usage: {sys.argv[0]} prepare|host-network")
