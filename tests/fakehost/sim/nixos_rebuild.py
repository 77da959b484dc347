"""Stand-in for nixos-rebuild and switch-to-configuration; everything else is real systemd.

Follows nixpkgs' own source:
* nixos-rebuild (bash, NixOS 25.05: pkgs/os-specific/linux/nixos-rebuild/nixos-rebuild.sh;
  nixos-rebuild-ng, 25.11: pkgs/by-name/ni/nixos-rebuild-ng/src/nixos_rebuild/__init__.py,
  nixpkgs @ 0145c6da): the configuration is /etc/nixos/configuration.nix (or $NIXOS_CONFIG),
  or, when /etc/nixos/flake.nix exists (or --flake is given), that flake's
  nixosConfigurations.<hostname>; for a flake in a git repository only files known to git
  are visible, like Nix's copy of the flake source. It is evaluated with real Nix
  (nix-instantiate, through the mini module system in ../nix): syntax and evaluation
  errors are Nix's own, exit 1. `switch`/`boot` set the profile first (a new generation,
  none when the built system equals the highest one, as `nix-env --set` does), then
  activate; `--rollback` is `nix-env --rollback`: the highest generation below the current.
  On a failed activation the bash version prints "warning: error(s) occurred while
  switching to the new configuration" and exits 1; -ng passes the exit status (4) on.
* switch-to-configuration (pkgs/by-name/sw/switch-to-configuration-ng/src/main.rs): writes
  the units NixOS generates (`container@NAME.service` as nixos-containers.nix renders it,
  rendered with systemd-lib.nix's attrsToSection, nixpkgs @ 6f03be6b
  nixos/lib/systemd-lib.nix), compares them with the old ones, stops changed and removed
  units that are active ("stopping the following units: …"), `systemctl daemon-reload`,
  starts what it stopped ("starting the following units: …") and the active targets,
  reports units that came up new ("the following new units were started: …"), and exits
  4 when any unit of the host is failed, or auto-restarting after a non-zero exit.
  A changed unit carrying `X-RestartIfChanged=false` is left alone.

Simpler than the real thing: nothing is built. The "system" in the store is the
evaluated configuration as JSON plus, per container, an `etc/` with its users and
units; a Julia package is a wrapper that starts the stand-in Pluto (pluto.py).
Activation runs in this process, not as a transient unit, but ignores SIGHUP so it
survives a lost SSH session like the real one.
Fault switches: switch_fails (a build error: evaluation and dry-build still succeed),
rebuild_seconds (silent build time).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import common

SIM_DIR = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.dirname(os.path.dirname(SIM_DIR))
NIX_DIR = os.path.join(os.path.dirname(SIM_DIR), "nix")
SWITCH = "/run/current-system/bin/switch-to-configuration"
# Units of the machine's image that a NixOS container does not have.
CONTAINER_MASKED = (
    "getty.target",
    "console-getty.service",
    "systemd-logind.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "systemd-firstboot.service",
    "systemd-sysusers.service",
    "systemd-random-seed.service",
    "systemd-hwdb-update.service",
    "ssh.service",
)


def say(text: str) -> None:
    """Write to the terminal if there still is one (the session may be gone)."""
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr, flush=True)


def systemctl(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, check=check)


def release() -> str:
    with open(f"{common.CURRENT_SYSTEM}/nixos-version") as file:
        return file.read().split()[0]


def is_ng() -> bool:
    """NixOS 25.11 ships nixos-rebuild-ng as nixos-rebuild; 25.05 the bash script."""
    year, _, rest = release().partition(".")
    return (int(year), int(rest[:2])) >= (25, 11)


# -- generations ---------------------------------------------------------------


def generations() -> dict[int, str]:
    found = {}
    for entry in os.listdir(common.PROFILES):
        if entry.startswith("system-") and entry.endswith("-link"):
            number = int(entry[len("system-") : -len("-link")])
            found[number] = os.readlink(f"{common.PROFILES}/{entry}")
    return found


def current_generation() -> int:
    return int(os.readlink(common.PROFILE)[len("system-") : -len("-link")])


def set_profile(path: str) -> None:
    """`nix-env -p system --set PATH`: reuse the highest generation if it is PATH."""
    existing = generations()
    highest = max(existing, default=0)
    if existing and existing[highest] == path:
        number = highest
    else:
        number = highest + 1
        os.symlink(path, f"{common.PROFILES}/system-{number}-link")
    _point(common.PROFILE, f"system-{number}-link")


def _point(link: str, target: str) -> None:
    temporary = f"{link}.new"
    if os.path.lexists(temporary):
        os.unlink(temporary)
    os.symlink(target, temporary)
    os.replace(temporary, link)


# -- evaluation and "build" ------------------------------------------------------


def _flake_source(flake_dir: str) -> str:
    """The flake as Nix copies it: only git-tracked files when it is a git repo."""
    source = tempfile.mkdtemp(prefix="sim-flake-source-")
    listing = subprocess.run(
        ["git", "-C", flake_dir, "ls-files", "-z", "--cached"], capture_output=True
    )
    if listing.returncode == 0:
        for name in filter(None, listing.stdout.decode().split("\0")):
            if os.path.exists(f"{flake_dir}/{name}"):
                os.makedirs(os.path.dirname(f"{source}/{name}"), exist_ok=True)
                shutil.copy2(f"{flake_dir}/{name}", f"{source}/{name}")
    else:
        shutil.copytree(flake_dir, source, dirs_exist_ok=True)
    return source


def evaluate(flake: str | None) -> dict:
    hostname = os.uname().nodename
    # --read-write-mode: paths the configuration uses (launcher.jl) really land in
    # the host's store, as a build would put them there.
    command = ["nix-instantiate", "--eval", "--read-write-mode", "--strict", "--json"]
    command.append(f"{NIX_DIR}/eval-host.nix")
    if flake is not None:
        flake_dir, _, attribute = flake.partition("#")
        command += ["--arg", "flake", _flake_source(flake_dir or "/etc/nixos")]
        command += ["--argstr", "hostName", attribute or hostname]
    else:
        configuration = os.environ.get("NIXOS_CONFIG", "/etc/nixos/configuration.nix")
        if not os.path.exists(configuration):
            say(f"error: file '{configuration}' was not found in the Nix search path")
            sys.exit(1)
        command += ["--arg", "configuration", configuration]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        say(result.stderr.rstrip())
        sys.exit(1)
    config = json.loads(result.stdout)
    failed = config["failedAssertions"] + [
        message
        for c in config["containers"].values()
        for message in c["config"]["failedAssertions"]
    ]
    if failed:
        say("error:\n       Failed assertions:\n" + "\n".join(f"       - {m}" for m in failed))
        sys.exit(1)
    for warning in config["warnings"]:
        say(f"evaluation warning: {warning}")
    return config


def store_path(name: str, payload: str) -> str:
    return f"/nix/store/{hashlib.sha256(payload.encode()).hexdigest()[:32]}-{name}"


def build(config: dict) -> str:
    """The system's store path: the configuration, its containers' systems, the tools."""
    say("building the system configuration...")
    time.sleep(float(common.faults().get("rebuild_seconds", 0)))
    if common.faults().get("switch_fails"):
        say("error: builder for '/nix/store/simulated-system.drv' failed with exit code 1")
        sys.exit(1)
    with open(f"{common.CURRENT_SYSTEM}/nixos-version") as file:
        version = file.read()
    for name, container in config["containers"].items():
        container["path"] = build_container(name, container)
    for service in (config.get("hostUnits") or {}).get("services", {}).values():
        build_packages(service)
    payload = json.dumps(config, sort_keys=True)
    path = store_path(f"nixos-system-{os.uname().nodename}-{version.split()[0]}", payload)
    if not os.path.isdir(path):
        os.makedirs(path)
        common.write_file(f"{path}/config.json", payload)
        common.write_file(f"{path}/nixos-version", version)
        common.write_file(
            f"{path}/bin/switch-to-configuration",
            f"#!/bin/sh\nexec /usr/bin/python3 {SIM_DIR}/nixos_rebuild.py "
            f'--switch-to-configuration {path} "$@"\n',
            mode=0o755,
        )
        os.symlink(TOOLS, f"{path}/sw")
    return path


def attrs_to_section(attrs: dict) -> str:
    """nixos/lib/systemd-lib.nix attrsToSection: one `Name=value` line per list element."""

    def option(value) -> str:
        if value is True:
            return "true"
        if value is False:
            return "false"
        return "" if value is None else str(value)

    lines = []
    for name, value in sorted(attrs.items()):
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{name}={option(item)}\n")
    return "".join(lines)


def service_unit(service: dict, extra_unit: dict | None = None) -> str:
    """systemd-lib.nix serviceToUnit: [Unit], then Environment= lines, then serviceConfig."""
    unit = {}
    if service.get("description"):
        unit["Description"] = service["description"]
    for key, option in (("wants", "Wants"), ("after", "After"), ("requires", "Requires")):
        if service.get(key):
            unit[option] = " ".join(service[key])
    unit.update(extra_unit or {})
    environment = "".join(
        f"Environment={json.dumps(f'{k}={v}')}\n"
        for k, v in sorted((service.get("environment") or {}).items())
    )
    return (
        f"[Unit]\n{attrs_to_section(unit)}\n[Service]\n{environment}"
        f"{attrs_to_section(service.get('serviceConfig') or {})}"
    )


def _accounts(container_config: dict) -> tuple[str, str]:
    """/etc/passwd and /etc/group of a container: system accounts, then users.users."""
    users = (container_config.get("users") or {}).get("users") or {}
    groups = (container_config.get("users") or {}).get("groups") or {}
    passwd = ["root:x:0:0:System administrator:/root:/bin/sh"]
    group = ["root:x:0:"]
    # dbus in the container needs messagebus; nobody is every system's.
    passwd.append("messagebus:x:998:998::/nonexistent:/usr/sbin/nologin")
    passwd.append("nobody:x:65534:65534:Unprivileged account:/var/empty:/usr/sbin/nologin")
    group += ["messagebus:x:998:", "nogroup:x:65534:", "systemd-journal:x:997:"]
    next_gid = 990
    gids = {}
    for name, attrs in sorted(groups.items()):
        gid = (attrs or {}).get("gid")
        if gid is None:
            gid, next_gid = next_gid, next_gid - 1
        gids[name] = gid
        group.append(f"{name}:x:{gid}:")
    next_uid = 990
    for name, attrs in sorted(users.items()):
        attrs = attrs or {}
        uid = attrs.get("uid")
        if uid is None:
            uid, next_uid = next_uid, next_uid - 1
        gid = gids.get(attrs.get("group") or "nogroup", 65534)
        home = attrs.get("home") or "/var/empty"
        passwd.append(f"{name}:x:{uid}:{gid}::{home}:/run/current-system/sw/bin/nologin")
    return "\n".join(passwd) + "\n", "\n".join(group) + "\n"


def build_container(name: str, container: dict) -> str:
    """The container's system: an etc/ with its accounts and units, and its packages."""
    config = container["config"]
    files: dict[str, str] = {}
    files["passwd"], files["group"] = _accounts(config)
    files["hostname"] = ((config.get("networking") or {}).get("hostName") or name) + "\n"
    files["os-release"] = f'NAME=NixOS\nID=nixos\nVERSION_ID="{release()[:5]}"\n'
    links = {"systemd/system/default.target": "/usr/lib/systemd/system/multi-user.target"}
    for unit in CONTAINER_MASKED:
        links[f"systemd/system/{unit}"] = "/dev/null"
    for service_name, service in sorted((config.get("systemd") or {}).get("services", {}).items()):
        unit = f"{service_name}.service"
        files[f"systemd/system/{unit}"] = service_unit(service)
        for target in service.get("wantedBy") or []:
            links[f"systemd/system/{target}.wants/{unit}"] = f"../{unit}"
        build_packages(service)
    if container.get("privateNetwork"):
        # nixos-containers.nix does this in containerInit before stage 2; Debian's
        # systemd boots here, so a unit does it first.
        files["systemd/system/container-network.service"] = (
            "[Unit]\nDescription=Container network (containerInit)\n"
            "DefaultDependencies=no\nBefore=network.target network-online.target\n\n"
            "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
            "ExecStart=/bin/sh -c 'ip link set host0 name eth0 && ip link set dev eth0 up && "
            f"ip addr add {container['localAddress']} dev eth0 && "
            f"ip route add {container['hostAddress']} dev eth0 && "
            f"ip route add default via {container['hostAddress']}'\n"
        )
        links["systemd/system/sysinit.target.wants/container-network.service"] = (
            "../container-network.service"
        )
    firewall = (config.get("networking") or {}).get("firewall") or {}
    if firewall.get("enable"):
        files["sim/firewall-start"], files["sim/firewall-stop"] = firewall_scripts(firewall)
        files["systemd/system/firewall.service"] = FIREWALL_UNIT
        links["systemd/system/sysinit.target.wants/firewall.service"] = "../firewall.service"
    payload = json.dumps([files, links], sort_keys=True)
    path = store_path(f"nixos-system-{name}", payload)
    if not os.path.isdir(path):
        for relative, content in files.items():
            common.write_file(f"{path}/etc/{relative}", content)
        for relative, target in links.items():
            os.makedirs(os.path.dirname(f"{path}/etc/{relative}"), exist_ok=True)
            os.symlink(target, f"{path}/etc/{relative}")
    return path


