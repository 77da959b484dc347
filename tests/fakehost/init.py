"""Boot of the simulated NixOS host (run by /usr/bin/python3 under `unshare`).

Started in new PID, mount, network, UTS, IPC and cgroup namespaces, it builds
the host's root file system in STATE/rootfs, pivots into it and then execs
the machine's real systemd as PID 1 of those namespaces:

    /usr              the machine's /usr, read-only (programs, systemd, python3)
    /etc, /var        overlays: the machine's files below, changes in STATE
    /nix              STATE/nix: the host's own store and profiles
    /home, /root, /data, ...  directories of STATE/rootfs
    /tmp, /run, /dev  fresh tmpfs; devpts of its own; proc of its own PID space
    /sys              read-only sysfs with a private cgroup2 mount (unified mode)

Before the exec it writes a NixOS-like /etc (users, sudoers, sshd_config,
NixOS marker, configuration.nix), the stand-in tools and generation 1 of the
system, and the units systemd boots: a target of our own that wants only
journald (volatile, no kernel log), dbus, machined and sshd, never the
machine's default target (it would start the image's services and a getty on
the machine's console). The recipe and its traps are in docs/simulated-host.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # deprecated, still in Debian 12's Python 3.11

HOSTNAME = "hainich"
# name: (uid, groups, sudo rule, password)
USERS = {
    "admin": (1000, ["wheel"], "NOPASSWD: ALL", None),
    "alice": (1001, ["wheel"], "ALL", "correct horse battery staple"),
    "guest": (1002, [], None, None),
}
SUDO_PASSWORD = USERS["alice"][3]
CONFIGURATION = """\
# Simulated host: a small NixOS configuration like the collective's server.
{{ config, pkgs, ... }}:
{{
  imports = [
    ./hardware-configuration.nix
  ];

  networking.hostName = "hainich";
  services.openssh.enable = true;
  users.users.admin = {{ isNormalUser = true; extraGroups = [ "wheel" ]; }};
  system.stateVersion = "{state_version}";
}}
"""
HARDWARE = """\
{ ... }:
{
  boot.loader.grub.device = "/dev/vda";
  fileSystems."/" = { device = "/dev/vda1"; fsType = "ext4"; };
}
"""
# Units of the machine's image that would reach outside the host's namespaces
# (kernel sysctls, binfmt, modules, the root file system) or wait for a console.
MASKED_UNITS = (
    "systemd-sysctl.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "systemd-modules-load.service",
    "systemd-remount-fs.service",
    "systemd-firstboot.service",
    "systemd-hwdb-update.service",
    "systemd-udevd.service",
    "systemd-udev-trigger.service",
    "systemd-random-seed.service",
    "sys-kernel-config.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    "getty.target",
    "console-getty.service",
    "ssh.service",
)
HOST_TARGET = "nixos-sim.target"


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
    os.makedirs(f"{root}/usr", exist_ok=True)
    mount("--rbind", "/usr", f"{root}/usr")
    mount("-o", "remount,bind,ro", f"{root}/usr")
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
    # The machine's logs and journal must never receive the host's.
    mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", f"{root}/var/log")
    os.makedirs(f"{state}/nix", exist_ok=True)
    os.makedirs(f"{root}/nix", exist_ok=True)
    mount("--bind", f"{state}/nix", f"{root}/nix")
    for name in ("home", "srv", "mnt", "boot", "tmp", "run", "dev", "proc", "sys"):
        os.makedirs(f"{root}/{name}", exist_ok=True)
    os.makedirs(f"{root}/root", mode=0o700, exist_ok=True)
    mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", f"{root}/tmp")
    mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", f"{root}/run")
    mount("-t", "proc", "proc", f"{root}/proc")
    # As nspawn does for a container: kernel knobs stay read-only, so nothing
    # started here can change the machine's sysctls.
    mount("--bind", f"{root}/proc/sys", f"{root}/proc/sys")
    mount("-o", "remount,bind,ro", f"{root}/proc/sys")
    # Except, as nspawn does with a private network (systemd-nspawn(1),
    # --private-network), the knobs of the host's own network namespace.
    mount("--bind", f"{root}/proc/sys/net", f"{root}/proc/sys/net")
    mount("-o", "remount,bind,rw", f"{root}/proc/sys/net")
    mount("-t", "sysfs", "-o", "ro", "sysfs", f"{root}/sys")
    # Our own cgroup namespace and a pure cgroup2 mount: systemd runs in
    # unified mode, nspawn can create its payload cgroup, machined maps PIDs.
    mount("-t", "cgroup2", "cgroup2", f"{root}/sys/fs/cgroup")
    mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", f"{root}/dev")
    for node in ("null", "zero", "full", "random", "urandom", "tty"):
        open(f"{root}/dev/{node}", "w").close()
        mount("--bind", f"/dev/{node}", f"{root}/dev/{node}")
    os.makedirs(f"{root}/dev/pts")
    mount("-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620", "devpts", f"{root}/dev/pts")
    os.symlink("pts/ptmx", f"{root}/dev/ptmx")
    for directory in ("shm", "mqueue"):
        os.makedirs(f"{root}/dev/{directory}")
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
        "container-start": "container_start.py",
    }
    for command, script in commands.items():
        write(
            f"{root}{tools}/bin/{command}",
            "#!/bin/sh\n"
            f'PATH="$PATH:/usr/sbin:/sbin" exec /usr/bin/python3 {tools}/lib/sim/{script} "$@"\n',
            mode=0o755,
        )
    os.symlink("/usr/bin/bash", f"{root}{tools}/bin/bash")
    os.symlink("/usr/sbin/nologin", f"{root}{tools}/bin/nologin")
    os.makedirs(f"{root}{tools}/lib/execlog")
    shutil.copy(execlog, f"{root}{tools}/lib/execlog/libexeclog.so")
    return tools


def install_system(root: str, tools: str, spec: dict) -> None:
    """Generation 1: the system without containers; its sw/bin holds the tools."""
    config = {
        "containers": {},
        "units": {},
        "failedAssertions": [],
        "warnings": [],
        "files": [],
        "stateVersion": spec["state_version"],
    }
    release = spec["nixos_version"].split()[0]
    system = f"/nix/store/{store_hash(json.dumps(config))}-nixos-system-{HOSTNAME}-{release}"
    write(f"{root}{system}/config.json", json.dumps(config))
    write(f"{root}{system}/nixos-version", spec["nixos_version"] + "\n")
    os.symlink(tools, f"{root}{system}/sw")
    profiles = f"{root}/nix/var/nix/profiles"
    os.makedirs(profiles, exist_ok=True)
    os.symlink(system, f"{profiles}/system-1-link")
    os.symlink("system-1-link", f"{profiles}/system")
    os.symlink(system, f"{root}/run/current-system")
    os.symlink(system, f"{root}/run/booted-system")
    os.makedirs(f"{root}/run/wrappers/bin")
    os.symlink("/usr/bin/sudo", f"{root}/run/wrappers/bin/sudo")


def _system_accounts(path: str) -> list[str]:
    """The image's own system accounts (messagebus, sshd, www-data, ...), uid < 1000."""
    with open(path) as file:
        lines = [line.rstrip("\n") for line in file if line.strip()]
    return [
        line
        for line in lines
        if line.split(":")[0] not in ("root", *USERS)
        and (0 < int(line.split(":")[2]) < 1000 or line.split(":")[2] == "65534")
    ]


