"""More deploy scenarios on the simulated host: networks, modes, faults, prompts."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import (
    FAB,
    ROOT,
    add_notebooks,
    assert_notebooks_untouched,
    deploy,
    fab,
    require,
)
from tests.fakehost import SUDO_PASSWORD, missing_requirements
from tests.test_tunnel_logs import Background

pytestmark = pytest.mark.integration


def answers(host, path: str, address: str = "127.0.0.1", port: int = 9999) -> str:
    script = (
        "import urllib.request as u\n"
        f"try: print(u.urlopen('http://{address}:{port}{path}', timeout=3).status)\n"
        "except Exception as e: print(type(e).__name__)\n"
    )
    return host.run("python3 -", input=script).stdout.strip()


def test_private_network_puts_pluto_on_the_container_address(host, free_port):
    add_notebooks(host)
    host.set_faults(install_seconds=0)
    private = {"FABRIC_PLUTO_PRIVATE_NETWORK": "1", "FABRIC_PLUTO_INSTALL_MODE": "nix"}
    result = deploy(host, "--add-import", env=private)
    assert result.code == 0, result.stdout + result.stderr
    assert answers(host, "/ping", "10.233.1.2") == "200"
    assert answers(host, "/ping") == "URLError"  # nothing on the host's loopback
    assert "PRIVATE_NETWORK=1" in host.read("/etc/nixos-containers/pluto.conf")
    assert host.run("nixos-container show-ip pluto").stdout.strip() == "10.233.1.2"
    tunnel = Background(host, "tunnel", "--local-port", str(free_port), env=private)
    tunnel.wait_for("Ctrl-C closes it")
    forwards = subprocess.run(["pgrep", "-af", "ssh -N"], capture_output=True, text=True).stdout
    assert f"-L 127.0.0.1:{free_port}:10.233.1.2:9999" in forwards
    assert tunnel.interrupt() == 0
    assert_notebooks_untouched(host)


def test_nix_mode_ephemeral_container_starts_without_installing(host):
    add_notebooks(host)
    env = {"FABRIC_PLUTO_INSTALL_MODE": "nix", "FABRIC_PLUTO_EPHEMERAL": "1"}
    result = deploy(host, "--add-import", env=env)
    assert result.code == 0, result.stdout + result.stderr
    assert "Installing Pluto" not in result.stdout
    assert host.exists("/run/nixos-containers/pluto/var")
    assert not host.exists("/var/lib/nixos-containers/pluto")
    settings = json.loads(host.read("/etc/nixos/pluto/settings.json"))
    assert (settings["installMode"], settings["ephemeral"]) == ("nix", True)
    assert "created /var/lib/pluto-state/pluto for the ephemeral container's depot" in (
        result.stdout
    )
    assert host.stat("/var/lib/pluto-state/pluto")[:2] == (2000, 2000)
    # What Julia writes to its depot outlives the ephemeral root; the rest of it does not.
    inside = "nsenter -t $(machinectl show pluto -p Leader --value) -m --"
    host.run(f"{inside} sh -c 'echo cache > /var/lib/pluto/compiled.marker && touch /root/x'")
    host.run("systemctl restart container@pluto.service")
    assert host.read("/var/lib/pluto-state/pluto/compiled.marker") == "cache\n"
    assert host.run(f"{inside} cat /var/lib/pluto/compiled.marker").stdout == "cache\n"
    assert not host.run(f"{inside} test -e /root/x", check=False).ok
    assert_notebooks_untouched(host)


def test_port_already_taken_on_the_host_is_refused_before_changing_it(host):
    add_notebooks(host)
    host.set_faults(install_seconds=0)
    host.occupy_port(9999)
    before = host.listing("/etc/nixos", "/data", "/var/lib/pluto-secret")
    result = deploy(host, "--add-import")
    assert result.code == 1
    assert result.error == (
        "pluto.port: 9999 is already in use on hainich by something else (the container "
        "shares the host's network); pick a free port or stop what listens there"
    )
    assert host.listing("/etc/nixos", "/data", "/var/lib/pluto-secret") == before
    assert not host.exists("/etc/nixos/pluto")
    assert "./pluto" not in host.read("/etc/nixos/configuration.nix")
    assert_notebooks_untouched(host)


def test_failing_evaluation_restores_the_files_and_needs_no_switch_back(deployed):
    before = deployed.read("/etc/nixos/pluto/settings.json")
    generation = deployed.run("readlink /nix/var/nix/profiles/system").stdout
    deployed.set_faults(switch_fails=True)
    result = deploy(deployed, env={"FABRIC_PLUTO_TASKS_MAX": "2048"})
    assert result.code == 1
    assert "nixos-rebuild switch failed (exit 1)" in result.error
    assert result.error.endswith("Rolled back: /etc/nixos/pluto restored to its previous version.")
    assert deployed.read("/etc/nixos/pluto/settings.json") == before
    assert deployed.run("readlink /nix/var/nix/profiles/system").stdout == generation
    assert not any(c["command"] and "--rollback" in c["command"] for c in deployed.commands())


def test_a_container_of_the_same_name_from_elsewhere_is_left_alone(host):
    host.write("/etc/nixos-containers/pluto.conf", "SYSTEM_PATH=/nix/store/other\n")
    before = host.listing()
    result = deploy(host, "--add-import")
    assert result.code == 1
    assert result.error == (
        'pluto.container: "pluto" is already a container on hainich that this tool did not deploy '
        "(/etc/nixos-containers/pluto.conf); choose another name"
    )
    assert host.listing() == before


def test_prompt_for_sudo_password(host):
    add_notebooks(host)
    host.set_faults(install_seconds=0)
    result = fab(host, "--prompt-for-sudo-password", "deploy", "--no-tunnel", "--add-import",
                 user="alice", input=SUDO_PASSWORD + "\n")  # fmt: skip
    assert result.code == 0, result.stdout + result.stderr
    assert SUDO_PASSWORD not in result.stdout + result.stderr


def test_fix_ownership_recursive_chowns_the_contents_too(host):
    host.run("install -d -o 1000 -g 100 /data/pluto")
    host.write("/data/pluto/old.jl", "x = 1\n", owner="1000:100", mode="0644")
    host.set_faults(install_seconds=0)
    result = deploy(host, "--add-import", "--fix-ownership", "--fix-ownership-recursive")
    assert result.code == 0, result.stdout + result.stderr
    assert host.stat("/data/pluto/old.jl") == (2000, 2000, "0644")
    assert host.read("/data/pluto/old.jl") == "x = 1\n"


def test_simulated_host_started_by_hand_works_with_fab_and_stops_on_ctrl_c(tmp_path):
    require(missing_requirements())
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakehost", "--dir", str(tmp_path / "manual")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    config = None
    for line in process.stdout:
        found = re.match(r"ssh_config: (\S+)", line)
        config = found.group(1) if found else config
        if "Ctrl-C stops it." in line:
            break
    result = subprocess.run(
        [FAB, "-S", config, "-H", "hainich", "status", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert json.loads(result.stdout)["host"] == "hainich"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    assert "Stopped." in process.stdout.read()
    assert not (tmp_path / "manual").exists()


def _interactive(
    host, *args: str, replies: list[tuple[str, str]], timeout: float = 60
) -> tuple[int, str]:
    """Run fab on a pseudo-terminal, answering each prompt that appears."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [FAB, "-S", str(host.ssh_config), "-H", "admin@hainich", *args],
        cwd=ROOT, stdin=follower, stdout=follower, stderr=follower, close_fds=True,
    )  # fmt: skip
    os.close(follower)
    output, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 4096).decode(errors="replace")
        except OSError:
            break
        output += chunk
        if replies and replies[0][0] in output:
            os.write(leader, (replies.pop(0)[1] + "\n").encode())
    os.close(leader)
    return process.wait(timeout=10), output


def test_purge_asks_on_a_terminal_and_stops_without_the_host_name(deployed):
    code, output = _interactive(deployed, "undeploy", "--purge", replies=[
        ("first? [Y/n]", "n"), ("Type the host name:", "nope"),
    ])  # fmt: skip
    assert code == 1, output
    assert "Not confirmed; nothing was changed." in output
    assert deployed.exists("/etc/nixos/pluto")
    assert_notebooks_untouched(deployed)
    code, output = _interactive(deployed, "undeploy", "--purge", replies=[
        ("first? [Y/n]", "n"), ("Type the host name:", "hainich"),
    ])  # fmt: skip
    assert code == 0, output
    assert not deployed.exists("/data/pluto")