# nixpkgs @ nixos-25.05 nixos/modules/services/networking/firewall-iptables.nix:
# systemd.services.firewall and its startScript/stopScript. Simpler: IPv4 only (the
# sim's containers have no IPv6), no reverse-path filter and no logging chains.
FIREWALL_UNIT = (
    "[Unit]\nDescription=Firewall\nDefaultDependencies=no\nWants=network-pre.target\n"
    "Before=network-pre.target shutdown.target\nConflicts=shutdown.target\n"
    "ConditionCapability=CAP_NET_ADMIN\n\n"
    "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
    "ExecStart=/bin/sh -e /etc/sim/firewall-start\nExecStop=/bin/sh /etc/sim/firewall-stop\n"
)


# The unit's `path = [ cfg.package ]`: Debian's iptables, called by its real name
# because /usr/sbin/iptables goes through /etc/alternatives, which a container lacks.
IPTABLES = 'iptables() { /usr/sbin/xtables-nft-multi iptables "$@"; }'


def firewall_scripts(firewall: dict) -> tuple[str, str]:
    """firewall-start and firewall-stop of the iptables backend, from networking.firewall."""
    start = [
        IPTABLES,
        "iptables -D INPUT -j nixos-fw 2> /dev/null || true",
        "for chain in nixos-fw nixos-fw-accept nixos-fw-refuse; do",
        '  iptables -F "$chain" 2> /dev/null || true',
        '  iptables -X "$chain" 2> /dev/null || true',
        "done",
        "iptables -N nixos-fw-accept",
        "iptables -A nixos-fw-accept -j ACCEPT",
        "iptables -N nixos-fw-refuse",
    ]
    if firewall.get("rejectPackets"):
        start += [
            "iptables -A nixos-fw-refuse -p tcp ! --syn -j REJECT --reject-with tcp-reset",
            "iptables -A nixos-fw-refuse -j REJECT",
        ]
    else:
        start.append("iptables -A nixos-fw-refuse -j DROP")
    start += [
        "iptables -N nixos-fw",
        "iptables -A nixos-fw -i lo -j nixos-fw-accept",  # trustedInterfaces = [ "lo" ]
        "iptables -A nixos-fw -m conntrack --ctstate ESTABLISHED,RELATED -j nixos-fw-accept",
    ]
    for port in firewall.get("allowedTCPPorts") or []:
        start.append(f"iptables -A nixos-fw -p tcp --dport {int(port)} -j nixos-fw-accept")
    if firewall.get("allowPing", True):
        start.append("iptables -w -A nixos-fw -p icmp --icmp-type echo-request -j nixos-fw-accept")
    start.append(firewall.get("extraCommands") or "")
    start += ["iptables -A nixos-fw -j nixos-fw-refuse", "iptables -A INPUT -j nixos-fw"]
    stop = [IPTABLES, "iptables -D INPUT -j nixos-fw 2>/dev/null || true"]
    stop.append(firewall.get("extraStopCommands") or "")
    return "\n".join(start) + "\n", "\n".join(stop) + "\n"


