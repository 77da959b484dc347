"""Backups of the notebooks: streamed to this machine, checked before they are restored."""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from fabric import Connection
from invoke import Exit

from . import scripts
from .report import human
from .settings import Settings
from .transfer import byte_counter, download


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


def download_backup(cxn: Connection, s: Settings, path: Path) -> None:
    """Stream a .tar.gz of the notebooks into `path` (created 0600, never overwritten), verify it.

    Nothing is staged on the host; a failed or interrupted download leaves no file.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise Exit(f"--output: {path} already exists; choose another file") from None
    except OSError as problem:
        raise Exit(f"--output: cannot create {path}: {problem.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            progress = byte_counter(f"backup {s.data_dir}")
            size = download(cxn, scripts.archive_data(s), out, progress)
        files = check_archive(path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    print(
        f"\rBacked up {s.data_dir} on {cxn.original_host} to {path}: "
        f"{human(size)}, {len(files)} files, verified."
    )
