"""deploy on flake hosts, on several hosts at once, and its smaller promises."""

from __future__ import annotations

import json
import stat
import time

import pytest

from tests.conftest import add_notebooks, deploy, fab, require
from tests.fakehost import FakeHost, missing_requirements
from tests.test_tunnel_logs import Background

pytestmark = pytest.mark.integration

FLAKE = """{
  description = "hainich";
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";
  outputs = { self, nixpkgs }: {
    nixosConfigurations.hainich = nixpkgs.lib.nixosSystem {
      system = "x86_64-linux";
      modules = [ ./configuration.nix ];
    };
  };
}
"""


def make_flake(host, git: bool) -> None:
    host.write("/etc/nixos/flake.nix", FLAKE)
    if git:
        host.run(
            "cd /etc/nixos && git init -q && git add flake.nix configuration.nix "
            "hardware-configuration.nix && git -c user.name=t -c user.email=t@t commit -qm init"
        )


def test_git_flake_host_gets_the_files_added_to_git(host):
    make_flake(host, git=True)
    host.set_faults(install_seconds=0)
    result = deploy(host, "--add-import")
    assert result.code == 0, result.stdout + result.stderr
    assert "(git add)" in result.stdout
    tracked = host.run("git -C /etc/nixos ls-files pluto").stdout.split()
    assert tracked == [
        "pluto/default.nix",
        "pluto/gate.py",
        "pluto/launcher.jl",
        "pluto/module.nix",
        "pluto/settings.json",
    ]
    assert host.run("systemctl -M pluto is-active pluto.service").stdout.strip() == "active"
    again = deploy(host)
    assert again.code == 0 and "nothing to do" in again.stdout


def test_untracked_module_files_break_a_git_flake_like_nix_does(host):
    """The stand-in copies only files known to git, so deploy's `git add` is what makes it work."""
    make_flake(host, git=True)
    host.set_faults(install_seconds=0)
    assert deploy(host, "--add-import").code == 0
    host.run("git -C /etc/nixos rm -q --cached -r pluto")
    result = host.ssh("sudo nixos-rebuild switch", user="admin")
    assert result.returncode == 1
    assert (
        "pluto" in result.stderr and "No such file" in result.stderr
    ) or "does not exist" in result.stderr


def test_flake_without_import_explains_where_the_module_goes(host):
    make_flake(host, git=False)
    result = deploy(host)
    assert result.code == 1
    assert result.error == (
        "hainich does not import the module yet: add `./pluto` to the modules of "
        "nixosConfigurations.hainich in /etc/nixos/flake.nix (or the imports of its "
        "configuration.nix), or run again with --add-import"
    )


def test_state_version_is_fixed_at_first_deploy(deployed):
    assert json.loads(deployed.read("/etc/nixos/pluto/settings.json"))["stateVersion"] == "25.05"
    before = deployed.listing()
    result = deploy(deployed, env={"FABRIC_PLUTO_STATE_VERSION": "25.11"})
    assert result.code == 1
    assert result.error.startswith('pluto.state_version: "25.11" differs from 25.05, fixed when')
    assert deployed.listing() == before


def test_verbose_shows_the_remote_output(deployed):
    result = deploy(deployed, "-v", "--force")
    assert result.code == 0, result.stderr
    assert "[4/7] | building the system configuration..." in result.stdout
    # Each remote line once: no news lines drawn from the same output beside it.
    assert result.stdout.count("[4/7] | building the system configuration...") == 1
    assert "[4/7]   building the system configuration..." not in result.stdout


def test_open_hands_the_link_to_the_browser(deployed, free_port, tmp_path, monkeypatch):
    opened = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(browser.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("BROWSER", str(browser))  # webbrowser honours $BROWSER
    tunnel = Background(deployed, "tunnel", "--open", "--local-port", str(free_port))
    tunnel.wait_for("Ctrl-C closes it")
    secret = deployed.read("/var/lib/pluto-secret/secret").strip()
    for _ in range(100):
        if opened.exists():
            break
        time.sleep(0.05)
    assert opened.read_text().strip() == f"http://localhost:{free_port}/?secret={secret}"
    assert tunnel.interrupt() == 0


def test_several_hosts_are_deployed_in_turn_without_a_tunnel(tmp_path):
    require(missing_requirements())
    first, second = FakeHost(tmp_path / "a").start(), FakeHost(tmp_path / "b").start()
    try:
        host_key = " ".join((second.directory / "host_key.pub").read_text().split()[:2])
        second.known_hosts.write_text(f"hainich2 {host_key}\n")
        merged = first.ssh_config.read_text() + (
            "Host hainich2\n"
            "  User admin\n"
            f"  IdentityFile {second.identity}\n"
            f"  UserKnownHostsFile {second.known_hosts}\n"
            f"  ProxyCommand {second.proxy_command}\n"
        )
        first.ssh_config.write_text(merged)
        for host in (first, second):
            add_notebooks(host)
            host.set_faults(install_seconds=0)
        result = fab(first, "-H", "admin@hainich,admin@hainich2", "deploy", "--add-import", user="")
        assert result.code == 0, result.stdout + result.stderr
        assert result.stdout.count("[6/7] health … /ping 200 OK!") == 2
        assert result.stdout.count("skipped (several hosts)") == 2
        assert result.stdout.endswith("Summary:\n  hainich: deployed\n  hainich2: deployed\n")
        for host in (first, second):
            assert host.run("systemctl -M pluto is-active pluto.service").stdout.strip() == "active"
        # A failing first host does not stop the second; the summary says which failed.
        first.run("chown 1000:100 /data/pluto")
        second.run("systemctl -M pluto stop pluto.service")
        again = fab(first, "-H", "admin@hainich,admin@hainich2", "deploy", user="")
        assert again.code == 1
        assert "hainich: FAILED: /data/pluto on hainich is owned by 1000:100" in again.stdout
        assert "  hainich2: deployed" in again.stdout
        assert second.run("systemctl -M pluto is-active pluto.service").stdout == "active\n"
    finally:
        for host in (first, second):
            host.stop()
            host.remove()
