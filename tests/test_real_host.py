"""Deploy against real systemd, journald, machined and nspawn: what only a real host shows."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import (
    add_notebooks,
    assert_notebooks_untouched,
    break_configuration,
    deploy,
    fab,
    require,
)
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
    assert "[4/7] restart pluto.service … restarted (it was stopped)" in result.stdout
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
    removed = fab(host, "undeploy")  # the same unit fails that switch too: not ours
    assert removed.code == 0, removed.stdout + removed.stderr
    assert "not Pluto's: nightly-report.service" in removed.stdout
    assert not host.exists("/etc/nixos-containers/pluto.conf")


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
    cgroups = _machine_cgroups()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    etc = {name: Path("/etc", name).read_bytes() for name in MACHINE_ETC}
    fake = FakeHost(tmp_path / "hainich", HostVariant(nixos_version=NIXOS_25_11)).start()
    try:
        add_notebooks(fake)
        private = {"FABRIC_PLUTO_PRIVATE_NETWORK": "1", "FABRIC_PLUTO_INSTALL_MODE": "nix"}
        assert deploy(fake, "--add-import", env=private).code == 0  # a container and a veth
        assert "Journal started" in "\n".join(fake.journal())
        assert not fake.exists("/dev/kmsg") and not fake.exists("/dev/console")
        # The container's systemd uses the host's cgroup2 tree, not the machine's
        # v1 name=systemd hierarchy (which would outlive the host).
        leader = fake.run("machinectl show pluto -p Leader --value").stdout.strip()
        cgroups_of_leader = fake.run(f"cat /proc/{leader}/cgroup").stdout.splitlines()
        payload = "/machine.slice/container@pluto.service/payload"
        assert [line for line in cgroups_of_leader if line.startswith("0::") and payload in line]
        assert not [line for line in cgroups_of_leader if "name=systemd:/machine.slice" in line]
        assert _machine_cgroups() != cgroups  # the host's own cgroup exists meanwhile
    finally:
        fake.stop()
        fake.remove()
    assert sorted(p.name for p in Path("/var/log/journal").glob("**/*")) == journal
    assert _machine_cgroups() == cgroups
    assert subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout == links
    assert {name: Path("/etc", name).read_bytes() for name in MACHINE_ETC} == etc


# What a host that booted systemd, ran sysusers and started containers could touch.
MACHINE_ETC = ("passwd", "group", "shadow", "hostname", "hosts", "machine-id", "os-release")


def _machine_cgroups() -> list[str]:
    """Every cgroup directory on the machine, in all its hierarchies."""
    return sorted(str(p) for p in Path("/sys/fs/cgroup").glob("**/") if p.is_dir())


def test_a_broken_secret_on_a_live_deployment_is_replaced_and_taken_live(deployed):
    deployed.write("/var/lib/pluto-secret/secret", "short\n", owner="2000:2000", mode="0400")
    before = main_pid(deployed)
    result = deploy(deployed, "--show-secret")
    assert result.code == 0, result.stdout + result.stderr
    assert "secret replaced (the old file held no usable secret)" in result.stdout
    assert "took the new secret" in result.stdout
    new = deployed.read("/var/lib/pluto-secret/secret").strip()
    assert len(new) == 32 and f"secret={new}" in result.stdout
    assert main_pid(deployed) == before  # swapped live, notebooks kept running


def test_a_host_whose_configuration_is_broken_already_is_refused_first(host):
    add_notebooks(host)
    break_configuration(host)
    before = host.listing("/etc/nixos", "/data", "/var/lib/pluto-secret")
    result = deploy(host, "--add-import")
    assert result.code == 1
    assert "does not evaluate even without this deploy: error: syntax error" in result.error
    assert "/etc/nixos/broken.nix:1:" in result.error
    assert host.listing("/etc/nixos", "/data", "/var/lib/pluto-secret") == before


def test_nix_errors_are_shown_in_one_line_with_their_location(tmp_path):
    from pluto_deploy.deployment import nix_error
    from tests.conftest import run_nix

    broken = tmp_path / "broken.nix"
    broken.write_text("{ config, ... }: { networking.hostName = ; }\n")
    output = run_nix("--eval", str(broken))  # the real Nix's own message
    line = nix_error(output.stderr.splitlines())
    assert line.startswith("error: syntax error")
    assert f"at {broken}:1:" in line and "\n" not in line


WEBSOCKET_CLIENT = r"""
import base64, os, socket, sys
secret = sys.stdin.readline().strip()
connection = socket.create_connection(("127.0.0.1", 9999), timeout=60)
key = base64.b64encode(os.urandom(16)).decode()
connection.sendall((
    f"GET /?secret={secret} HTTP/1.1\r\nHost: localhost:9999\r\nUpgrade: websocket\r\n"
    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
).encode())
answer = b""
while b"\r\n\r\n" not in answer:
    answer += connection.recv(1024)
print(answer.split(b"\r\n")[0].decode(), flush=True)
data = connection.recv(1024)
while data and data[:1] != b"\x88":
    data = connection.recv(1024)
