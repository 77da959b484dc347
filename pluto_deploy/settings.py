"""Read the `pluto` settings once into one validated, typed object."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import fabric
from invoke import Exit

from . import values
from .values import Invalid


@dataclass(frozen=True)
class Setting:
    """One key under `pluto:`: its default, its parser and its one-line meaning."""

    default: Any
    parse: Callable[[Any], Any]
    help: str


SETTINGS: dict[str, Setting] = {
    "host": Setting("hainich", values.host, "SSH host or alias; `-H` overrides it"),
    "container": Setting("pluto", values.container, "name of the nixos-container"),
    "port": Setting(9999, values.container_port, "port Pluto listens on in the container"),
    "local_port": Setting(
        None, values.optional_port, "port of the tunnel on your machine (default: `port`)"
    ),
    "data_dir": Setting(
        "/data/pluto", values.state_path, "notebook directory on the host, bind-mounted read-write"
    ),
    "secret_dir": Setting(
        "/var/lib/pluto-secret", values.state_path, "host directory holding the secret file"
    ),
    "uid": Setting(
        2000, values.whole_number(1000, 65533, "a uid from 1000 to 65533"), "uid of Pluto"
    ),
    "gid": Setting(
        2000, values.whole_number(1000, 65533, "a gid from 1000 to 65533"), "gid of Pluto"
    ),
    "memory_max": Setting("4G", values.size, "MemoryMax= of the container"),
    "memory_high": Setting("3584M", values.size, "MemoryHigh= of the container (throttling)"),
    "cpu_quota": Setting("200%", values.cpu_quota, "CPUQuota= of the container (100% = one core)"),
    "tasks_max": Setting(
        4096,
        values.whole_number(64, 1_000_000, "a task limit from 64 (Julia needs dozens of threads)"),
        "TasksMax= of the container",
    ),
    "module_dir": Setting(
        "/etc/nixos/pluto", values.module_dir, "where the NixOS module goes on the host"
    ),
    "install_mode": Setting(
        "pkg",
        values.choice("pkg", "nix"),
        "`pkg`: Pkg installs Pluto on first start; `nix`: Nix store",
    ),
    "pluto_version": Setting(
        "1.0.1", values.pluto_version, "Pluto version installed in `pkg` mode"
    ),
    "julia_package": Setting("julia-lts", values.julia_package, "nixpkgs attribute of Julia"),
    "private_network": Setting(
        False, values.boolean, "give the container its own network namespace"
    ),
    "host_address": Setting("10.233.1.1", values.ipv4, "host side of the veth (private_network)"),
    "local_address": Setting("10.233.1.2", values.ipv4, "container address (private_network)"),
    "ephemeral": Setting(
        False, values.boolean, "wipe the container root on every stop (`nix` mode)"
    ),
    "state_version": Setting(
        None, values.state_version, "container system.stateVersion; default: fixed at first deploy"
    ),
    "hardening_exceptions": Setting(
        [], values.hardening_exceptions, "pluto.service hardening settings to relax"
    ),
    "public_host": Setting(
        None, values.optional_public_host, "DNS name nginx serves sessions under (https://NAME/…)"
    ),
    "tls_certificate": Setting(
        None, values.optional_host_file, "certificate file on the host for public_host; unset: ACME"
    ),
    "tls_certificate_key": Setting(
        None, values.optional_host_file, "key of tls_certificate, a file on the host"
    ),
    "session_memory_max": Setting("2G", values.size, "MemoryMax= of each session's container"),
    "session_memory_high": Setting("1792M", values.size, "MemoryHigh= of each session's container"),
    "session_cpu_quota": Setting("100%", values.cpu_quota, "CPUQuota= of each session's container"),
    "session_tasks_max": Setting(
        1024,
        values.whole_number(64, 1_000_000, "a task limit from 64 (Julia needs dozens of threads)"),
        "TasksMax= of each session's container",
    ),
    "start_timeout": Setting(
        900,
        values.whole_number(10, 86400, "a number of seconds from 10 to 86400"),
        "seconds deploy waits for Pluto's link (first start installs Pluto)",
    ),
}

# What `ns.configure` registers: Invoke only maps FABRIC_PLUTO_* onto keys that exist.
DEFAULTS = {name: setting.default for name, setting in SETTINGS.items()}


@dataclass(frozen=True)
class Settings:
    """Validated deployment settings; build with `load` or `from_mapping`."""

    host: str
    container: str
    port: int
    local_port: int
    data_dir: str
    secret_dir: str
    uid: int
    gid: int
    memory_max: str
    memory_high: str
    cpu_quota: str
    tasks_max: int
    module_dir: str
    install_mode: str
    pluto_version: str
    julia_package: str
    private_network: bool
    host_address: str
    local_address: str
    ephemeral: bool
    state_version: str | None
    hardening_exceptions: tuple[str, ...]
    public_host: str | None
    tls_certificate: str | None
    tls_certificate_key: str | None
    session_memory_max: str
    session_memory_high: str
    session_cpu_quota: str
    session_tasks_max: int
    start_timeout: int

    @property
    def secret_file(self) -> str:
        return f"{self.secret_dir}/secret"

    @property
    def pluto_address(self) -> str:
        """Where Pluto listens, as seen from the host."""
        return self.local_address if self.private_network else "127.0.0.1"

    @property
    def state_host_dir(self) -> str:
        """Host directory of the depot of an ephemeral container (files/module.nix)."""
        return f"/var/lib/pluto-state/{self.container}"

    @property
    def container_unit(self) -> str:
        return f"container@{self.container}.service"

    @classmethod
    def from_mapping(
        cls, raw: Mapping[str, Any], labels: Mapping[str, str] | None = None
    ) -> Settings:
        """Validate `values` (keys as in fabric.yaml); raise Invalid naming the key."""
        labels = labels or {}
        unknown = sorted(set(raw) - set(SETTINGS))
        if unknown:
            key = unknown[0]
            hint = difflib.get_close_matches(key, SETTINGS, n=1)
            suggestion = f"did you mean {hint[0]}?" if hint else f"known: {', '.join(SETTINGS)}"
            raise Invalid(f"{labels.get(key, 'pluto.' + key)}: unknown setting ({suggestion})")
        parsed = {}
        for name, setting in SETTINGS.items():
            value = raw.get(name, setting.default)
            try:
                parsed[name] = setting.parse(value)
            except Invalid as problem:
                label = labels.get(name, f"pluto.{name}")
                raise Invalid(f"{label}: {_show(value)} {problem}") from None
        if parsed["local_port"] is None:
            parsed["local_port"] = parsed["port"]
        settings = cls(**parsed)
        settings._check_combinations(labels)
        return settings

    def _check_combinations(self, labels: Mapping[str, str]) -> None:
        def label(name: str) -> str:
            return labels.get(name, f"pluto.{name}")

        for high, top in (
            ("memory_high", "memory_max"),
            ("session_memory_high", "session_memory_max"),
        ):
            if values.size_in_bytes(getattr(self, high)) > values.size_in_bytes(getattr(self, top)):
                raise Invalid(
                    f"{label(high)}: {_show(getattr(self, high))} is above {top} "
                    f"{getattr(self, top)} (MemoryHigh throttles before MemoryMax kills)"
                )
        if (self.tls_certificate is None) != (self.tls_certificate_key is None):
            given, missing = (
                ("tls_certificate", "tls_certificate_key")
                if self.tls_certificate
                else ("tls_certificate_key", "tls_certificate")
            )
            raise Invalid(
                f"{label(given)}: set, but {missing} is not; give both, or neither (ACME)"
            )
        if self.private_network and len(self.container) > 11:
            raise Invalid(
                f"{label('container')}: {_show(self.container)} is longer than 11 characters, "
                "which NixOS refuses with private_network"
            )
        if self.private_network and self.host_address == self.local_address:
            raise Invalid(
                f"{label('local_address')}: {_show(self.local_address)} is the same as "
                "host_address; the two ends of the veth need different addresses"
            )
        if self.ephemeral and self.install_mode != "nix":
            raise Invalid(
                f"{label('ephemeral')}: true needs install_mode nix (in pkg mode Pluto is "
                "installed on first start and would be reinstalled after every stop)"
            )
        for inner, outer in (
            ("data_dir", "secret_dir"),
            ("secret_dir", "data_dir"),
            ("data_dir", "module_dir"),
            ("secret_dir", "module_dir"),
        ):
            if values.under(getattr(self, inner), getattr(self, outer)):
                raise Invalid(
                    f"{label(inner)}: {_show(getattr(self, inner))} is inside "
                    f"{outer} {getattr(self, outer)}; the two must be separate directories"
                )
        for key in ("data_dir", "secret_dir"):
            path = getattr(self, key)
            hidden = [d for d in values.HIDDEN_DIRS if values.under(path, d)]
            if hidden or path == values.STATE_DIRECTORY:
                where = hidden[0] if hidden else "pluto.service's own StateDirectory"
                raise Invalid(
                    f"{label(key)}: {_show(path)} is {'under ' if hidden else ''}{where}, "
                    "which pluto.service's hardening hides from Pluto; use a directory such "
                    "as /data/pluto or /var/lib/pluto-secret"
                )
        julia = values.JULIA_PACKAGES[self.julia_package]
        oldest = values.PLUTO_FOR_JULIA[julia]
        if self.install_mode == "pkg" and values.version_tuple(self.pluto_version) < oldest:
            raise Invalid(
                f"{label('pluto_version')}: Pluto {self.pluto_version} does not work with "
                f"Julia {julia[0]}.{julia[1]} ({label('julia_package')} "
                f"{_show(self.julia_package)}); use Pluto {'.'.join(map(str, oldest))} or newer"
            )
        if self.install_mode == "pkg" and self.private_network:
            raise Invalid(
                f"{label('private_network')}: true needs install_mode nix: a private network "
                "has no route out unless the host NATs it (networking.nat), so Pkg could not "
                "install Pluto at the first start"
            )


def _show(value: Any) -> str:
    """A value as the error line shows it: strings quoted, numbers bare."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return str(value) if isinstance(value, int) else json.dumps(value, default=str)


