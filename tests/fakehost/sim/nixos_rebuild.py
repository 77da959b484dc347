"""Stand-in for nixos-rebuild (nixos-rebuild-ng) and switch-to-configuration.

Follows nixos.md §7 and §2.4:
* The configuration is /etc/nixos/configuration.nix (or $NIXOS_CONFIG), or,
  when /etc/nixos/flake.nix exists (or --flake is given), that flake's
  nixosConfigurations.<hostname>; for a flake in a git repository only files
  known to git are visible, like Nix's copy of the flake source (§7.5).
* It is evaluated with real Nix (nix-instantiate, through the mini module
  system in ../nix), so syntax and evaluation errors are Nix's own, exit 1.
  Failed assertions print "Failed assertions:" and exit 1.
* switch and boot make a new generation (system-N-link) *before* activating;
  an identical system adds no generation; `--rollback` moves the profile back
  one generation and activates it (§7.4).
* Activation: containers with autoStart are started when new and restarted
  when their configuration changed (restartIfChanged); without autoStart a
  running container is left alone (§2.4); removed containers are stopped. A
  unit that fails to start gives "warning: the following units failed: ...",
  its status, and exit code 4 (§7.3). Activation ignores SIGHUP and a closed
  terminal, as the real one runs as a transient unit that survives the SSH
  session (§7.2).
Simpler than the real thing: nothing is built; the "system" in the store is
the evaluated configuration as JSON plus the stand-in tools.
Fault switches: switch_fails (evaluation error), rebuild_seconds (build time).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import common
import container
import systemctl

SIM_DIR = os.path.dirname(os.path.abspath(__file__))
NIX_DIR = os.path.join(os.path.dirname(SIM_DIR), "nix")
PROFILES = "/nix/var/nix/profiles"


def say(text: str) -> None:
    """Write to the terminal if there still is one (the session may be gone)."""
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr, flush=True)


def generations() -> dict[int, str]:
    found = {}
    for entry in os.listdir(PROFILES):
        if entry.startswith("system-") and entry.endswith("-link"):
            found[int(entry[len("system-") : -len("-link")])] = os.readlink(f"{PROFILES}/{entry}")
    return found


def current_generation() -> int:
    return int(os.readlink(common.PROFILE)[len("system-") : -len("-link")])


def _flake_source(flake_dir: str) -> str:
    """The flake as Nix copies it: only git-tracked files when it is a git repo."""
    source = tempfile.mkdtemp(prefix="sim-flake-source-", dir="/run/sim")
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
    command = [
        "nix-instantiate",
        "--eval",
        "--read-write-mode",
        "--strict",
        "--json",
        f"{NIX_DIR}/eval-host.nix",
    ]
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
    if common.faults().get("switch_fails"):
        say("error: builder for '/nix/store/simulated-system.drv' failed with exit code 1")
        sys.exit(1)
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


def build(config: dict) -> str:
    """A store path for the system: the evaluated configuration and the tools."""
    say("building the system configuration...")
    time.sleep(float(common.faults().get("rebuild_seconds", 0)))
    payload = json.dumps(config, sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:32]
    with open(f"{common.CURRENT_SYSTEM}/nixos-version") as file:
        version = file.read().strip()
    path = f"/nix/store/{digest}-nixos-system-{os.uname().nodename}-{version.split()[0]}"
    if not os.path.isdir(path):
        os.makedirs(path)
        with open(f"{path}/config.json", "w") as file:
            file.write(payload)
        shutil.copy(f"{common.CURRENT_SYSTEM}/nixos-version", f"{path}/nixos-version")
        os.symlink(os.readlink(f"{common.CURRENT_SYSTEM}/sw"), f"{path}/sw")
    return path


def set_profile(path: str) -> None:
    existing = generations()
    if existing and existing[current_generation()] == path:
        return
    number = max(existing, default=0) + 1
    os.symlink(path, f"{PROFILES}/system-{number}-link")
    _point(common.PROFILE, f"system-{number}-link")


def _point(link: str, target: str) -> None:
    temporary = f"{link}.new"
    if os.path.lexists(temporary):
        os.unlink(temporary)
    os.symlink(target, temporary)
    os.replace(temporary, link)


def _container_conf(config: dict) -> str:
    """/etc/nixos-containers/NAME.conf as nixos-containers.nix writes it (§1.5)."""
    lines = ["SYSTEM_PATH=/nix/var/nix/profiles/per-container", "COPY_RESOLV_CONF=1"]
    if config["privateNetwork"]:
        lines += [
            "PRIVATE_NETWORK=1",
            f"HOST_ADDRESS={config['hostAddress'] or ''}",
            f"LOCAL_ADDRESS={config['localAddress'] or ''}",
        ]
    lines += ["PRIVATE_USERS=no", 'INTERFACES=""', 'MACVLANS=""']
    if config["autoStart"]:
        lines.append("AUTO_START=1")
    flags = " ".join(
        ("--bind-ro=" if m["isReadOnly"] else "--bind=") + f"{m['hostPath']}:{point}"
        for point, m in sorted(config["bindMounts"].items())
    )
    lines.append(f'EXTRA_NSPAWN_FLAGS="{flags}"')
    return "\n".join(lines) + "\n"


def activate(old_system: dict, new_path: str) -> int:
    with open(f"{new_path}/config.json") as file:
        new_system = json.load(file)
    say("activating the configuration...")
    names = set(old_system.get("containers") or {}) | set(new_system.get("containers") or {})
    plans = {"stopping": [], "starting": [], "restarting": []}
    for name in sorted(names):
        unit = f"container@{name}.service"
        old = container.effective_config(name, old_system)
        new = container.effective_config(name, new_system)
        running = systemctl._state(unit) in ("active", "activating")
        if new is None:
            if running:
                plans["stopping"].append(unit)
        elif not running and new["autoStart"]:
            plans["starting"].append(unit)
        elif running and old != new and new["autoStart"] and new["restartIfChanged"]:
            plans["restarting"].append(unit)

    for unit in plans["stopping"] + plans["restarting"]:
        systemctl.stop(unit)
    os.makedirs(common.CONTAINER_CONFS, exist_ok=True)
    for entry in os.listdir(common.CONTAINER_CONFS):
        if entry.endswith(".conf") and entry[:-5] not in (new_system.get("containers") or {}):
            os.unlink(f"{common.CONTAINER_CONFS}/{entry}")
    for name in new_system.get("containers") or {}:
        with open(f"{common.CONTAINER_CONFS}/{name}.conf", "w") as file:
            file.write(_container_conf(container.effective_config(name, new_system)))
    _point(common.CURRENT_SYSTEM, new_path)

    for verb, planned in plans.items():
        if planned:
            say(f"{verb} the following units: {', '.join(planned)}")
    failed = []
    for unit in plans["starting"] + plans["restarting"]:
        if systemctl.start(unit) != 0:
            failed.append(unit)
    common.journal_append(
        common.HOST_JOURNAL,
        f"switching to system configuration {new_path}",
        SYSLOG_IDENTIFIER="nixos",
    )
    if failed:
        say(f"warning: the following units failed: {', '.join(failed)}")
        for unit in failed:
            properties = systemctl.container_properties(unit)
            say(systemctl.units.status(unit, properties, systemctl._journal_tail(unit)).rstrip())
        say("warning: error(s) occurred while switching to the new configuration")
        return 4
    return 0


def main(argv: list[str]) -> int:
    # The real activation runs as a transient unit and outlives the SSH session.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    actions = {
        "switch",
        "boot",
        "test",
        "build",
        "dry-build",
        "dry-run",
        "dry-activate",
        "list-generations",
    }
    action = next((a for a in argv if a in actions), None)
    if action is None:
        say(f"usage: nixos-rebuild [{'|'.join(sorted(actions))}] ...")
        return 1
    rollback = "--rollback" in argv
    flake = None
    if "--flake" in argv:
        index = argv.index("--flake")
        flake = (
            argv[index + 1]
            if index + 1 < len(argv) and not argv[index + 1].startswith("-")
            else "/etc/nixos"
        )
    elif os.path.exists("/etc/nixos/flake.nix") and "--no-flake" not in argv:
        flake = "/etc/nixos"

    if action == "list-generations":
        current = current_generation()
        for number, path in sorted(generations().items()):
            mark = "  current" if number == current else ""
            built = os.lstat(f"{PROFILES}/system-{number}-link").st_mtime
            date = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(built))
            print(f"{number:>10}  {date}  {os.path.basename(path)}{mark}")
        return 0
    if action in ("switch", "boot", "test") and os.geteuid() != 0:
        say(f"error: opening lock file '{common.PROFILE}.lock': Permission denied")
        return 1
    old_system = common.current_config()

    if rollback:
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
        return activate(old_system, path) if action == "switch" else 0

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
        return activate(old_system, path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
