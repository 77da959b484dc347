"""Shared fixtures: the simulated host, an isolated HOME, and CI's no-skip rule."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakehost import FakeHost, missing_requirements

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parent.parent


def require(problem: str | None) -> None:
    """Skip locally, but fail under CI=true, when a real part is missing."""
    if problem is None:
        return
    if ON_CI:
        pytest.fail(f"CI=true and {problem}", pytrace=False)
    pytest.skip(problem)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Keep the developer's ~/.ssh, ~/.fabric.yaml and ssh-agent out of every test."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    for variable in [v for v in os.environ if v.startswith("FABRIC_")]:
        monkeypatch.delenv(variable)
    return home


@pytest.fixture
def host(tmp_path):
    """A fresh simulated NixOS host "hainich"; stopped and removed afterwards."""
    require(missing_requirements())
    fake = FakeHost(tmp_path / "hainich")
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
        fake.remove()


@pytest.fixture
def free_port() -> int:
    """A local TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def eventually(check, timeout: float = 30, what: str = "the condition") -> None:
    """Wait until `check()` is true, polling; fail after `timeout` seconds (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(0.05)


def nix_instantiate() -> str:
    path = shutil.which("nix-instantiate")
    require(None if path else "nix-instantiate is missing (apt-get install nix-bin)")
    return path


def run_nix(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([nix_instantiate(), *args], capture_output=True, text=True, timeout=120)


FAB = str(Path(sys.executable).with_name("fab"))


@dataclass
class Fab:
    """The result of one `fab` run: exit code, output, and the last line of stderr."""

    code: int
    stdout: str
    stderr: str

    @property
    def error(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def fab(host: FakeHost, *args: str, user: str = "admin", env: dict | None = None,
        input: str | None = None, timeout: float = 180) -> Fab:  # fmt: skip
    """Run the real `fab` CLI from the repository against the simulated host."""
    command = [FAB, "-S", str(host.ssh_config)]
    if user:
        command += ["-H", f"{user}@hainich"]
    done = subprocess.run(
        [*command, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Fab(done.returncode, done.stdout, done.stderr)


NOTEBOOKS = {
    "/data/pluto/analysis.jl": "### A Pluto.jl notebook ###\n# v0.20.0\nx = 1\n",
    "/data/pluto/course/week 1.jl": "### A Pluto.jl notebook ###\ny = 2\n",
}


def add_notebooks(host) -> None:
    """Notebooks that exist before the first deploy; every scenario must keep them."""
    host.run("install -d -o 2000 -g 2000 -m 0750 /data/pluto /data/pluto/course")
    for path, text in NOTEBOOKS.items():
        host.write(path, text, owner="2000:2000", mode="0600")


def assert_notebooks_untouched(host) -> None:
    for path, text in NOTEBOOKS.items():
        assert host.read(path) == text
        assert host.stat(path) == (2000, 2000, "0600")


def break_configuration(host) -> None:
    """An admin's own mistake: configuration.nix imports a file with a Nix syntax error."""
    host.write("/etc/nixos/broken.nix", "{ config, ... }: { networking.hostName = ; }\n")
    configuration = host.read("/etc/nixos/configuration.nix")
    host.write(
        "/etc/nixos/configuration.nix",
        configuration.replace(
            "./hardware-configuration.nix", "./hardware-configuration.nix ./broken.nix"
        ),
    )


def deploy(host, *args, no_tunnel: bool = True, **kwargs):
    return fab(host, "deploy", *(["--no-tunnel"] if no_tunnel else []), *args, **kwargs)


@pytest.fixture
def deployed(host):
    """A host where Pluto was deployed once (as admin, with --add-import)."""
    add_notebooks(host)
    host.set_faults(install_seconds=0.2)
    result = deploy(host, "--add-import")
    assert result.code == 0, result.stdout + result.stderr
    return host
