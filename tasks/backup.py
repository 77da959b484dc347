"""`fab backup` and `fab restore`: the notebooks to this machine and back."""

from __future__ import annotations

import time
from pathlib import Path

from invoke import Exit

from pluto_deploy import scripts
from pluto_deploy.archive import check_archive, download_backup
from pluto_deploy.cli import task
from pluto_deploy.settings import load
from pluto_deploy.ssh import ACCEPT_NEW_HELP, connect, host_connection, run_as_root
from pluto_deploy.transfer import byte_counter, upload


@task(
    help={
        "output": "file to write, created with mode 0600 (default: pluto-<host>-<time>.tar.gz)",
        "accept_new_host_key": ACCEPT_NEW_HELP,
    }
)
def backup(c, output=None, accept_new_host_key=False):
    """Download a verified .tar.gz of the notebooks; nothing is copied on the host first."""
    s = load(c.config)
    cxn = connect(host_connection(c, s), accept_new_host_key)
    path = Path(output or f"pluto-{cxn.original_host}-{time.strftime('%Y%m%d-%H%M%S')}.tar.gz")
    download_backup(cxn, s, path)


@task(
    positional=["archive"],
    help={
        "archive": "a .tar.gz made by `fab backup`",
        "force": "overwrite notebooks that exist on the host too",
        "missing_only": "restore only the notebooks that are gone; leave the others as they are",
        "accept_new_host_key": ACCEPT_NEW_HELP,
    },
)
def restore(c, archive, force=False, missing_only=False, accept_new_host_key=False):
    """Put notebooks from a backup back into the data directory, owned by Pluto."""
    s = load(c.config)
    if force and missing_only:
        raise Exit("--force and --missing-only: choose one (overwrite, or only what is gone)")
    path = Path(archive)
    files = check_archive(path)
    cxn = connect(host_connection(c, s), accept_new_host_key)
    listing = run_as_root(cxn, scripts.list_data(s))
    if listing.failed:
        raise Exit(f"{s.data_dir} does not exist on {cxn.original_host}; run `fab deploy` first")
    existing = set(listing.stdout.split("\0"))
    clashes = [name for name in files if name.removeprefix("./") in existing]
    if clashes and not (force or missing_only):
        raise Exit(
            f"{path}: {len(clashes)} notebook(s) exist on {cxn.original_host} already "
            f"(e.g. {clashes[0]}); nothing was changed; --force overwrites them, "
            "--missing-only restores only the others"
        )
    existing_files = "skip" if missing_only else ("overwrite" if force else "refuse")
    with path.open("rb") as source:
        upload(
            cxn,
            scripts.extract_data(s, existing_files),
            source,
            byte_counter(f"restore {path}"),
        )
    if missing_only:
        restored = [name for name in files if name not in clashes]
        print(
            f"\rRestored {len(restored)} missing files into {s.data_dir} on "
            f"{cxn.original_host}, owner {s.uid}:{s.gid}; left {len(clashes)} as they are."
        )
        return
    print(
        f"\rRestored {len(files)} files into {s.data_dir} on {cxn.original_host}, "
        f"owner {s.uid}:{s.gid}" + (f"; replaced {len(clashes)}:" if clashes else ".")
    )
    for name in clashes:
        print(f"  {name.removeprefix('./')}")
