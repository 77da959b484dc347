"""The built wheel works on its own: `fab` and `pluto-deploy` from outside the repository."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, add_notebooks

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A fresh venv with only the wheel built from this checkout (and what it requires)."""
    where = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(where), str(ROOT)],
        check=True,
    )
    wheel = next(where.glob("pluto_nixos_deploy-*.whl"))
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True)
    project = where / "elsewhere"
    project.mkdir()
    # What a user of the installed package writes to use plain `fab`.
    (project / "fabfile.py").write_text("from tasks import ns  # noqa: F401\n")
    return {"bin": venv / "bin", "project": project}


def test_the_wheel_carries_the_module_files_and_fab_lists_the_tasks(installed):
    listed = subprocess.run(
        [str(installed["bin"] / "fab"), "--list"], cwd=installed["project"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "deploy" in listed.stdout and "rotate-secret" in listed.stdout
    files = subprocess.run(
        [str(installed["bin"] / "python"), "-c",
         "from pluto_deploy import bundle; print(bundle.FILES); "
         "print(sorted(p.name for p in bundle.FILES.iterdir() if p.suffix))"],
        cwd=installed["project"], capture_output=True, text=True,
    )  # fmt: skip
    location, names = files.stdout.splitlines()
    assert "site-packages/pluto_deploy/files" in location
    assert names == "['default.nix', 'gate.py', 'launcher.jl', 'module.nix']"


@pytest.mark.parametrize("program", ["fab", "pluto-deploy"])
def test_a_dry_run_deploy_works_from_the_installed_package(installed, host, program):
    add_notebooks(host)
    result = subprocess.run(
        [str(installed["bin"] / program), "-S", str(host.ssh_config), "-H", "admin@hainich",
         "deploy", "--dry-run", "--add-import"],
        cwd=installed["project"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr  # would change something
    assert "/etc/nixos/pluto/module.nix (new)" in result.stdout
    assert "Dry run: nothing was changed on hainich." in result.stdout
    assert not host.exists("/etc/nixos/pluto")
