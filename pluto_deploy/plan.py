"""Deploy's read-only half: check the host's facts and plan what must change."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from invoke import Exit

from . import bundle
from .facts import HostFacts, Stat
from .nixconfig import add_import, import_path, imports_module
from .settings import Settings


@dataclass(frozen=True)
class Plan:
    """Every action deploy will take on a host, decided once before anything changes.

    The dry run prints it (`describe`), the deploy executes exactly it
    (pluto_deploy/deployment.py), `fab status` reports it as drift.
    """

    files: dict[str, bytes]
    changed: list[str] = field(default_factory=list)  # module files to write
    config_edit: tuple[str, str] | None = None  # (path, new text) for --add-import
    secret: str | None = None  # the host's usable secret, kept
    secret_action: str = "keep"  # keep | fix (owner, mode) | create | replace
    data_dir_action: str = "keep"  # keep | create | chown | chown-recursive
    data_dir_owner: str = ""  # the owner before a chown
    create_state_dir: bool = False  # an ephemeral container's depot on the host
    system_action: str = "none"  # rebuild | start-container | restart-pluto | none
    reason: str = ""  # why: "the module changed", or the state seen ("stopped")
    # Pluto is not running now: if the switch leaves its container alone, restart it.
    restart_pluto_after_switch: bool = False

    @property
    def pushes(self) -> bool:
        return bool(self.changed or self.config_edit)

    @property
    def pluto_restarts(self) -> bool:
        """Whether Pluto will start anew (and print a new link) in this deploy."""
        return self.system_action != "none"

    def actions(self, s: Settings) -> list[str]:
        """The plan in words, one action each, in the order deploy takes them."""
        actions = []
        if self.config_edit:
            actions.append(f"add the import to {self.config_edit[0]}")
        if self.changed:
            actions.append(f"write {', '.join(self.changed)} in {s.module_dir}")
        actions.append(
            {
                "keep": "",
                "fix": f"fix owner and mode of the secret {s.secret_file}",
                "create": f"create the secret {s.secret_file}",
                "replace": f"replace the unusable secret in {s.secret_file}",
            }[self.secret_action]
        )
        owner = f"{s.uid}:{s.gid}"
        actions.append(
            {
                "keep": "",
                "create": f"create {s.data_dir} (owner {owner}, mode 0750)",
                "chown": f"chown {s.data_dir} from {self.data_dir_owner} to {owner} "
                "(the directory itself, not its contents)",
                "chown-recursive": f"chown {s.data_dir} and everything in it from "
                f"{self.data_dir_owner} to {owner}",
            }[self.data_dir_action]
        )
        if self.create_state_dir:
            actions.append(f"create {s.state_host_dir} (the depot of the ephemeral container)")
        unit = f"container@{s.container}"
        actions.append(
            {
                "none": "",
                "rebuild": f"run nixos-rebuild switch ({self.reason}); {unit} restarts if its "
                "configuration changed"
                + (
                    ", else pluto.service restarts (it is not running)"
                    if self.restart_pluto_after_switch
                    else ""
                ),
                "start-container": f"start {unit} (it is {self.reason})",
                "restart-pluto": f"restart pluto.service in {unit} (it is {self.reason})",
            }[self.system_action]
        )
        return [action for action in actions if action]


def plan(
    facts: HostFacts,
    s: Settings,
    host: str,
    add_import_line: bool = False,
    fix_ownership: str = "",
    force: bool = False,
) -> Plan:
    """Refuse with one line (Exit) if the host is not fit; else every action deploy takes.

    fix_ownership: "" (refuse a data directory of another owner), "directory"
    (chown it) or "recursive" (chown everything in it).
    """
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
    return Plan(
        files,
        changed,
        config_edit,
        facts.secret,
        _secret_action(facts, s),
        *_data_dir_action(facts, s, fix_ownership),
        s.ephemeral and "state_dir" not in facts.stats,
        *_system_action(facts, s, bool(changed or config_edit), force),
        restart_pluto_after_switch=not facts.pluto_active,
    )


def _secret_action(facts: HostFacts, s: Settings) -> str:
    if facts.secret is None:
        return "replace" if facts.secret_present else "create"
    secret_dir = facts.stats.get("secret_dir")
    in_order = (
        facts.stats.get("secret_file") == Stat("regular file", s.uid, s.gid, "0400")
        and secret_dir is not None
        and (secret_dir.uid, secret_dir.gid, secret_dir.mode) == (s.uid, s.gid, "0700")
    )
    return "keep" if in_order else "fix"


def _data_dir_action(facts: HostFacts, s: Settings, fix_ownership: str) -> tuple[str, str]:
    data = facts.stats.get("data_dir")
    if data is None:
        return "create", ""
    if (data.uid, data.gid) == (s.uid, s.gid):
        return "keep", ""
    return ("chown-recursive" if fix_ownership == "recursive" else "chown"), data.owner


def _system_action(facts: HostFacts, s: Settings, pushes: bool, force: bool) -> tuple[str, str]:
    """rebuild, start the container, restart Pluto, or nothing; and why."""
    unit = f"container@{s.container}"
    if pushes:
        return "rebuild", "the module changed"
    if force:
        return "rebuild", "--force"
    if not facts.container_declared:
        return "rebuild", f"the running system has no {unit}"
    if facts.container_state != "active":
        return "start-container", facts.container_state or "inactive"
    if not facts.pluto_state.running:
        return "restart-pluto", facts.pluto_state.words
    return "none", "Pluto is running"


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


def describe(facts: HostFacts, s: Settings, plan: Plan) -> list[str]:
    """The dry run's report: unified diffs, then the plan's actions."""
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
    actions = plan.actions(s)
    report.append(
        "Would: " + "; ".join(actions) if actions else "Nothing to change: Pluto is running."
    )
    return report