def build_packages(service: dict) -> None:
    """Build the package ExecStart names: Julia runs the stand-in Pluto; python3 and
    systemd's programs are the machine's own."""
    command = (service.get("serviceConfig") or {}).get("ExecStart") or ""
    program = shlex.split(command)[0] if command else ""
    if not program.startswith("/nix/store/") or os.path.exists(program):
        return
    package = os.path.basename(os.path.dirname(os.path.dirname(program)))
    if program.endswith("/bin/julia"):
        wrapper = f'exec /usr/bin/python3 {SIM_DIR}/pluto.py "$0" "$@"'
    elif "-python3-" in package or "-systemd-" in package:
        wrapper = f'exec /usr/bin/{os.path.basename(program)} "$@"'
    else:
        return
    common.write_file(program, f"#!/bin/sh\n{wrapper}\n", mode=0o755)


# -- activation (switch-to-configuration) -----------------------------------------


def container_unit(name: str, container: dict, limits: dict, state_version: str | None) -> str:
    """container@NAME.service as nixos-containers.nix renders it (nixpkgs @ 00ef614e).

    Differences, all sim: Debian's systemd boots in the container (`-b`, /usr bound
    read-only) instead of NixOS's stage 2, and the fault switches are bound at
    /run/sim-host.
    """
    conf_dir, state_dir = common.container_dirs(state_version)
    ephemeral = bool(container.get("ephemeral"))
    root = f"/run/{os.path.basename(state_dir)}/{name}" if ephemeral else f"{state_dir}/{name}"
    mounts = container.get("bindMounts") or {}
    unit = {
        "Description": f"Container '{name}'",
        "After": "network.target",
        "Wants": "network.target",
        "RequiresMountsFor": " ".join(
            [state_dir] + [m.get("hostPath") or point for point, m in sorted(mounts.items())]
        ),
    }
    if container.get("autoStart") and container.get("restartIfChanged", True) is not False:
        conf_hash = hashlib.sha256(container_conf(container).encode()).hexdigest()[:32]
        unit["X-Restart-Triggers"] = f"{container['path']} {conf_hash}"
    else:
        unit["X-RestartIfChanged"] = False
    nspawn = [
        "/usr/bin/systemd-nspawn", "--keep-unit", "-M", name, "-D", root,
        "$EXTRA_NSPAWN_FLAGS", "--notify-ready=yes", "--kill-signal=SIGRTMIN+3",
        "--bind-ro=/nix/store", "--bind-ro=/usr", "--bind-ro=/etc/sim:/run/sim-host",
    ]  # fmt: skip
    if container.get("privateNetwork"):
        nspawn.append("--network-veth")
    nspawn.append("--ephemeral" if ephemeral else "--link-journal=try-guest")
    nspawn.append("--boot")
    service = {
        # sim: nspawn picks the guest's cgroup mode from the systemd version it finds
        # under ROOT/usr, which is empty until /usr is bound; without this it falls back
        # to the legacy name=systemd hierarchy, which is the machine's, not the host's.
        "Environment": [
            f'"INSTANCE={name}"',
            f'"root={root}"',
            '"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1"',
        ],
        "EnvironmentFile": f"-{conf_dir}/%i.conf",
        "ExecStartPre": f"{TOOLS}/bin/container-start prepare",
        "ExecStart": " ".join(nspawn),
        "ExecStartPost": f"{TOOLS}/bin/container-start host-network",
        "SyslogIdentifier": "container %i",
        "Type": "notify",
        "RestartForceExitStatus": "133",
        "SuccessExitStatus": "133",
        "TimeoutStartSec": "1min",
        "Restart": "on-failure",
        "Slice": "machine.slice",
        "Delegate": True,
        "KillMode": "mixed",
        "KillSignal": "TERM",
        "DevicePolicy": "closed",
    }
    if ephemeral:
        service["RuntimeDirectory"] = f"{os.path.basename(state_dir)}/%i"
    service.update(limits)
    return f"[Unit]\n{attrs_to_section(unit)}\n[Service]\n{attrs_to_section(service)}"


