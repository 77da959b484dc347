"""Read the host's state in one remote command; parse it into HostFacts."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field

from . import scripts, secretfile
from .settings import Settings
from .ssh import run_as_root

RELEASE = re.compile(r"^(\d{2}\.\d{2})(?:\.|pre|$)")


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
class UnitState:
    """ActiveState, SubState and NRestarts of a unit, as `systemctl show` reports them.

    `systemctl show -p A -p B` prints in systemd's own property order, not in the
    order asked for, so values are always read as `key=value` lines, never by position.
    """

    active: str = ""
    sub: str = ""
    restarts: int | None = None

    @classmethod
    def parse(cls, text: str, prefix: str = "") -> UnitState:
        values = {}
        for token in text.replace("\n", " ").split():
            key, _, value = token.partition("=")
            if key.startswith(prefix):
                values[key[len(prefix) :]] = value
        restarts = values.get("NRestarts", "")
        return cls(
            values.get("ActiveState", ""),
            values.get("SubState", ""),
            int(restarts) if restarts.isdigit() else None,
        )

    @property
    def running(self) -> bool:
        return self.active == "active"

    @property
    def words(self) -> str:
        """The state for people: "stopped", "running", "restarting after a crash"."""
        if self.sub == "auto-restart":
            return "restarting after a crash"
        return {
            "active": "running",
            "reloading": "running",
            "inactive": "stopped",
            "failed": "failed",
            "activating": "starting",
            "deactivating": "stopping",
        }.get(self.active, "in an unknown state")


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
    secret: str | None = None  # the usable secret (tasks/secretfile.py), else None
    secret_present: bool = False
    uid_owner: str = ""
    gid_owner: str = ""
    container_declared: bool = False
    container_conf: str = ""
    port_listeners: int = 0
    container_state: str = "inactive"
    pluto_state: UnitState = UnitState()
    cursor: str | None = None
    generation: str = ""
    sessions: tuple[str, ...] = ()  # sessions/<name>.json in the module directory

    @property
    def release(self) -> str:
        """The NixOS release ("" when `nixos-version` says something else).

        Stable "25.05.20250612.6c62cf2 (Warbler)", unstable "25.11pre812345.0a1b2c3
        (Xantusia)" and pinned "25.05pre-git (Warbler)" all give "25.05"/"25.11".
        """
        match = RELEASE.match(self.nixos_version)
        return match.group(1) if match else ""

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
        return self.container_state == "active" and self.pluto_state.running


def parse(output: str) -> HostFacts:
    values: dict = {"files": {}, "stats": {}}
    tracked = set()
    pluto_lines: list[str] = []
    sessions: list[str] = []
    for line in output.splitlines():
        if line.startswith("pluto."):
            pluto_lines.append(line)
            continue
        if line.startswith("file:"):
            # file:NAME:BASE64, where NAME may hold a colon ("module:default.nix")
            name, _, encoded = line[len("file:") :].rpartition(":")
            values["files"][name] = base64.b64decode(encoded)
            continue
        key, _, value = line.partition("=")
        if key.startswith("tracked:"):
            tracked.add(key.split(":", 1)[1])
        elif key in ("module_dir", "data_dir", "state_dir", "secret_dir", "secret_file"):
            kind, uid, gid, mode = value.split("|")
            values["stats"][key] = Stat(kind, int(uid), int(gid), mode.zfill(4))
        elif key == "session":
            sessions.append(value)
        elif key == "container_declared":
            values[key] = bool(value)
            values["container_conf"] = value
        elif key in ("nixos", "git", "flake_git"):
            values[key] = value == "yes"
        elif key in ("now", "port_listeners"):
            values[key] = int(value) if value.strip().isdigit() else 0
        elif key in ("cursor", "flake_dir"):
            values[key] = value or None
        elif key in HostFacts.__dataclass_fields__:
            values[key] = value
    values["pluto_state"] = UnitState.parse(" ".join(pluto_lines), "pluto.")
    secret_file = values["files"].pop("secret", None)
    values["secret"] = secretfile.parse(secret_file)
    values["secret_present"] = secret_file is not None
    return HostFacts(tracked=frozenset(tracked), sessions=tuple(sorted(sessions)), **values)


def gather(cxn, settings: Settings, file_names: list[str]) -> HostFacts:
    """One read-only remote command, as root; the secret stays in memory."""
    result = run_as_root(cxn, scripts.facts(settings, file_names))
    return parse(result.stdout)
