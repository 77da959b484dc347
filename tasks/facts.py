"""Read the host's state in one remote command; parse it into HostFacts."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from . import remote
from .connection import run_as_root
from .settings import Settings


@dataclass(frozen=True)
class Stat:
    kind: str
    uid: int
    gid: int
    mode: str

    @property
    def owner(self) -> str:
        return f"{self.uid}:{self.gid}"


@dataclass(frozen=True)
class HostFacts:
    now: int = 0
    nixos: bool = False
    nixos_version: str = ""
    hostname: str = ""
    git: bool = False
    flake_dir: str | None = None
    flake_git: bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    tracked: frozenset[str] = frozenset()
    stats: dict[str, Stat] = field(default_factory=dict)
    secret: str | None = None
    uid_owner: str = ""
    gid_owner: str = ""
    container_declared: bool = False
    container_state: str = "inactive"
    pluto_state: str = ""
    cursor: str | None = None

    @property
    def release(self) -> str:
        """The NixOS release, e.g. 25.05 from "25.05.20250612.6c62cf2 (Warbler)"."""
        return ".".join(self.nixos_version.split(".")[:2])

    def module_file(self, name: str) -> bytes | None:
        return self.files.get(f"module:{name}")

    @property
    def deployed_settings(self) -> dict:
        content = self.module_file("settings.json")
        try:
            return json.loads(content) if content else {}
        except ValueError:
            return {}

    @property
    def pluto_active(self) -> bool:
        return self.container_state == "active" and self.pluto_state.startswith("active")


def parse(output: str) -> HostFacts:
    values: dict = {"files": {}, "stats": {}}
    tracked = set()
    for line in output.splitlines():
        if line.startswith("file:"):
            # file:NAME:BASE64, where NAME may hold a colon ("module:default.nix")
            name, _, encoded = line[len("file:") :].rpartition(":")
            values["files"][name] = base64.b64decode(encoded)
            continue
        key, _, value = line.partition("=")
        if key.startswith("tracked:"):
            tracked.add(key.split(":", 1)[1])
        elif key in ("module_dir", "data_dir", "secret_dir", "secret_file"):
            kind, uid, gid, mode = value.split("|")
            values["stats"][key] = Stat(kind, int(uid), int(gid), mode.zfill(4))
        elif key in ("nixos", "git", "flake_git", "container_declared"):
            values[key] = value == "yes"
        elif key == "now":
            values["now"] = int(value)
        elif key in ("secret", "cursor", "flake_dir"):
            values[key] = value or None
        elif key in HostFacts.__dataclass_fields__:
            values[key] = value
    return HostFacts(tracked=frozenset(tracked), **values)


def gather(cxn, settings: Settings, file_names: list[str]) -> HostFacts:
    """One read-only remote command, as root; the secret stays in memory."""
    result = run_as_root(cxn, remote.facts(settings, file_names))
    return parse(result.stdout)
