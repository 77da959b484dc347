"""A deployed simulated host for the benchmarks, and a small table printer."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.fakehost import FakeHost, missing_requirements

ROOT = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).with_name("fab"))


def fab(host: FakeHost, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [FAB, "-S", str(host.ssh_config), "-H", "admin@hainich", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600, **kwargs,
    )  # fmt: skip


@contextlib.contextmanager
def simulated_host(deploy: bool = True):
    problem = missing_requirements()
    if problem:
        sys.exit(f"cannot run the benchmark: {problem}")
    os.environ["HOME"] = tempfile.mkdtemp(prefix="bench-home-")
    os.environ.pop("SSH_AUTH_SOCK", None)
    with FakeHost() as host:
        host.set_faults(install_seconds=0)
        if deploy:
            result = fab(host, "deploy", "--no-tunnel", "--add-import")
            if result.returncode != 0:
                sys.exit(f"deploy failed:\n{result.stdout}{result.stderr}")
        yield host


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
