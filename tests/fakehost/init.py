"""PID 1 of the simulated NixOS host (run by /usr/bin/python3 under `unshare`).

Started in new PID, mount, network, UTS and IPC namespaces, it builds the
host's root file system in STATE/rootfs and pivots into it, so nothing of the
real machine is writable or even visible except through these mounts:

    /usr              the machine's /usr, read-only (programs, python3)
    /etc, /var        overlays: the machine's files below, changes in STATE
    /nix              STATE/nix: the host's own store and profiles
    /home, /root, /data, ...  directories of STATE/rootfs
    /tmp, /run, /dev  fresh tmpfs; devpts of its own; proc of its own PID space

It then writes a NixOS-like /etc (users, sudoers, sshd_config, NixOS marker,
configuration.nix), installs the stand-in tools and generation 1 of the
system, starts sshd on 127.0.0.1:22 of its own loopback, reports "ready" on the
inherited fd, reaps orphans, and on SIGTERM stops every process it holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # deprecated, still in Debian 12's Python 3.11

HOSTNAME = "hainich"
NIXOS_VERSION = "25.05.20250612.6c62cf2 (Warbler)"
# name: (uid, groups, sudo rule, password)
USERS = {
    "admin": (1000, ["wheel"], "NOPASSWD: ALL", None),
    "alice": (1001, ["wheel"], "ALL", "correct horse battery staple"),
    "guest": (1002, [], None, None),
}
SUDO_PASSWORD = USERS["alice"][3]
CONFIGURATION = """\
# Simulated host: a small NixOS configuration like the collective's server.
{ config, pkgs, ... }:
{
  imports = [
    ./hardware-configuration.nix
  ];

  networking.hostName = "hainich";
  services.openssh.enable = true;
  users.users.admin = { isNormalUser = true; extraGroups = [ "wheel" ]; };
  system.stateVersion = "25.05";
}
"""
HARDWARE = """\
{ ... }:
{
  boot.loader.grub.device = "/dev/vda";
  fileSystems."/" = { device = "/dev/vda1"; fsType = "ext4"; };
}
"""


def run(*argv: str) -> None:
    subprocess.run(argv, check=True)


def mount(*args: str) -> None:
    run("mount", *args)


def store_hash(text: str) -> str:
    alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
    digest = hashlib.sha256(text.encode()).digest()
    return "".join(alphabet[b % 32] for b in digest[:32])


def build_root(state: str) -> str:
    root = f"{state}/rootfs"
    os.makedirs(root, exist_ok=True)
    mount("--bind", root, root)
    for name in ("usr",):
        os.makedirs(f"{root}/{name}", exist_ok=True)
        mount("--rbind", f"/{name}", f"{root}/{name}")
        mount("-o", "remount,bind,ro", f"{root}/{name}")
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        if os.path.islink(f"/{name}") and not os.path.lexists(f"{root}/{name}"):
            os.symlink(os.readlink(f"/{name}"), f"{root}/{name}")
    for name in ("etc", "var"):
        for layer in ("upper", "work"):
            os.makedirs(f"{state}/{name}.{layer}", exist_ok=True)
        os.makedirs(f"{root}/{name}", exist_ok=True)
        mount(
            "-t", "overlay", "overlay", "-o",
            f"lowerdir=/{name},upperdir={state}/{name}.upper,workdir={state}/{name}.work",
            f"{root}/{name}",
        )  # fmt: skip
    os.makedirs(f"{state}/nix", exist_ok=True)
    os.makedirs(f"{root}/nix", exist_ok=True)
    mount("--bind", f"{state}/nix", f"{root}/nix")
    for name in ("home", "srv", "mnt", "boot", "tmp", "run", "dev", "proc", "sys"):
        os.makedirs(f"{root}/{name}", exist_ok=True)
    os.makedirs(f"{root}/root", mode=0o700, exist_ok=True)
    mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", f"{root}/tmp")
    mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", f"{root}/run")
    mount("-t", "proc", "proc", f"{root}/proc")
    mount("-t", "sysfs", "-o", "ro", "sysfs", f"{root}/sys")
    mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", f"{root}/dev")
    for node in ("null", "zero", "full", "random", "urandom", "tty"):
        open(f"{root}/dev/{node}", "w").close()
        mount("--bind", f"/dev/{node}", f"{root}/dev/{node}")
    os.makedirs(f"{root}/dev/pts")
    mount("-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620", "devpts", f"{root}/dev/pts")
    os.symlink("pts/ptmx", f"{root}/dev/ptmx")
    os.makedirs(f"{root}/dev/shm")
    mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", f"{root}/dev/shm")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
        os.symlink(target, f"{root}/dev/{name}")
    return root


def write(path: str, content: str, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.islink(path):  # e.g. Debian's /etc/os-release -> /usr/lib/os-release
        os.unlink(path)
    with open(path, "w") as file:
        file.write(content)
    os.chmod(path, mode)
    os.chown(path, *owner)


def install_tools(root: str, source: str, execlog: str) -> str:
    """The stand-ins as one store path, like a package: bin/ wrappers and their code."""
    listing = "".join(sorted(os.listdir(f"{source}/sim") + os.listdir(f"{source}/nix")))
    tools = f"/nix/store/{store_hash(listing + str(time.time()))}-nixos-sim-tools"
    shutil.copytree(
        f"{source}/sim", f"{root}{tools}/lib/sim", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(f"{source}/nix", f"{root}{tools}/lib/nix")
    os.makedirs(f"{root}{tools}/bin")
    commands = {
        "nixos-rebuild": "nixos_rebuild.py",
        "nixos-container": "nixos_container.py",
        "nixos-version": "nixos_version.py",
        "systemctl": "systemctl.py",
        "journalctl": "journalctl.py",
    }
    for command, script in commands.items():
        write(
            f"{root}{tools}/bin/{command}",
            # The Debian helpers they call (pivot_root, ip) live in sbin.
            "#!/bin/sh\n"
            f'PATH="$PATH:/usr/sbin:/sbin" exec /usr/bin/python3 {tools}/lib/sim/{script} "$@"\n',
            mode=0o755,
        )
    os.symlink("/usr/bin/bash", f"{root}{tools}/bin/bash")
    os.symlink("/usr/sbin/nologin", f"{root}{tools}/bin/nologin")
    os.makedirs(f"{root}{tools}/lib/execlog")
    shutil.copy(execlog, f"{root}{tools}/lib/execlog/libexeclog.so")
    return tools


def install_system(root: str, tools: str) -> None:
    """Generation 1: an empty system (no containers) whose sw/bin holds the tools."""
    config = {"containers": {}, "units": {}, "failedAssertions": [], "warnings": [], "files": []}
    release = NIXOS_VERSION.split()[0]
    system = f"/nix/store/{store_hash(json.dumps(config))}-nixos-system-{HOSTNAME}-{release}"
    write(f"{root}{system}/config.json", json.dumps(config))
    write(f"{root}{system}/nixos-version", NIXOS_VERSION + "\n")
    os.symlink(tools, f"{root}{system}/sw")
    profiles = f"{root}/nix/var/nix/profiles"
    os.makedirs(profiles, exist_ok=True)
    os.symlink(system, f"{profiles}/system-1-link")
    os.symlink("system-1-link", f"{profiles}/system")
    os.symlink(system, f"{root}/run/current-system")
    os.symlink(system, f"{root}/run/booted-system")
    os.makedirs(f"{root}/run/wrappers/bin")
    os.symlink("/usr/bin/sudo", f"{root}/run/wrappers/bin/sudo")


def write_etc(root: str, keys: dict) -> None:
    etc = f"{root}/etc"
    shell = "/run/current-system/sw/bin/bash"
    nologin = "/run/current-system/sw/bin/nologin"
    passwd = [
        f"root:x:0:0:System administrator:/root:{shell}",
        f"sshd:x:993:65534:SSH privilege separation user:/var/empty:{nologin}",
        f"nobody:x:65534:65534:Unprivileged account (don't use!):/var/empty:{nologin}",
    ]
    shadow = ["root:*:1::::::", "sshd:!:1::::::", "nobody:!:1::::::"]
    members: dict[str, list[str]] = {"wheel": []}
    for user, (uid, groups, _, password) in USERS.items():
        passwd.append(f"{user}:x:{uid}:100::/home/{user}:{shell}")
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512)) if password else "*"
        shadow.append(f"{user}:{hashed}:1::::::")
        for group in groups:
            members[group].append(user)
        home = f"{root}/home/{user}"
        os.makedirs(home, exist_ok=True)
        os.chown(home, uid, 100)
        os.chmod(home, 0o700)
    group = [
        "root:x:0:",
        f"wheel:x:1:{','.join(members['wheel'])}",
        "users:x:100:",
        "nogroup:x:65534:",
    ]
    write(f"{etc}/passwd", "\n".join(passwd) + "\n")
    write(f"{etc}/group", "\n".join(group) + "\n")
    write(f"{etc}/shadow", "\n".join(shadow) + "\n", mode=0o640)
    write(f"{etc}/gshadow", "".join(f"{g.split(':')[0]}:!::\n" for g in group), mode=0o640)
    rules = "".join(
        f"{user}  ALL=(ALL:ALL) SETENV: {rule}\n" for user, (_, _, rule, _) in USERS.items() if rule
    )
    write(
        f"{etc}/sudoers",
        # NixOS keeps the caller's PATH; Debian's sudo would reset it, hence secure_path.
        "Defaults env_keep+=SSH_AUTH_SOCK\n"
        'Defaults secure_path="/run/wrappers/bin:/run/current-system/sw/bin:'
        '/usr/sbin:/usr/bin:/sbin:/bin"\n'
        "root  ALL=(ALL:ALL) SETENV: ALL\n" + rules,
        mode=0o440,
    )
    write(f"{etc}/hostname", HOSTNAME + "\n")
    write(f"{etc}/hosts", f"127.0.0.1 localhost\n::1 localhost\n127.0.0.2 {HOSTNAME}\n")
    write(f"{etc}/NIXOS", "")
    write(
        f"{etc}/os-release",
        'NAME=NixOS\nID=nixos\nVERSION="25.05 (Warbler)"\nVERSION_ID="25.05"\n'
        'PRETTY_NAME="NixOS 25.05 (Warbler)"\nHOME_URL="https://nixos.org/"\n',
    )
    write(f"{etc}/machine-id", store_hash(HOSTNAME)[:32] + "\n")
    write(f"{etc}/nixos/configuration.nix", CONFIGURATION)
    write(f"{etc}/nixos/hardware-configuration.nix", HARDWARE)
    write(f"{etc}/sim/faults.json", "{}\n")
    write(f"{etc}/ssh/ssh_host_ed25519_key", keys["host_key"], mode=0o600)
    write(f"{etc}/ssh/ssh_host_ed25519_key.pub", keys["host_key_pub"])
    for user in ["root", *USERS]:
        write(f"{etc}/ssh/authorized_keys.d/{user}", keys["client_key_pub"])
    write(
        f"{etc}/ssh/sshd_config",
        "Port 22\nListenAddress 127.0.0.1\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "PidFile /run/sshd.pid\n"
        # NixOS looks in both places; keys of the simulated users are in the second.
        "AuthorizedKeysFile %h/.ssh/authorized_keys /etc/ssh/authorized_keys.d/%u\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nAllowTcpForwarding yes\n"
        "MaxStartups 100:30:200\nMaxSessions 100\n"
        "Subsystem sftp /usr/lib/openssh/sftp-server\n"
        f"ForceCommand /usr/bin/python3 {keys['tools']}/lib/sim/session.py\n"
        "LogLevel VERBOSE\n",
    )
    write(f"{etc}/ld.so.preload", f"{keys['tools']}/lib/execlog/libexeclog.so\n")
    for log in ("commands.jsonl", "exec.log"):
        write(f"{root}/var/log/sim/{log}", "", mode=0o666)
        os.chmod(f"{root}/var/log/sim/{log}", 0o666)
    os.makedirs(f"{root}/var/lib/sim", exist_ok=True)
    os.makedirs(f"{root}/var/log/journal", exist_ok=True)
    os.makedirs(f"{root}/run/sshd", exist_ok=True)
    os.makedirs(f"{root}/run/sim", exist_ok=True)
    os.makedirs(f"{root}/var/empty", exist_ok=True)


def pivot(root: str) -> None:
    os.makedirs(f"{root}/.oldroot", exist_ok=True)
    os.chdir(root)
    run("pivot_root", ".", ".oldroot")
    os.chroot(".")
    os.chdir("/")
    run("umount", "-l", "/.oldroot")
    os.rmdir("/.oldroot")


def wait_for_port(port: int) -> None:
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("sshd did not start")


def main(state: str, source: str, ready_fd: int) -> None:
    with open(f"{state}/keys.json") as file:
        keys = json.load(file)
    socket.sethostname(HOSTNAME)
    run("ip", "link", "set", "lo", "up")
    root = build_root(state)
    keys["tools"] = install_tools(root, source, keys["execlog"])
    install_system(root, keys["tools"])
    write_etc(root, keys)
    pivot(root)

    class Stop(Exception):
        pass

    def stop(*_):
        raise Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sshd_log = open("/var/log/sim/sshd.log", "a")  # noqa: SIM115 (sshd keeps writing)
    subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/sshd_config"], stderr=sshd_log)
    wait_for_port(22)
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)
    try:
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                time.sleep(0.1)
    except Stop:
        pass
    # Everything in this PID namespace is ours: SIGTERM, then SIGKILL.
    os.kill(-1, signal.SIGTERM)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                time.sleep(0.05)
        except ChildProcessError:
            break
    else:
        os.kill(-1, signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