def container_conf(container: dict) -> str:
    """/etc/nixos-containers/NAME.conf as nixos-containers.nix writes it."""
    lines = [f"SYSTEM_PATH={container.get('path', '')}", "COPY_RESOLV_CONF=1"]
    if container.get("privateNetwork"):
        lines += [
            "PRIVATE_NETWORK=1",
            f"HOST_ADDRESS={container.get('hostAddress') or ''}",
            f"LOCAL_ADDRESS={container.get('localAddress') or ''}",
        ]
    lines += ["PRIVATE_USERS=no", 'INTERFACES=""', 'MACVLANS=""']
    if container.get("autoStart"):
        lines.append("AUTO_START=1")
    flags = ""
    for point, mount in sorted((container.get("bindMounts") or {}).items()):
        point = mount.get("mountPoint") or point
        host_path = mount.get("hostPath") or point
        flag = "--bind-ro" if mount.get("isReadOnly", True) is not False else "--bind"
        flags += f" {flag}={host_path}:{point}"
    lines.append(f'EXTRA_NSPAWN_FLAGS="{flags}"')
    return "\n".join(lines) + "\n"


def managed_units(system: dict) -> dict[str, tuple[str, str, bool]]:
    """unit -> (unit file text, .conf text, autoStart) for every declared container."""
    units = {}
    state_version = system.get("stateVersion")
    for name, container in (system.get("containers") or {}).items():
        limits = ((system.get("units") or {}).get(f"container@{name}") or {}).get(
            "serviceConfig"
        ) or {}
        text = container_unit(name, container, limits, state_version)
        units[f"container@{name}.service"] = (text, container_conf(container), container)
    return units


