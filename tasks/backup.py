"""Back up the notebooks to this machine, and restore them from such a backup."""

from __future__ import annotations

import os
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

from invoke import Exit

from . import remote
from .cli import task
from .connection import ACCEPT_NEW_HELP, connect, host_connection, run_as_root
from .settings import load
from .status import human
from .transfer import byte_counter, download, upload


def check_archive(path: Path) -> list[str]:
    """The regular files of a backup; Exit if any member could land outside the data dir.

    Uses the standard library's own extraction filter (tarfile.data_filter,
    PEP 706) for `..`, links pointing outside, devices and FIFOs, and refuses
    absolute names outright, before anything reaches the host.
    """
    if not hasattr(tarfile, "data_filter"):
        raise Exit("restore needs Python 3.10.12 / 3.11.4 or newer (tarfile.data_filter)")
    files = []
    try:
        with tarfile.open(path, "r:gz") as archive, tempfile.TemporaryDirectory() as target:
            for member in archive:
                if member.name.startswith("/"):  # data_filter would only strip the "/"
                    raise Exit(
                        f"{path}: refused, {member.name!r} is an absolute path "
                        "(nothing was changed)"
                    )
                try:
                    tarfile.data_filter(member, target)
                except tarfile.FilterError as problem:
                    raise Exit(f"{path}: refused, {problem} (nothing was changed)") from None
                if member.isfile():
                    files.append(str(PurePosixPath(member.name)))
                    archive.extractfile(member).read()  # reading it checks the gzip CRC
    except (OSError, tarfile.TarError, EOFError) as problem:
        raise Exit(f"{path}: not a readable .tar.gz backup ({problem})") from None
    return files


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
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise Exit(f"--output: {path} already exists; choose another file") from None
    except OSError as problem:
        raise Exit(f"--output: cannot create {path}: {problem.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            size = download(cxn, remote.archive_data(s), out, byte_counter(f"backup {s.data_dir}"))
        files = check_archive(path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    print(
        f"\rBacked up {s.data_dir} on {cxn.original_host} to {path}: "
        f"{human(size)}, {len(files)} files, verified."
    )


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
    listing = run_as_root(cxn, remote.list_data(s))
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
            cxn, remote.extract_data(s, keep_old=not force), source, byte_counter(f"restore {path}")
        )
    replaced = f", {len(clashes)} replaced" if clashes else ""
    print(
        f"\rRestored {len(files)} files into {s.data_dir} on {cxn.original_host}{replaced}, "
        f"owner {s.uid}:{s.gid}."
    )