def check_environment(environ: Mapping[str, str] = os.environ) -> None:
    """Refuse FABRIC_PLUTO_* values Invoke would mangle or crash on.

    Invoke casts an environment string to the type of the existing value:
    `int("abc")` raises a bare ValueError (a traceback), and for booleans any
    text but "0" and "" means true, so `false` would turn a switch on
    (invoke 2.2.1 invoke/env.py `_cast`). Unknown names are silently ignored
    by Invoke, which hides typos. Called when the task collection loads.
    """
    for variable, value in sorted(environ.items()):
        if not variable.startswith("FABRIC_PLUTO_"):
            continue
        key = variable.removeprefix("FABRIC_PLUTO_").lower()
        setting = SETTINGS.get(key)
        if setting is None:
            hint = difflib.get_close_matches(key, SETTINGS, n=1)
            known = f"did you mean FABRIC_PLUTO_{hint[0].upper()}?" if hint else "see README"
            raise Exit(f"{variable}: unknown setting ({known})")
        if isinstance(setting.default, list):
            raise Exit(f"{variable}: lists cannot be set from the environment; use fabric.yaml")
        if isinstance(setting.default, bool) and value not in ("0", "1"):
            raise Exit(
                f"{variable}: {_show(value)} is not 1 or 0 (Fabric reads any other text as true)"
            )
        try:
            setting.parse(value)
        except Invalid as problem:
            raise Exit(f"{variable}: {_show(value)} {problem}") from None


def _check_config_files(config: Any) -> None:
    """What Invoke passes over silently: a missing `-f FILE`, a misspelt `pluto:` block."""
    runtime = getattr(config, "_runtime_path", None)
    if runtime and not os.path.isfile(os.path.expanduser(runtime)):
        raise Exit(f"-f: {runtime}: no such file")
    known = set(fabric.Config.global_defaults()) | {"pluto"}
    for key in config:
        if key not in known and difflib.get_close_matches(key, ["pluto"], cutoff=0.7):
            raise Exit(f"configuration: unknown top-level key {key!r} (did you mean pluto?)")


def load(config: Any, **flags: tuple[str, Any]) -> Settings:
    """Settings from Invoke config `config.pluto` plus task flags.

    `flags` maps a setting to `(flag_name, value)`; a value of None means the
    flag was not given. Invalid input ends the task with one line naming the
    key or flag, the value and what is allowed, before any host is touched.
    """
    _check_config_files(config)
    raw = dict(config.get("pluto", {}) or {})
    labels = {}
    for name, (flag, value) in flags.items():
        if value is not None:
            raw[name] = value
            labels[name] = flag
    try:
        return Settings.from_mapping(raw, labels)
    except Invalid as problem:
        raise Exit(str(problem)) from None