def write_etc(root: str, keys: dict) -> None:
    etc = f"{root}/etc"
    shell = "/run/current-system/sw/bin/bash"
    passwd = [f"root:x:0:0:System administrator:/root:{shell}", *_system_accounts("/etc/passwd")]
    shadow = ["root:*:1::::::"] + [f"{line.split(':')[0]}:!:1::::::" for line in passwd[1:]]
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
    group = ["root:x:0:", *_system_accounts("/etc/group")]
    # NixOS's wheel is gid 1 and users 100, where Debian has daemon and users.
    group = [g for g in group if g.split(":")[2] not in ("1", "100")]
    group += [f"wheel:x:1:{','.join(members['wheel'])}", "users:x:100:"]
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
    if os.path.isdir(f"{etc}/sudoers.d"):
        shutil.rmtree(f"{etc}/sudoers.d")
    write(f"{etc}/hostname", HOSTNAME + "\n")
    write(f"{etc}/hosts", f"127.0.0.1 localhost\n::1 localhost\n127.0.0.2 {HOSTNAME}\n")
    write(f"{etc}/NIXOS", "")
    release = keys["nixos_version"].split()[0]
    write(
        f"{etc}/os-release",
        f'NAME=NixOS\nID=nixos\nVERSION="{release}"\nVERSION_ID="{release[:5]}"\n'
        f'PRETTY_NAME="NixOS {release[:5]}"\nHOME_URL="https://nixos.org/"\n',
    )
    write(f"{etc}/machine-id", hashlib.sha256(HOSTNAME.encode()).hexdigest()[:32] + "\n")
    write(
        f"{etc}/nixos/configuration.nix",
        CONFIGURATION.format(state_version=keys["state_version"]),
    )
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
    write_units(etc, keys)


