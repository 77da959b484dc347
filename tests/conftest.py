"""Shared fixtures: the simulated host, an isolated HOME, and CI's no-skip rule."""

from __future__ import annotations

import os
import shutil
import subprocess
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


def nix_instantiate() -> str:
    path = shutil.which("nix-instantiate")
    require(None if path else "nix-instantiate is missing (apt-get install nix-bin)")
    return path


def run_nix(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([nix_instantiate(), *args], capture_output=True, text=True, timeout=120)
