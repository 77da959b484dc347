"""What deploy will do, decided from facts alone: a table of host facts and flags in,
the plan (or the one refusal line) out, in the style of pyinfra's operation tests.

Each row starts from a host where Pluto is deployed and running and changes one
thing. No host, no SSH: these run in milliseconds; the end-to-end tests show the
same plan executed on the simulated host.
"""

from __future__ import annotations

import dataclasses

import pytest
from invoke import Exit

from pluto_deploy import bundle
from pluto_deploy.facts import HostFacts, Stat, UnitState
from pluto_deploy.plan import describe, plan
from pluto_deploy.settings import Settings

SECRET = "A" * 32
DEFAULTS = Settings.from_mapping({})
CONFIGURATION = b"{ ... }: { imports = [ ./hardware-configuration.nix ./pluto ]; }\n"


def deployed_host(**changes) -> HostFacts:
    """Facts of a host where this deploy already converged: the no-op case."""
    s = DEFAULTS
    files = {f"module:{name}": content for name, content in bundle.render(s, "25.05").items()}
    files["configuration.nix"] = CONFIGURATION
    facts = HostFacts(
        nixos=True,
        nixos_version="25.05.20250612.6c62cf2 (Warbler)",
        hostname="hainich",
        files=files,
        stats={
            "module_dir": Stat("directory", 0, 0, "0755"),
            "data_dir": Stat("directory", s.uid, s.gid, "0750"),
            "secret_dir": Stat("directory", s.uid, s.gid, "0700"),
            "secret_file": Stat("regular file", s.uid, s.gid, "0400"),
        },
        secret=SECRET,
        secret_present=True,
        container_declared=True,
        container_conf="/etc/nixos-containers/pluto.conf",
        container_state="active",
        pluto_state=UnitState("active", "running", 0),
        generation="system-3-link",
    )
    return dataclasses.replace(facts, **changes)


def without_module(facts: HostFacts) -> HostFacts:
    files = {k: v for k, v in facts.files.items() if not k.startswith("module:")}
    stats = {k: v for k, v in facts.stats.items() if k != "module_dir"}
    return dataclasses.replace(facts, files=files, stats=stats)


def first_deploy_host() -> HostFacts:
    facts = without_module(deployed_host())
    stats = {k: v for k, v in facts.stats.items() if k not in ("secret_dir", "secret_file")}
    return dataclasses.replace(
        facts,
        files={"configuration.nix": b"{ ... }: { imports = [ ./hardware-configuration.nix ]; }\n"},
        stats={k: v for k, v in stats.items() if k != "data_dir"},
        secret=None,
        secret_present=False,
        container_declared=False,
        container_state="inactive",
        pluto_state=UnitState(),
    )


def owned(uid: int, gid: int) -> dict:
    stats = dict(deployed_host().stats)
    stats["data_dir"] = Stat("directory", uid, gid, "0750")
    return {"stats": stats}


def changed_settings() -> tuple[Settings, HostFacts]:
    return Settings.from_mapping({"memory_max": "6G"}), deployed_host()


# (id, facts, settings overrides, flags, expected system action, expected actions)
NOOP = ("noop", deployed_host(), {}, {}, "none", [])
ROWS = [
    NOOP,
    (
        "first-deploy",
        first_deploy_host(),
        {},
        {"add_import_line": True},
        "rebuild",
        [
            "add the import to /etc/nixos/configuration.nix",
            "write default.nix, module.nix, launcher.jl, gate.py, settings.json in "
            "/etc/nixos/pluto",
            "create the secret /var/lib/pluto-secret/secret",
            "create /data/pluto (owner 2000:2000, mode 0750)",
            "run nixos-rebuild switch (the module changed); container@pluto restarts if its "
            "configuration changed, else pluto.service restarts (it is not running)",
        ],
    ),
    (
        "changed-setting",
        deployed_host(),
        {"memory_max": "6G"},
        {},
        "rebuild",
        [
            "write settings.json in /etc/nixos/pluto",
            "run nixos-rebuild switch (the module changed); container@pluto restarts if its "
            "configuration changed",
        ],
    ),
    (
        "stopped-container",
        deployed_host(container_state="inactive", pluto_state=UnitState()),
        {},
        {},
        "start-container",
        ["start container@pluto (it is inactive)"],
    ),
    (
        "failed-container",
        deployed_host(container_state="failed", pluto_state=UnitState()),
        {},
        {},
        "start-container",
        ["start container@pluto (it is failed)"],
    ),
    (
        "stopped-pluto",
        deployed_host(pluto_state=UnitState("inactive", "dead", 0)),
        {},
        {},
        "restart-pluto",
        ["restart pluto.service in container@pluto (it is stopped)"],
    ),
    (
        "crash-looping-pluto",
        deployed_host(pluto_state=UnitState("activating", "auto-restart", 4)),
        {},
        {},
        "restart-pluto",
        ["restart pluto.service in container@pluto (it is restarting after a crash)"],
    ),
    (
        "module-not-in-the-running-system",
        deployed_host(container_declared=False, container_state="inactive"),
        {},
        {},
        "rebuild",
        [
            "run nixos-rebuild switch (the running system has no container@pluto); "
            "container@pluto restarts if its configuration changed, else pluto.service "
            "restarts (it is not running)"
        ],
    ),
    (
        "force",
        deployed_host(),
        {},
        {"force": True},
        "rebuild",
        [
            "run nixos-rebuild switch (--force); container@pluto restarts if its "
            "configuration changed"
        ],
    ),
    (
        "wrong-owner-fixed",
        deployed_host(**owned(1000, 100)),
        {},
        {"fix_ownership": "directory"},
        "none",
        ["chown /data/pluto from 1000:100 to 2000:2000 (the directory itself, not its contents)"],
    ),
    (
        "wrong-gid-fixed-recursively",
        deployed_host(**owned(2000, 100)),
        {},
        {"fix_ownership": "recursive"},
        "none",
        ["chown /data/pluto and everything in it from 2000:100 to 2000:2000"],
    ),
    (
        "broken-secret",
        deployed_host(secret=None, secret_present=True),
        {},
        {},
        "none",
        ["replace the unusable secret in /var/lib/pluto-secret/secret"],
    ),
    (
        "secret-mode",
        deployed_host(
            stats={
                **deployed_host().stats,
                "secret_file": Stat("regular file", 2000, 2000, "0644"),
            }
        ),
        {},
        {},
        "none",
        ["fix owner and mode of the secret /var/lib/pluto-secret/secret"],
    ),
    (
        "flake-host-untracked-file",
        deployed_host(
            flake_dir="/etc/nixos",
            flake_git=True,
            git=True,
            tracked=frozenset({"default.nix", "module.nix", "gate.py", "settings.json"}),
        ),
        {},
        {},
        "rebuild",
        [
            "write launcher.jl in /etc/nixos/pluto",
            "run nixos-rebuild switch (the module changed); container@pluto restarts if its "
            "configuration changed",
        ],
    ),
]