# nixos/modules/misc/ids.nix: uids.nginx = 60, gids.nginx = 60.
NGINX_ID = 60


def section_unit(config: dict, kind: str, section: dict) -> str:
    """A [Unit] and one more section ([Socket], [Timer]), as systemd-lib.nix renders them."""
    unit = {"Description": config["description"]} if config.get("description") else {}
    return f"[Unit]\n{attrs_to_section(unit)}\n[{kind}]\n{attrs_to_section(section or {})}"


def nginx_conf(nginx: dict) -> str:
    """nginx.conf as nixpkgs' nginx module writes it, for the options used here.

    nixpkgs @ nixos-25.05 nixos/modules/services/web-servers/nginx/default.nix:
    `configFile` (user, the $connection_upgrade map of commonHttpConfig), `vhosts`
    (forceSSL: a port-80 server that redirects; listen on 0.0.0.0 and [::]; ACME
    certificates under /var/lib/acme/<host>/) and `mkLocations` (proxy_pass, the
    three proxyWebsockets lines, return, extraConfig). Sim: Debian's nginx, so the
    mime types and temp paths are Debian's, and the master runs as root.
    """
    user = nginx.get("user") or "nginx"
    group = nginx.get("group") or "nginx"
    servers = []
    for host, vhost in sorted((nginx.get("virtualHosts") or {}).items()):
        ssl = bool(vhost.get("forceSSL") or vhost.get("onlySSL") or vhost.get("addSSL"))
        if vhost.get("enableACME"):
            certificate = f"/var/lib/acme/{host}/fullchain.pem"
            key = f"/var/lib/acme/{host}/key.pem"
        else:
            certificate, key = vhost.get("sslCertificate"), vhost.get("sslCertificateKey")
        locations = ""
        for path, location in sorted((vhost.get("locations") or {}).items()):
            lines = []
            if location.get("proxyPass"):
                lines.append(f"proxy_pass {location['proxyPass']};")
            if location.get("proxyWebsockets"):
                lines += [
                    "proxy_http_version 1.1;",
                    "proxy_set_header Upgrade $http_upgrade;",
                    "proxy_set_header Connection $connection_upgrade;",
                ]
            if location.get("return"):
                lines.append(f"return {location['return']};")
            if location.get("extraConfig"):
                lines.append(location["extraConfig"])
            body = "".join(f"    {line}\n" for line in lines)
            locations += f"  location {path} {{\n{body}  }}\n"
        if vhost.get("forceSSL"):
            servers.append(
                f"server {{\n  listen 0.0.0.0:80 ;\n  listen [::]:80 ;\n  server_name {host} ;\n"
                "  location / {\n    return 301 https://$host$request_uri;\n  }\n}\n"
            )
        ports = "443 ssl" if ssl else "80"
        tls = f"  ssl_certificate {certificate};\n  ssl_certificate_key {key};\n" if ssl else ""
        servers.append(
            f"server {{\n  listen 0.0.0.0:{ports} ;\n  listen [::]:{ports} ;\n"
            f"  server_name {host} ;\n{tls}{locations}}}\n"
        )
    return (
        f"pid /run/nginx/nginx.pid;\nerror_log stderr;\ndaemon off;\nuser {user} {group};\n"
        "events {\n}\nhttp {\n  include /etc/nginx/mime.types;\n"
        "  client_body_temp_path /var/cache/nginx/client_body;\n"
        "  proxy_temp_path /var/cache/nginx/proxy;\n"
        "  fastcgi_temp_path /var/cache/nginx/fastcgi;\n"
        "  uwsgi_temp_path /var/cache/nginx/uwsgi;\n"
        "  scgi_temp_path /var/cache/nginx/scgi;\n"
        "  access_log /var/log/nginx/access.log;\n"
        "  map $http_upgrade $connection_upgrade {\n    default upgrade;\n    '' close;\n  }\n"
        + "".join(servers)
        + "}\n"
    )