def write_units(etc: str, keys: dict) -> None:
    """What systemd boots: our target, sshd, journald's settings, masks."""
    units = f"{etc}/systemd/system"
    # Drop the image's enablement links: only what the target names starts.
    for wants in os.listdir(units) if os.path.isdir(units) else []:
        path = f"{units}/{wants}"
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.islink(path):
            os.unlink(path)
    os.makedirs(units, exist_ok=True)
    for unit in MASKED_UNITS:
        os.symlink("/dev/null", f"{units}/{unit}")
    wanted = ["systemd-journald.service", "dbus.service", "systemd-machined.service"]
    wanted += ["sshd.service", "machines.target"]
    if keys.get("failing_unit"):
        wanted.append("nightly-report.service")
        # A host unit of someone else's that fails, so every switch reports it.
        write(
            f"{units}/nightly-report.service",
            "[Unit]\nDescription=Nightly report (always fails)\n\n"
            "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo no mail relay; exit 1'\n",
        )
    write(
        f"{units}/{HOST_TARGET}",
        "[Unit]\nDescription=Simulated NixOS host\n"
        f"Wants={' '.join(wanted)}\nAfter=sshd.service\nAllowIsolate=yes\n",
    )
    os.symlink(HOST_TARGET, f"{units}/default.target")
    write(
        f"{units}/sshd.service",
        "[Unit]\nDescription=SSH Daemon\nAfter=network.target\n\n"
        "[Service]\nType=notify\nExecStart=/usr/sbin/sshd -D -e -f /etc/ssh/sshd_config\n"
        "KillMode=process\nRestart=always\nRuntimeDirectory=sshd\nRuntimeDirectoryMode=0755\n",
    )
    write(
        f"{etc}/systemd/journald.conf.d/simulated-host.conf",
        # Volatile: nothing reaches the machine's /var/log/journal; no kernel log.
        "[Journal]\nStorage=volatile\nReadKMsg=no\nRateLimitBurst=0\n",
    )
    for log in ("commands.jsonl", "exec.log"):
        path = f"{etc}/../var/log/sim/{log}"
        write(path, "", mode=0o666)
        os.chmod(path, 0o666)
    os.makedirs(f"{etc}/../var/lib/machines", exist_ok=True)
    os.makedirs(f"{etc}/../var/empty", exist_ok=True)


def pivot(root: str) -> None:
    os.makedirs(f"{root}/.oldroot", exist_ok=True)
    os.chdir(root)
    run("pivot_root", ".", ".oldroot")
    os.chroot(".")
    os.chdir("/")
    run("umount", "-l", "/.oldroot")
    os.rmdir("/.oldroot")


def main(state: str, source: str) -> None:
    with open(f"{state}/spec.json") as file:
        spec = json.load(file)
    socket.sethostname(HOSTNAME)
    run("ip", "link", "set", "lo", "up")
    root = build_root(state)
    spec["tools"] = install_tools(root, source, spec["execlog"])
    install_system(root, spec["tools"], spec)
    write_etc(root, spec)
    pivot(root)
    # systemd(1): "container=other" tells it it runs in a container it does not know.
    environment = {"container": "other", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    sys.stdout.flush()
    os.execve(
        "/lib/systemd/systemd",
        ["/lib/systemd/systemd", f"--unit={HOST_TARGET}", "--log-target=journal"],
        environment,
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
