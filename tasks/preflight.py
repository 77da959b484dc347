"""Deploy's read-only half: check the host's facts and plan what must change."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from invoke import Exit

from . import bundle
from .facts import HostFacts, Stat
from .nixconfig import add_import, import_path, imports_module
from .settings import Settings


@dataclass(frozen=True)
class Plan:
    """What differs between the host and the settings."""

    files: dict[str, bytes]
    changed: list[str]
    config_edit: tuple[str, str] | None = None  # (path, new text) for --add-import
    secret: str | None = None  # the host's usable secret, if any
    secret_in_order: bool = False


def plan(
    facts: HostFacts, s: Settings, host: str, add_import_line: bool, fix_ownership: bool
) -> Plan:
    """Refuse with one line (Exit) if the host is not fit; else say what to change."""
    if not facts.nixos:
        raise Exit(f"{host} is not NixOS (no /etc/NIXOS); point -H or pluto.host at a NixOS host")
    deployed = facts.deployed_settings.get("stateVersion")
    if s.state_version and deployed and s.state_version != deployed:
        raise Exit(
            f'pluto.state_version: "{s.state_version}" differs from {deployed}, fixed when the '
            f"container was created on {host}; remove the setting (changing it can break the "
            "container's state)"
        )
    config_edit = _check_import(facts, s, host, add_import_line)
    for kind, number, owner in (("uid", s.uid, facts.uid_owner), ("gid", s.gid, facts.gid_owner)):
        if owner:
            raise Exit(
                f"pluto.{kind}: {number} belongs to {owner} on {host}; the container's user has "
                f"the same {kind} on the host, so pick one no host account uses"
            )
    if facts.container_declared and facts.deployed_settings.get("containerName") != s.container:
        raise Exit(
            f'pluto.container: "{s.container}" is already a container on {host} that this tool '
            f"did not deploy ({facts.container_conf}); choose another name"
        )
    ours = facts.pluto_active and facts.deployed_settings.get("port") == s.port
    if facts.port_listeners and not s.private_network and not ours:
        raise Exit(
            f"pluto.port: {s.port} is already in use on {host} by something else (the container "
            "shares the host's network); pick a free port or stop what listens there"
        )
    for key, path in (("data_dir", s.data_dir), ("secret_dir", s.secret_dir)):
        found = facts.stats.get(key)
        if found and found.kind != "directory":
            raise Exit(f"pluto.{key}: {path} exists on {host} but is not a directory")
    data = facts.stats.get("data_dir")
    if data and (data.uid, data.gid) != (s.uid, s.gid) and not fix_ownership:
        raise Exit(
            f"{s.data_dir} on {host} is owned by {data.owner}, not {s.uid}:{s.gid}; run again "
            "with --fix-ownership to chown the directory itself (its contents stay as they are)"
        )

    state_version = s.state_version or deployed or facts.release
    if not state_version:
        raise Exit(
            f"{host}: cannot tell the NixOS release from nixos-version "
            f"({facts.nixos_version or 'no output'!r}); set pluto.state_version, e.g. 25.05"
        )
    files = bundle.render(s, state_version)
    untracked = {n for n in files if n not in facts.tracked} if facts.flake_git else set()
    changed = [
        n for n, content in files.items() if facts.module_file(n) != content or n in untracked
    ]
    secret = facts.secret
    secret_dir = facts.stats.get("secret_dir")
    in_order = (
        secret is not None
        and facts.stats.get("secret_file") == Stat("regular file", s.uid, s.gid, "0400")
        and secret_dir is not None
        and (secret_dir.uid, secret_dir.gid, secret_dir.mode) == (s.uid, s.gid, "0700")
    )
    return Plan(files, changed, config_edit, secret, in_order)


def _check_import(facts: HostFacts, s: Settings, host: str, add: bool) -> tuple[str, str] | None:
    config_dir = facts.flake_dir or "/etc/nixos"
    if not (s.module_dir + "/").startswith(config_dir.rstrip("/") + "/"):
        where = "the flake directory" if facts.flake_dir else "/etc/nixos"
        raise Exit(
            f'pluto.module_dir: "{s.module_dir}" is outside {where} ({config_dir}) on {host}; '
            "keep it there so the configuration can import it by a relative path"
        )
    if facts.flake_git and not facts.git:
        raise Exit(
            f"{config_dir} on {host} is a git flake but git is not installed there; "
            "add pkgs.git to environment.systemPackages first"
        )
    line = import_path(s.module_dir, config_dir)
    texts = [facts.files.get("configuration.nix"), facts.files.get("flake.nix")]
    if any(t and imports_module(t.decode(), s.module_dir, config_dir) for t in texts):
        return None
    configuration = f"{config_dir}/configuration.nix"
    if not add:
        target = f"`imports = [ ... ];` in {configuration}"
        if facts.flake_dir:
            target = (
                f"the modules of nixosConfigurations.{facts.hostname} in {config_dir}/flake.nix "
                "(or the imports of its configuration.nix)"
            )
        raise Exit(
            f"{host} does not import the module yet: add `{line}` to {target}, "
            "or run again with --add-import"
        )
    text = texts[0]
    edited = add_import(text.decode(), s.module_dir, config_dir) if text else None
    if edited is None:
        raise Exit(
            f"--add-import: found no place for `{line}` in {configuration} on {host}; "
            f"add `imports = [ {line} ];` yourself"
        )
    return configuration, edited


def describe(facts: HostFacts, s: Settings, plan: Plan, force: bool) -> list[str]:
    """The dry run's report: unified diffs, then what would be created or restarted."""
    report = []

    def diff(old: str, new: str, path: str) -> None:
        lines = difflib.unified_diff(
            old.splitlines(True), new.splitlines(True), path, f"{path} (new)"
        )
        report.append("".join(lines) or f"{path}: unchanged, would be added to git")

    if plan.config_edit:
        path, text = plan.config_edit
        diff(facts.files["configuration.nix"].decode(), text, path)
    for name in plan.changed:
        old = (facts.module_file(name) or b"").decode(errors="replace")
        diff(old, plan.files[name].decode(), f"{s.module_dir}/{name}")
    would = []
    if "module_dir" not in facts.stats:
        would.append(f"create {s.module_dir}")
    if not plan.secret:
        would.append(f"create the secret in {s.secret_file}")
    if "data_dir" not in facts.stats:
        would.append(f"create {s.data_dir} (owner {s.uid}:{s.gid}, mode 0750)")
    if plan.changed or plan.config_edit or force:
        would.append(f"run nixos-rebuild switch; container@{s.container} would restart with Pluto")
    elif not facts.pluto_active:
        would.append("restart pluto.service (it is not running)")
    report.append("Would: " + "; ".join(would) if would else "Nothing to change: Pluto is running.")
    return report
