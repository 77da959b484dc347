"""Shared paths and helpers of the simulated NixOS host's stand-ins (run by /usr/bin/python3).

Where things live on the simulated host, as on NixOS unless marked "sim":

    /run/current-system/config.json   the evaluated configuration (sim; NixOS
                                      keeps the built system here instead)
    /nix/var/nix/profiles/system-N-link  generations
    /etc/nixos-containers/NAME.conf   container environment file
    /var/lib/nixos-containers/NAME    container root (persistent state)
    /run/nixos-containers/NAME        container root when ephemeral
    /etc/containers, /var/lib/containers  the same on hosts older than 22.05
    /etc/sim/faults.json              fault switches set by tests (sim)
    /var/log/sim/                     command and exec logs for tests (sim)

Units, their state and the journals are real systemd's.
"""

from __future__ import annotations

import json
import os

FAULTS = "/etc/sim/faults.json"
CURRENT_SYSTEM = "/run/current-system"
PROFILE = "/nix/var/nix/profiles/system"
PROFILES = "/nix/var/nix/profiles"
UNITS = "/etc/systemd/system"


def read_json(path: str, default=None):
    try:
        with open(path) as file:
            return json.load(file)
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def write_file(path: str, content: str, mode: int = 0o644) -> None:
    """Replace `path` atomically, so readers never see half a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as file:
        file.write(content)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def faults() -> dict:
    return read_json(FAULTS, {}) or {}


def current_config() -> dict:
    return read_json(f"{CURRENT_SYSTEM}/config.json", {}) or {}


def container_dirs(state_version: str | None) -> tuple[str, str]:
    """(configuration directory, state directory) of declarative containers.

    nixos-containers.nix: `configurationPrefix = optionalString (versionAtLeast
    config.system.stateVersion "22.05") "nixos-"` (nixpkgs @ 00ef614e,
    nixos/modules/virtualisation/nixos-containers.nix).
    """
    major, _, minor = (state_version or "25.05").partition(".")
    prefix = "nixos-" if (int(major), int(minor or 0)) >= (22, 5) else ""
    return f"/etc/{prefix}containers", f"/var/lib/{prefix}containers"


def find_container_conf(name: str) -> str | None:
    for directory in ("/etc/nixos-containers", "/etc/containers"):
        if os.path.exists(f"{directory}/{name}.conf"):
            return f"{directory}/{name}.conf"
    return None


def read_conf(path: str) -> dict:
    """KEY=VALUE lines of a container's .conf, quotes removed like systemd's EnvironmentFile."""
    values = {}
    with open(path) as file:
        for line in file:
            key, _, value = line.strip().partition("=")
            if key:
                values[key] = value.strip().strip('"')
    return values