def host_units(system: dict) -> dict[str, tuple[str, list[str]]]:
    """unit -> (text, wantedBy) of the host's own services, sockets, timers and nginx."""
    declared = system.get("hostUnits") or {}
    units = {}
    for name, service in (declared.get("services") or {}).items():
        units[f"{name}.service"] = (service_unit(service), service.get("wantedBy") or [])
    for name, socket in (declared.get("sockets") or {}).items():
        text = section_unit(socket, "Socket", socket.get("socketConfig"))
        units[f"{name}.socket"] = (text, socket.get("wantedBy") or [])
    for name, timer in (declared.get("timers") or {}).items():
        text = section_unit(timer, "Timer", timer.get("timerConfig"))
        units[f"{name}.timer"] = (text, timer.get("wantedBy") or [])
    nginx = system.get("nginx") or {}
    if nginx.get("enable"):
        conf = nginx_conf(nginx)
        path = store_path("nginx.conf", conf)
        if not os.path.exists(path):
            common.write_file(path, conf)
        command = f"/usr/sbin/nginx -c {path}"
        service = {
            "description": "Nginx Web Server",
            "after": ["network.target"],
            "serviceConfig": {
                "ExecStartPre": f"{command} -t",
                "ExecStart": command,
                "ExecReload": [f"{command} -t", "/bin/kill -HUP $MAINPID"],
                "Restart": "always",
                "RestartSec": "10s",
                "RuntimeDirectory": "nginx",
                "CacheDirectory": "nginx",
                "LogsDirectory": "nginx",
            },
        }
        units["nginx.service"] = (service_unit(service), ["multi-user.target"])
    return units


