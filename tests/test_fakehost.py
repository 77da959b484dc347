"""The simulated NixOS host itself: real SSH, real isolation, clean teardown."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import break_configuration, require
from tests.fakehost import SUDO_PASSWORD, FakeHost, missing_requirements

pytestmark = pytest.mark.integration


def test_root_and_every_simulated_user_log_in_over_real_ssh(host):
    for user, uid in (("root", 0), ("admin", 1000), ("alice", 1001), ("guest", 1002)):
        result = host.ssh("id -u; hostname", user=user)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [str(uid), "hainich"]


def test_sudo_works_without_password_for_admin_and_only_with_it_for_alice(host):
    assert host.ssh("sudo -n id -u", user="admin").stdout.strip() == "0"
    refused = host.ssh("sudo -n id -u", user="alice")
    assert refused.returncode != 0 and "password is required" in refused.stderr
    accepted = host.ssh("sudo -S -p '' id -u", user="alice", input=SUDO_PASSWORD + "\n")
    assert accepted.stdout.strip() == "0", accepted.stderr
    assert host.ssh("sudo -n true", user="guest").returncode != 0


def test_host_looks_like_nixos_with_stand_ins_on_its_path(host):
    result = host.ssh(
        "test -e /etc/NIXOS && nixos-version && command -v nixos-rebuild", user="guest"
    )
    assert result.returncode == 0, result.stderr
    version, rebuild = result.stdout.split("\n")[:2]
    assert version.startswith("25.05.")
    assert rebuild == "/run/current-system/sw/bin/nixos-rebuild"


def test_host_loopback_is_not_the_clients(host):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        probe = f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 2)'"
        assert not host.run(probe, check=False).ok
    addresses = host.run("ip -o addr show").stdout
    assert "127.0.0.1/8" in addresses and len(addresses.strip().splitlines()) <= 2  # lo only


def test_every_ssh_request_and_every_program_is_logged(host):
    host.ssh("echo marker-$((6*7))", user="admin")
    assert {"user": "admin", "command": "echo marker-$((6*7))"}.items() <= host.commands()[
        -1
    ].items()
    assert any(argv[:2] == ["bash", "-c"] and "marker" in argv[2] for _, argv in host.execs())
    assert host.connections() >= 1


def test_host_keeps_its_own_etc_and_nix(host):
    host.ssh("echo changed >> /etc/hosts && touch /nix/var/sim-probe && mkdir -p /data/x")
    assert "changed" in host.read("/etc/hosts")
    assert "changed" not in Path("/etc/hosts").read_text()
    assert not Path("/data/x").exists()
    assert not Path("/nix/var/sim-probe").exists()
    assert not host.run("touch /usr/probe", check=False).ok  # the machine's /usr is read-only


def _mounts() -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and pid != str(os.getpid()):
            found.append(cmdline)
    return found


def test_stopping_leaves_no_processes_mounts_users_or_files(tmp_path):
    require(missing_requirements())
    passwd_before, mounts_before = Path("/etc/passwd").read_text(), _mounts()
    fake = FakeHost(tmp_path / "hainich").start()
    fake.ssh("sleep 300 >/dev/null 2>&1 &", user="admin")  # a stray process on the host
    assert _processes_mentioning("sleep 300")
    fake.stop()
    fake.remove()
    assert _processes_mentioning(str(tmp_path)) == []
    assert _processes_mentioning("sleep 300") == []
    assert _mounts() == mounts_before
    assert Path("/etc/passwd").read_text() == passwd_before
    assert not (tmp_path / "hainich").exists()


def test_ssh_config_printed_for_humans_works_with_openssh(host):
    result = subprocess.run(
        ["ssh", "-F", str(host.ssh_config), "-o", "BatchMode=yes", "hainich", "whoami"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout.strip() == "admin", result.stderr


def test_nixos_rebuild_fails_like_nix_on_a_syntax_error_in_an_imported_file(host):
    break_configuration(host)
    generation = host.run("readlink /nix/var/nix/profiles/system").stdout
    result = host.ssh("sudo nixos-rebuild switch", user="admin")
    assert result.returncode == 1
    assert "syntax error" in result.stderr and "broken.nix" in result.stderr
    assert host.run("readlink /nix/var/nix/profiles/system").stdout == generation


def test_nixos_rebuild_without_the_module_starts_no_container(host):
    result = host.ssh("sudo nixos-rebuild switch", user="admin")
    assert result.returncode == 0, result.stderr
    assert host.run("nixos-container list").stdout == ""
    assert host.run("systemctl is-active container@pluto", check=False).stdout.strip() == "inactive"
