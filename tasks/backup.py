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
        "accept_new_host_key": ACCEPT_NEW_HELP,
    },
)
def restore(c, archive, force=False, accept_new_host_key=False):
    """Put notebooks from a backup back into the data directory, owned by Pluto."""
    s = load(c.config)
    path = Path(archive)
    files = check_archive(path)
    cxn = connect(host_connection(c, s), accept_new_host_key)
    listing = run_as_root(cxn, scripts.list_data(s))
    if listing.failed:
        raise Exit(f"{s.data_dir} does not exist on {cxn.original_host}; run `fab deploy` first")
    existing = set(listing.stdout.split("\0"))
    clashes = [name for name in files if name.removeprefix("./") in existing]
    if clashes and not force:
        raise Exit(
            f"{path}: {len(clashes)} notebook(s) exist on {cxn.original_host} already "
            f"(e.g. {clashes[0]}); nothing was changed; --force overwrites them"
        )
    with path.open("rb") as source:
        upload(
            cxn,
            scripts.extract_data(s, keep_old=not force),
            source,
            byte_counter(f"restore {path}"),
        )
    replaced = f", {len(clashes)} replaced" if clashes else ""
    print(
        f"\rRestored {len(files)} files into {s.data_dir} on {cxn.original_host}{replaced}, "
        f"owner {s.uid}:{s.gid}."
    )