def apply_nat(system: dict) -> None:
    """nixpkgs @ nixos-25.05 nixos/modules/services/networking/nat.nix: with
    networking.nat.enable, boot.kernel.sysctl turns on IPv4 forwarding, which
    systemd-sysctl applies at activation and nothing turns off again before a reboot.
    Simpler: no MASQUERADE rules (nat-iptables.nix); the sim has no external interface.
    """
    if (system.get("nat") or {}).get("enable"):
        for scope in ("all", "default"):
            with open(f"/proc/sys/net/ipv4/conf/{scope}/forwarding", "w") as file:
                file.write("1\n")


def add_nginx_account(system: dict) -> None:
    """users-groups.nix: the nginx module declares users.users.nginx and groups.nginx."""
    nginx = system.get("nginx") or {}
    if not nginx.get("enable") or nginx.get("user") not in (None, "nginx"):
        return
    # The image's own account with that id (Debian's games group) gives way, as on
    # NixOS, where the id belongs to nginx.
    for path, line in (
        ("/etc/group", f"nginx:x:{NGINX_ID}:\n"),
        ("/etc/passwd", f"nginx:x:{NGINX_ID}:{NGINX_ID}::/var/empty:/usr/sbin/nologin\n"),
    ):
        with open(path) as file:
            entries = [entry for entry in file if entry.split(":")[2:3] != [str(NGINX_ID)]]
        if line not in entries:
            entries.append(line)
        common.write_file(path, "".join(entries))


def active_units() -> set[str]:
    listing = systemctl("list-units", "--plain", "--no-legend", "--state=active,activating")
    return {line.split()[0] for line in listing.stdout.splitlines() if line.strip()}