print("closed by the server", flush=True)
"""


def test_rotation_closes_open_websockets_of_the_old_secret(deployed):
    secret = deployed.read("/var/lib/pluto-secret/secret").strip()
    client = subprocess.Popen(
        ["nsenter", "-t", str(deployed.pid), "-n", "python3", "-c", WEBSOCKET_CLIENT],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        client.stdin.write(secret + "\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "HTTP/1.1 101 Switching Protocols"
        assert client.poll() is None  # the editor's WebSocket stays open …
        rotated = fab(deployed, "rotate-secret")
        assert rotated.code == 0, rotated.stdout + rotated.stderr
        # … until the rotation: then it is closed, so that browser needs the new link.
        assert client.stdout.readline().strip() == "closed by the server"
        assert client.wait(timeout=10) == 0
    finally:
        client.kill()


def test_stops_are_not_failures_and_oom_policy_is_continue_in_real_systemd(deployed):
    shown = deployed.run(
        "systemctl -M pluto show -p OOMPolicy -p SuccessExitStatus pluto.service"
    ).stdout.split()
    assert sorted(shown) == ["OOMPolicy=continue", "SuccessExitStatus=143"]
    deployed.run("systemctl -M pluto restart pluto.service")
    deployed.run("systemctl -M pluto stop pluto.service")
    result = deployed.run("systemctl -M pluto show -p Result -p ActiveState pluto.service")
    assert sorted(result.stdout.split()) == ["ActiveState=inactive", "Result=success"]
    journal = "\n".join(deployed.journal("pluto", "pluto.service"))
    assert "status=143" not in journal and "Failed with result" not in journal


def test_switching_julia_reinstalls_pluto_for_that_julia(deployed):
    result = deploy(deployed, env={"FABRIC_PLUTO_JULIA_PACKAGE": "julia_112"})
    assert result.code == 0, result.stdout + result.stderr
    assert "Installing Pluto 1.0.1 (first start)" in result.stdout
    assert "Pluto 1.0.1 on Julia 1.12.6" in result.stdout
    environments = deployed.run(
        "ls /var/lib/nixos-containers/pluto/var/lib/pluto/depot/environments"
    ).stdout.split()
    assert environments == ["pluto-1.0.1-julia-1.10", "pluto-1.0.1-julia-1.12"]


def test_backup_with_a_wrong_sudo_password_ends_with_one_line(deployed, tmp_path):
    archive = tmp_path / "notebooks.tar.gz"
    result = fab(
        deployed, "backup", "--output", str(archive), user="alice",
        env={"FABRIC_SUDO_PASSWORD": "wrong"}, timeout=60,
    )  # fmt: skip
    assert result.code == 1
    assert result.error.startswith("sudo on hainich rejected the password for alice")
    assert not archive.exists()


def test_a_full_disk_leaves_no_debris_and_says_so(host):
    add_notebooks(host)
    # /etc/nixos on a small file system of its own, nearly full: the module does not fit.
    host.run(
        "cp -a /etc/nixos /root/nixos && mount -t tmpfs -o size=64k tmpfs /etc/nixos && "
        "cp -a /root/nixos/. /etc/nixos/ && "
        "(dd if=/dev/zero of=/etc/nixos/filler bs=1k count=200 2>/dev/null; true) && "
        "rm /etc/nixos/filler && dd if=/dev/zero of=/etc/nixos/filler bs=1k count=52 2>/dev/null"
    )
    configuration = host.read("/etc/nixos/configuration.nix")
    result = deploy(host, "--add-import")
    assert result.code == 1
    assert "the disk is full" in result.error
    listing = host.run("ls -A /etc/nixos").stdout.split()
    assert host.read("/etc/nixos/configuration.nix") == configuration  # put back
    assert not [n for n in listing if n.endswith((".partial", ".pluto-new", ".new"))]
    assert "pluto" not in listing and "pluto.previous.new" not in listing
    for backup in [n for n in listing if n.endswith(".bak")]:
        assert host.read(f"/etc/nixos/{backup}") == configuration  # complete, never empty
    assert not host.run("ls /tmp | grep pluto-deploy", check=False).stdout.strip()


def test_switch_back_stops_when_someone_else_changed_the_generation(deployed):
    from pluto_deploy import scripts

    before = deployed.run("readlink /nix/var/nix/profiles/system").stdout.strip()
    deployed.run("nixos-rebuild switch")  # the same system: no new generation
    deployed.run(
        "ln -sfn system-1-link /nix/var/nix/profiles/system"
    )  # another admin moved the profile meanwhile
    script = scripts.switch_back(before, "system-99-link")
    moved = deployed.run(script, check=False)
    assert moved.code == 3
    assert moved.stdout.strip() == "@@pluto-deploy rollback moved system-1-link"
    assert deployed.run("readlink /nix/var/nix/profiles/system").stdout.strip() == ("system-1-link")


def test_a_stopped_container_is_started_as_the_dry_run_says(deployed):
    deployed.run("systemctl stop container@pluto.service")
    dry = deploy(deployed, "--dry-run")
    assert "Would: start container@pluto (it is inactive)" in dry.stdout
    commands = len(deployed.commands())
    result = deploy(deployed)
    assert result.code == 0, result.stdout + result.stderr
    assert "[4/7] start container@pluto … started (it was inactive)" in result.stdout
    assert not [c for c in deployed.commands()[commands:] if "nixos-rebuild" in c["command"]]
    assert deployed.run("systemctl -M pluto is-active pluto.service").stdout == "active\n"


def test_ownership_is_planned_by_uid_and_gid_and_the_dry_run_names_the_chown(deployed):
    deployed.run("chown 2000:100 /data/pluto")  # right uid, wrong gid
    refused = deploy(deployed)
    assert refused.code == 1 and "is owned by 2000:100, not 2000:2000" in refused.error
    assert deployed.stat("/data/pluto")[:2] == (2000, 100)
    deployed.run("chown 1000:100 /data/pluto")
    dry = deploy(deployed, "--dry-run", "--fix-ownership")
    assert "chown /data/pluto from 1000:100 to 2000:2000 (the directory itself" in dry.stdout
    assert deployed.stat("/data/pluto")[:2] == (1000, 100)
    fixed = deploy(deployed, "--fix-ownership")
    assert fixed.code == 0, fixed.stdout + fixed.stderr
    assert deployed.stat("/data/pluto")[:2] == (2000, 2000)
    assert_notebooks_untouched(deployed)
