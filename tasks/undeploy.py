"""Remove Pluto from the host; the notebooks stay unless --purge."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from invoke import Exit

from pluto_deploy import bundle, scripts
from pluto_deploy.archive import download_backup
from pluto_deploy.cli import task
from pluto_deploy.deployment import failed_units, replace_configuration
from pluto_deploy.facts import gather
from pluto_deploy.nixconfig import imports_module, remove_import
from pluto_deploy.progress import Progress
from pluto_deploy.settings import load
from pluto_deploy.ssh import ACCEPT_NEW_HELP, check, connect, host_connection, run_as_root
from pluto_deploy.stream import run_streamed


def _confirm_purge(cxn, s, host: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise Exit(
            f"--purge deletes {s.data_dir} (the notebooks) and the secret on {host}; "
            "confirm with --yes (make a backup with `fab backup` first)"
        )
    if input(f"Back up {s.data_dir} from {host} first? [Y/n] ").strip().lower() in ("", "y", "yes"):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        download_backup(cxn, s, Path(f"pluto-{host}-{stamp}.tar.gz"))
    answer = input(f"Delete {s.data_dir} and the secret on {host} for good? Type the host name: ")
    if answer.strip() != host:
        raise Exit("Not confirmed; nothing was changed.")


@task(
    short={"verbose": "v"},
    help={
        "purge": "also delete the notebooks, the secret and the container's state (asks first)",
        "yes": "with --purge: do not ask",
        "accept_new_host_key": ACCEPT_NEW_HELP,
        "verbose": "show the full remote output",
    },
)
def undeploy(c, purge=False, yes=False, accept_new_host_key=False, verbose=False):
    """Remove Pluto from the host: import, module, container; notebooks stay.

    Takes the module out of the host configuration (keeping a backup of the
    file), moves the module directory aside, runs nixos-rebuild switch and
    checks the container is gone. The notebooks and the secret stay unless
    --purge, which asks for confirmation and offers a backup first.
    """
    s = load(c.config)
    cxn = connect(host_connection(c, s), accept_new_host_key)
    host = cxn.original_host
    p = Progress(total=5 if purge else 4, verbose=verbose)
    p.begin(1, f"pre-flight {host}")
    facts = gather(cxn, s, bundle.FILE_NAMES)
    config_dir = facts.flake_dir or "/etc/nixos"
    flake = facts.files.get("flake.nix")
    if flake and imports_module(flake.decode(), s.module_dir, config_dir):
        p.fail("nothing was changed")
        raise Exit(
            f"{config_dir}/flake.nix imports the module; remove it there, then run undeploy again"
        )
    configuration = facts.files.get("configuration.nix", b"").decode()
    imported = imports_module(configuration, s.module_dir, config_dir)
    edited = remove_import(configuration, s.module_dir, config_dir) if imported else None
    if edited is not None and imports_module(edited, s.module_dir, config_dir):
        p.fail("nothing was changed")
        raise Exit(
            f"could not take the module out of {config_dir}/configuration.nix; remove it by hand"
        )
    deployed = "module_dir" in facts.stats or facts.container_declared
    if not (deployed or imported or purge):
        p.end("Pluto is not deployed here; nothing to do")
        return
    # Sessions live in the module: undeploying would end them without a backup.
    if facts.sessions:
        p.fail("nothing was changed")
        raise Exit(
            f"sessions on {host} use the module: {', '.join(facts.sessions)}; close each "
            "first with `fab session.close NAME` (it keeps a backup of the notebooks)"
        )
    if purge:
        with p.paused():
            _confirm_purge(cxn, s, host, yes)
    p.end(
        "will remove " + ", ".join(x for x in ("the import" if imported else "", "the module") if x)
    )

    p.begin(2, f"configuration {config_dir}/configuration.nix")
    backup_file = None
    if edited is not None:
        backup_file = replace_configuration(cxn, f"{config_dir}/configuration.nix", edited)
        p.end(f"import removed (backup {backup_file})")
    else:
        p.end("no import to remove")

    git_dir = facts.flake_dir if facts.flake_git else None
    p.begin(3, f"module {s.module_dir}")
    check(run_as_root(cxn, scripts.retire_module(s, git_dir)), "remove")
    p.end(f"moved to {s.module_dir}.previous")

    p.begin(4, "nixos-rebuild switch")
    code, lines = run_streamed(cxn, scripts.rebuild(), p)
    gone = run_as_root(cxn, scripts.container_gone(s)).ok
    # Units that failed in the switch are someone else's once our container is gone.
    others = failed_units(code, lines)
    if others is None or not gone:
        run_as_root(cxn, scripts.unretire_module(s, git_dir))
        if backup_file:
            target = f"{config_dir}/configuration.nix"
            run_as_root(cxn, f"cp -a {scripts.q(backup_file)} {scripts.q(target)}")
        p.fail(f"exit {code}" if code else "the container is still there")
        raise Exit(
            f"Undeploy on {host} failed (nixos-rebuild exit {code}); the module and the import "
            "were put back; nothing else changed"
        )
    p.end(f"done, container@{s.container} is gone")
    if others:
        p.say(
            f"warning: nixos-rebuild reported failed units that are not Pluto's: "
            f"{', '.join(others)} (see `systemctl status` on the host)"
        )

    if purge:
        p.begin(5, "purge")
        check(run_as_root(cxn, scripts.purge(s)), "purge")
        p.end(f"deleted {s.data_dir}, {s.secret_dir} and the container's state")
        p.say(f"Pluto and its notebooks are gone from {host}.")
    else:
        p.say(
            f"Pluto is gone from {host}; kept {s.data_dir} (notebooks) and {s.secret_dir} (secret)."
        )
