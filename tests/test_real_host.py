"""Deploy against real systemd, journald, machined and nspawn: what only a real host shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import add_notebooks, assert_notebooks_untouched, deploy, fab, require
from tests.fakehost import (
    NIXOS_25_11,
    NIXOS_PINNED,
    NIXOS_UNSTABLE,
    FakeHost,
    HostVariant,
    missing_requirements,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def make_host(tmp_path):
    """Start a host of a given variant; stopped and removed afterwards."""
    started = []

    def make(**variant) -> FakeHost:
        require(missing_requirements())
        fake = FakeHost(tmp_path / f"hainich-{len(started)}", HostVariant(**variant)).start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.stop()
        fake.remove()


def main_pid(host) -> str:
    return host.run("systemctl -M pluto show -p MainPID --value pluto.service").stdout.strip()


def pluto_starts(host) -> int:
    journal = host.journal("pluto", "pluto.service")
    return journal.count("Started pluto.service - Pluto.jl notebook server.")


def test_the_host_runs_real_systemd_machined_and_an_nspawn_container(deployed):
    assert deployed.run("readlink /proc/1/exe").stdout.strip().endswith("systemd")
    machines = deployed.run("machinectl list --no-legend").stdout
    assert machines.split()[:3] == ["pluto", "container", "systemd-nspawn"]
    leader = deployed.run("machinectl show pluto -p Leader --value").stdout.strip()
    assert deployed.run(f"readlink /proc/{leader}/exe").stdout.strip().endswith("systemd")
    # Pluto runs as the configured uid, under the module's hardening, from real systemd.
    shown = deployed.run(
        "systemctl -M pluto show -p User -p ProtectSystem -p NoNewPrivileges pluto.service"
    ).stdout.split()
    assert sorted(shown) == ["NoNewPrivileges=yes", "ProtectSystem=strict", "User=pluto"]
    pid = main_pid(deployed)
    uid = deployed.run(
        f"nsenter -t {leader} -p -m -- stat -c %u /proc/{pid}", check=False
    ).stdout.strip()
    assert uid == "2000"


def test_first_deploy_starts_pluto_once_and_never_restarts_it(host):
    add_notebooks(host)
    result = deploy(host, "--add-import")
    assert result.code == 0, result.stdout + result.stderr
    assert "the following new units were started: container@pluto.service" in result.stdout
    assert "container@pluto.service started" in result.stdout
    assert pluto_starts(host) == 1
    assert "Stopping pluto.service" not in "\n".join(host.journal("pluto", "pluto.service"))


def test_noop_deploy_leaves_a_running_pluto_and_its_notebook_processes_alone(deployed):
    before = main_pid(deployed)
    starts = pluto_starts(deployed)
    dry = deploy(deployed, "--dry-run")
    assert "Nothing to change: Pluto is running." in dry.stdout
    result = deploy(deployed)
    assert result.code == 0, result.stdout + result.stderr
    assert "nothing to do" in result.stdout
    assert main_pid(deployed) == before
    assert pluto_starts(deployed) == starts


def test_noop_deploy_starts_a_pluto_that_was_stopped_with_real_systemctl(deployed):
    deployed.run("systemctl -M pluto stop pluto.service")
    assert deployed.run("systemctl -M pluto is-active pluto.service", check=False).stdout == (
        "inactive\n"
    )
    status = fab(deployed, "status")
    assert status.code == 1 and "pluto.service is stopped" in status.stdout
    result = deploy(deployed)
    assert result.code == 0, result.stdout + result.stderr
    assert "restarted pluto.service (it was stopped)" in result.stdout
    assert deployed.run("systemctl -M pluto is-active pluto.service").stdout == "active\n"
    assert_notebooks_untouched(deployed)


@pytest.mark.parametrize("version", ["25.05", "25.11"])
def test_someone_elses_failed_unit_warns_but_does_not_roll_back(make_host, version):
    host = make_host(
        failing_unit=True,
        nixos_version=NIXOS_25_11 if version == "25.11" else HostVariant().nixos_version,
    )
    add_notebooks(host)
    switch = host.ssh("sudo nixos-rebuild switch", user="admin")
    assert switch.returncode == (4 if version == "25.11" else 1)
    assert "the following units failed: nightly-report.service" in switch.stderr
    result = deploy(host, "--add-import")
    assert result.code == 0, result.stdout + result.stderr
    assert "not Pluto's: nightly-report.service" in result.stdout
    assert "Rolled back" not in result.stdout + result.stderr
    assert host.run("systemctl -M pluto is-active pluto.service").stdout == "active\n"


def test_rollback_returns_to_the_generation_before_this_deploy_not_older_ones(deployed):
    # An admin's own rollback earlier: the profile is below the highest generation.
    assert deploy(deployed, env={"FABRIC_PLUTO_TASKS_MAX": "2048"}).code == 0
    deployed.run("nixos-rebuild switch --rollback")
    before = deployed.run("readlink /nix/var/nix/profiles/system").stdout.strip()
    highest = max(
        int(p.split("-")[1]) for p in deployed.run("ls /nix/var/nix/profiles").stdout.split()
        if p.startswith("system-")
    )  # fmt: skip
    assert before != f"system-{highest}-link"
    deployed.set_faults(container_fails="MemoryMax=6G")
    result = deploy(deployed, env={"FABRIC_PLUTO_MEMORY_MAX": "6G"})
    assert result.code == 1
    assert f"system switched back to {before}" in result.error
    assert deployed.run("readlink /nix/var/nix/profiles/system").stdout.strip() == before
    assert deployed.run("systemctl is-active container@pluto.service").stdout == "active\n"


@pytest.mark.parametrize(
    ("nixos_version", "release"),
    [(NIXOS_UNSTABLE, "25.11"), (NIXOS_PINNED, "25.05"), ("26.05.20260601.1234567 (Y)", "26.05")],
)
def test_nixos_version_variants_give_the_release_and_state_version(
    make_host, nixos_version, release
):
    host = make_host(nixos_version=nixos_version)
    result = deploy(host, "--add-import")
    assert result.code == 0, result.stdout + result.stderr
    assert f"NixOS {release}," in result.stdout
    assert json.loads(host.read("/etc/nixos/pluto/settings.json"))["stateVersion"] == release


def test_unparseable_nixos_version_asks_for_state_version(make_host):
    host = make_host(nixos_version="unknown build")
    before = host.listing("/etc/nixos")
    result = deploy(host, "--add-import")
    assert result.code == 1
    assert "set pluto.state_version" in result.error and "unknown build" in result.error
    assert host.listing("/etc/nixos") == before


def test_a_host_installed_before_22_05_keeps_containers_in_the_old_paths(make_host):
    host = make_host(state_version="21.11")
    add_notebooks(host)
    result = deploy(host, "--add-import")
    assert result.code == 0, result.stdout + result.stderr
    assert host.exists("/etc/containers/pluto.conf")
    assert host.exists("/var/lib/containers/pluto/etc/passwd")
    assert not host.exists("/etc/nixos-containers/pluto.conf")
    purged = fab(host, "undeploy", "--purge", "--yes")
    assert purged.code == 0, purged.stdout + purged.stderr
    for path in ("/var/lib/containers/pluto", "/data/pluto", "/var/lib/pluto-secret"):
        assert not host.exists(path)


def test_purge_removes_the_root_despite_immutable_var_empty(deployed):
    attributes = deployed.run("lsattr -d /var/lib/nixos-containers/pluto/var/empty").stdout
    assert attributes.split()[0].count("i") == 1  # as NixOS leaves it
    result = fab(deployed, "undeploy", "--purge", "--yes")
    assert result.code == 0, result.stdout + result.stderr
    assert not deployed.exists("/var/lib/nixos-containers/pluto")
    assert not deployed.exists("/data/pluto")


def test_the_machine_keeps_its_journal_console_and_cgroups(tmp_path):
    require(missing_requirements())
    journal = sorted(p.name for p in Path("/var/log/journal").glob("**/*"))
    cgroups = sorted(Path("/sys/fs/cgroup").glob("**/fakehost-*"))
    fake = FakeHost(tmp_path / "hainich").start()
    try:
        assert "Journal started" in "\n".join(fake.journal())
        assert not fake.exists("/dev/kmsg") and not fake.exists("/dev/console")
    finally:
        fake.stop()
        fake.remove()
    assert sorted(p.name for p in Path("/var/log/journal").glob("**/*")) == journal
    assert sorted(Path("/sys/fs/cgroup").glob("**/fakehost-*")) == cgroups