def settle(timeout: float = 30) -> None:
    """Wait until no job runs and no unit waits to restart (main.rs waits for D-Bus to go quiet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = systemctl("list-jobs", "--no-legend").stdout.strip()
        restarting = systemctl(
            "list-units", "--no-legend", "--all", "--state=auto-restart"
        ).stdout.strip()
        if not jobs and not restarting:
            return
        time.sleep(0.2)


def failed_units() -> list[str]:
    """Failed units, and units auto-restarting after a non-zero exit (main.rs)."""
    settle()
    failed = []
    listing = systemctl("list-units", "--plain", "--no-legend", "--all")
    for line in listing.stdout.splitlines():
        words = line.split()
        if len(words) < 4:
            continue
        unit, _, active, sub = words[:4]
        if active == "failed":
            failed.append(unit)
        elif sub == "auto-restart":
            status = systemctl("show", "-p", "ExecMainStatus", "--value", unit).stdout.strip()
            if status not in ("", "0"):
                failed.append(unit)
    return sorted(failed)


def switch_to_configuration(old_system: dict, new_path: str) -> int:
    new_system = common.read_json(f"{new_path}/config.json", {})
    old_units, new_units = managed_units(old_system), managed_units(new_system)
    old_host, new_host = host_units(old_system), host_units(new_system)
    active_before = active_units()
    to_stop, to_start = [], []
    for unit, (text, _, _) in sorted(old_units.items()):
        if unit not in active_before:
            continue
        if unit not in new_units:
            to_stop.append(unit)
        elif new_units[unit][0] != text and "X-RestartIfChanged=false" not in new_units[unit][0]:
            to_stop.append(unit)
            to_start.append(unit)
    for unit, (text, _) in sorted(old_host.items()):
        if unit in active_before and (unit not in new_host or new_host[unit][0] != text):
            to_stop.append(unit)
            if unit in new_host:
                to_start.append(unit)
    # New host units that a target wants (sockets, timers, nginx) start with it.
    wanted_new = sorted(u for u, (_, wanted) in new_host.items() if u not in old_host and wanted)
    if to_stop:
        say(f"stopping the following units: {', '.join(to_stop)}")
        systemctl("stop", *to_stop)
    say("activating the configuration...")
    apply_nat(new_system)
    add_nginx_account(new_system)
    write_units(old_units, new_units, new_system.get("stateVersion"))
    write_host_units(old_host, new_host)
    _point(common.CURRENT_SYSTEM, new_path)
    systemctl("daemon-reload", check=True)
    if to_start:
        say(f"starting the following units: {', '.join(to_start)}")
        systemctl("start", *to_start)
    # Starting the active targets brings up what they newly want (autoStart containers).
    systemctl("start", "machines.target", *wanted_new)
    started = sorted(active_units() - active_before - set(to_start))
    started = [unit for unit in started if unit.endswith(".service")]
    if started:
        say(f"the following new units were started: {', '.join(started)}")
    failed = failed_units()
    subprocess.run(
        ["logger", "-t", "nixos", f"switching to system configuration {new_path}"], check=False
    )
    if failed:
        say(f"warning: the following units failed: {', '.join(failed)}")
        status = systemctl("status", "--no-pager", "--full", *failed)
        say(status.stdout.rstrip())
        return 4
    return 0


def write_units(old_units: dict, new_units: dict, state_version: str | None) -> None:
    conf_dir, _ = common.container_dirs(state_version)
    wants = f"{common.UNITS}/machines.target.wants"
    os.makedirs(wants, exist_ok=True)
    for unit in set(old_units) - set(new_units):
        name = unit[len("container@") : -len(".service")]
        for path in (f"{common.UNITS}/{unit}", f"{wants}/{unit}", f"{conf_dir}/{name}.conf"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    for unit, (text, conf, container) in new_units.items():
        name = unit[len("container@") : -len(".service")]
        common.write_file(f"{common.UNITS}/{unit}", text)
        common.write_file(f"{conf_dir}/{name}.conf", conf)
        if container.get("autoStart") and not os.path.lexists(f"{wants}/{unit}"):
            os.symlink(f"../{unit}", f"{wants}/{unit}")
        elif not container.get("autoStart") and os.path.lexists(f"{wants}/{unit}"):
            os.unlink(f"{wants}/{unit}")


def write_host_units(old_units: dict, new_units: dict) -> None:
    for unit in set(old_units) - set(new_units):
        for path in [f"{common.UNITS}/{unit}"] + [
            f"{common.UNITS}/{target}.wants/{unit}" for target in old_units[unit][1]
        ]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    for unit, (text, wanted) in new_units.items():
        common.write_file(f"{common.UNITS}/{unit}", text)
        for target in wanted:
            link = f"{common.UNITS}/{target}.wants/{unit}"
            if not os.path.lexists(link):
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink(f"../{unit}", link)


# -- the command line ------------------------------------------------------------


def finish(code: int, path: str, action: str) -> int:
    """How each release's nixos-rebuild reports a failed switch-to-configuration."""
    if code == 0:
        return 0
    if is_ng():
        say(
            f"Command 'systemd-run -E LOCALE_ARCHIVE --collect --no-ask-password --pipe --quiet "
            f"--service-type=exec --unit=nixos-rebuild-switch-to-configuration --wait "
            f"{path}/bin/switch-to-configuration {action}' returned non-zero exit status {code}."
        )
        return code
    say("warning: error(s) occurred while switching to the new configuration")
    return 1


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if argv[:1] == ["--switch-to-configuration"]:
        # SYSTEM/bin/switch-to-configuration ACTION of a system in the store.
        path, action = argv[1], argv[2] if len(argv) > 2 else ""
        if action not in ("switch", "test"):
            say(f"switch-to-configuration: unsupported action '{action}' (sim)")
            return 1
        return switch_to_configuration(common.current_config(), path)
    actions = {"switch", "boot", "test", "build", "dry-build", "dry-run", "dry-activate"}
    actions.add("list-generations")
    action = next((a for a in argv if a in actions), None)
    if action is None:
        say(f"usage: nixos-rebuild [{'|'.join(sorted(actions))}] ...")
        return 1
    flake = None
    if "--flake" in argv:
        index = argv.index("--flake")
        following = argv[index + 1] if index + 1 < len(argv) else ""
        flake = following if following and not following.startswith("-") else "/etc/nixos"
    elif os.path.exists("/etc/nixos/flake.nix") and "--no-flake" not in argv:
        flake = "/etc/nixos"

    if action == "list-generations":
        current = current_generation()
        for number, path in sorted(generations().items()):
            mark = "  current" if number == current else ""
            built = os.lstat(f"{common.PROFILES}/system-{number}-link").st_mtime
            date = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(built))
            print(f"{number:>10}  {date}  {os.path.basename(path)}{mark}")
        return 0
    if action in ("switch", "boot", "test") and os.geteuid() != 0:
        say(f"error: opening lock file '{common.PROFILE}.lock': Permission denied")
        return 1
    old_system = common.current_config()

    if "--rollback" in argv:
        if action not in ("switch", "boot"):
            say(f"error: --rollback is incompatible with '{action}'")
            return 1
        older = [n for n in generations() if n < current_generation()]
        if not older:
            say(f"error: no generation older than the current ({current_generation()}) exists")
            return 1
        say(f"switching profile from version {current_generation()} to {max(older)}")
        _point(common.PROFILE, f"system-{max(older)}-link")
        path = generations()[max(older)]
        if action == "boot":
            return 0
        return finish(switch_to_configuration(old_system, path), path, action)

    config = evaluate(flake)
    if action in ("dry-build", "dry-run"):
        say("building the system configuration...")
        return 0
    path = build(config)
    if action == "build":
        return 0
    if action == "dry-activate":
        say("would activate the configuration...")
        return 0
    if action in ("switch", "boot"):
        set_profile(path)
    if action in ("switch", "test"):
        return finish(switch_to_configuration(old_system, path), path, action)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
