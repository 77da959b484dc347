"""The files deploy pushes into the module directory, rendered from the settings."""

from __future__ import annotations

import json
from pathlib import Path

from .settings import Settings

# Installed, files/ is package data (pluto_deploy/files, see pyproject.toml); in a
# checkout it is the repository's files/.
_INSTALLED = Path(__file__).resolve().parent / "files"
FILES = _INSTALLED if _INSTALLED.is_dir() else Path(__file__).resolve().parent.parent / "files"
STATIC_FILES = ("default.nix", "module.nix", "launcher.jl", "gate.py")
SETTINGS_FILE = "settings.json"
FILE_NAMES = [*STATIC_FILES, SETTINGS_FILE]


def module_settings(settings: Settings, state_version: str) -> dict:
    """settings.json: option values of services.pluto (files/module.nix), data only."""
    return {
        "enable": True,
        "containerName": settings.container,
        "port": settings.port,
        "dataDir": settings.data_dir,
        "secretDir": settings.secret_dir,
        "uid": settings.uid,
        "gid": settings.gid,
        "memoryMax": settings.memory_max,
        "memoryHigh": settings.memory_high,
        "cpuQuota": settings.cpu_quota,
        "tasksMax": settings.tasks_max,
        "installMode": settings.install_mode,
        "plutoVersion": settings.pluto_version,
        "juliaPackage": settings.julia_package,
        "privateNetwork": settings.private_network,
        "hostAddress": settings.host_address,
        "localAddress": settings.local_address,
        "ephemeral": settings.ephemeral,
        "stateVersion": state_version,
        "hardeningExceptions": list(settings.hardening_exceptions),
    }


def render(settings: Settings, state_version: str) -> dict[str, bytes]:
    """File name -> content, exactly as it must be on the host."""
    files = {name: (FILES / name).read_bytes() for name in STATIC_FILES}
    text = json.dumps(module_settings(settings, state_version), indent=2, sort_keys=True)
    files[SETTINGS_FILE] = (text + "\n").encode()
    return files