@pytest.mark.parametrize(
    ("facts", "overrides", "flags", "system", "actions"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_plan(facts, overrides, flags, system, actions):
    s = Settings.from_mapping(overrides)
    planned = plan(facts, s, "hainich", **flags)
    assert planned.system_action == system
    assert planned.actions(s) == actions


REFUSALS = [
    (
        "wrong-uid-and-gid",
        deployed_host(**owned(1000, 100)),
        {},
        "/data/pluto on hainich is owned by 1000:100, not 2000:2000; run again with "
        "--fix-ownership to chown the directory itself (its contents stay as they are)",
    ),
    (
        "right-uid-wrong-gid",
        deployed_host(**owned(2000, 100)),
        {},
        "/data/pluto on hainich is owned by 2000:100, not 2000:2000; run again with "
        "--fix-ownership to chown the directory itself (its contents stay as they are)",
    ),
    (
        "wrong-uid-right-gid",
        deployed_host(**owned(2001, 2000)),
        {},
        "/data/pluto on hainich is owned by 2001:2000, not 2000:2000; run again with "
        "--fix-ownership to chown the directory itself (its contents stay as they are)",
    ),
    (
        "not-nixos",
        deployed_host(nixos=False),
        {},
        "hainich is not NixOS (no /etc/NIXOS); point -H or pluto.host at a NixOS host",
    ),
    (
        "no-import",
        first_deploy_host(),
        {},
        "hainich does not import the module yet: add `./pluto` to `imports = [ ... ];` in "
        "/etc/nixos/configuration.nix, or run again with --add-import",
    ),
    (
        "someone-elses-container",
        dataclasses.replace(
            without_module(deployed_host()), container_conf="/etc/nixos-containers/pluto.conf"
        ),
        {},
        'pluto.container: "pluto" is already a container on hainich that this tool did not '
        "deploy (/etc/nixos-containers/pluto.conf); choose another name",
    ),
    (
        "port-taken-by-someone-else",
        deployed_host(port_listeners=1, pluto_state=UnitState("inactive", "dead", 0)),
        {},
        "pluto.port: 9999 is already in use on hainich by something else (the container "
        "shares the host's network); pick a free port or stop what listens there",
    ),
    (
        "unknown-release",
        first_deploy_host(),
        {"nixos_version": "custom build"},
        "hainich: cannot tell the NixOS release from nixos-version ('custom build'); set "
        "pluto.state_version, e.g. 25.05",
    ),
]


@pytest.mark.parametrize(
    ("facts", "changes", "line"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refusal(facts, changes, line):
    facts = dataclasses.replace(facts, **changes)
    with pytest.raises(Exit) as refusal:
        plan(facts, DEFAULTS, "hainich", add_import_line="nixos_version" in changes)
    assert refusal.value.message == line


def test_our_own_pluto_on_the_port_is_no_refusal():
    facts = deployed_host(port_listeners=1)
    assert plan(facts, DEFAULTS, "hainich").system_action == "none"


def test_the_dry_run_prints_exactly_the_plan():
    s, facts = changed_settings()
    planned = plan(facts, s, "hainich")
    report = describe(facts, s, planned)
    assert report[-1] == "Would: " + "; ".join(planned.actions(s))
    assert '-  "memoryMax": "4G",' in report[0] and '+  "memoryMax": "6G",' in report[0]
    noop = deployed_host()
    assert describe(noop, DEFAULTS, plan(noop, DEFAULTS, "hainich")) == [
        "Nothing to change: Pluto is running."
    ]
