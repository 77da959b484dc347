"""`fab deploy` against the simulated host over real SSH: end state, idempotency, failures."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import signal
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import (
    FAB,
    ROOT,
    add_notebooks,
    assert_notebooks_untouched,
    deploy,
    eventually,
    fab,
)
from tests.fakehost import SUDO_PASSWORD

pytestmark = pytest.mark.integration


def pluto_answers(host, path: str) -> int:
    script = (
        "import urllib.request as u, urllib.error as e\n"
        f"try: print(u.urlopen('http://127.0.0.1:9999{path}', timeout=5).status)\n"
        "except e.HTTPError as x: print(x.code)\n"
    )
    return int(host.run("python3 -", input=script).stdout)


def secret_on(host) -> str:
    return host.read("/var/lib/pluto-secret/secret").strip()


@pytest.mark.parametrize("user", ["admin", "root"])
def test_first_deploy_converges_the_host(host, user):
    add_notebooks(host)
    result = deploy(host, "--add-import", "--show-secret", user=user)
    assert result.code == 0, result.stdout + result.stderr
    for name in ("default.nix", "module.nix", "launcher.jl", "settings.json"):
        assert host.stat(f"/etc/nixos/pluto/{name}") == (0, 0, "0644")
    for name in ("default.nix", "module.nix", "launcher.jl"):
        assert (
            host.read(f"/etc/nixos/pluto/{name}").encode() == (ROOT / "files" / name).read_bytes()
        )
    assert json.loads(host.read("/etc/nixos/pluto/settings.json"))["stateVersion"] == "25.05"
    assert host.stat("/var/lib/pluto-secret") == (2000, 2000, "0700")
    assert host.stat("/var/lib/pluto-secret/secret") == (2000, 2000, "0400")
    assert re.fullmatch(r"[A-Za-z0-9]{32}", secret_on(host))
    assert host.stat("/data/pluto") == (2000, 2000, "0750")
    assert any("nixos-rebuild switch" in c["command"] for c in host.commands() if c["command"])
    assert host.run("systemctl -M pluto is-active pluto.service").stdout.strip() == "active"
    assert pluto_answers(host, "/ping") == 200
    assert pluto_answers(host, f"/?secret={secret_on(host)}") == 200
    assert f"http://localhost:9999/?secret={secret_on(host)}" in result.stdout
    steps = [line[:5] for line in result.stdout.splitlines() if re.match(r"\[\d/7\] \S", line)]
    assert steps == [f"[{n}/7]" for n in range(1, 8)]
    assert_notebooks_untouched(host)


def test_first_deploy_with_a_sudo_password(host):
    add_notebooks(host)
    host.set_faults(install_seconds=0)
    result = deploy(host, "--add-import", user="alice", env={"FABRIC_SUDO_PASSWORD": SUDO_PASSWORD})
    assert result.code == 0, result.stdout + result.stderr
    assert SUDO_PASSWORD not in result.stdout + result.stderr
    assert host.run("systemctl -M pluto is-active pluto.service").stdout.strip() == "active"


def test_second_deploy_is_a_noop_over_one_connection_and_one_command(deployed):
    connections, commands = deployed.connections(), len(deployed.commands())
    result = deploy(deployed)
    assert result.code == 0, result.stderr
    new = deployed.commands()[commands:]
    assert deployed.connections() - connections == 1
    assert len(new) == 1 and "nixos-rebuild" not in new[0]["command"]
    assert "nothing to do" in result.stdout and "module up to date" in result.stdout
    assert_notebooks_untouched(deployed)


def test_changed_setting_uploads_only_settings_json_and_restarts_pluto(deployed):
    before = {
        n: deployed.read(f"/etc/nixos/pluto/{n}")
        for n in ("default.nix", "module.nix", "launcher.jl")
    }
    starts = deployed.journal("pluto", "pluto.service").count(
        "Started pluto.service - Pluto.jl notebook server."
    )
    start = len(deployed.execs())
    result = deploy(deployed, env={"FABRIC_PLUTO_MEMORY_MAX": "6G"})
    assert result.code == 0, result.stdout + result.stderr
    installed = [
        argv for _, argv in deployed.execs()[start:] if argv[0] == "install" and "0644" in argv
    ]
    assert [argv[-1].rsplit("/", 1)[-1] for argv in installed] == [".settings.json.new"]
    assert {n: deployed.read(f"/etc/nixos/pluto/{n}") for n in before} == before
    assert json.loads(deployed.read("/etc/nixos/pluto/settings.json"))["memoryMax"] == "6G"
    assert deployed.run(
        "systemctl show -p MemoryMax --value container@pluto"
    ).stdout.strip() == str(6 << 30)
    journal = deployed.journal("pluto", "pluto.service")
    assert journal.count("Started pluto.service - Pluto.jl notebook server.") == starts + 1
    assert f"secret={secret_on(deployed)}" not in result.stdout  # not a terminal
    assert "secret=******** (--show-secret)" in result.stdout
    assert_notebooks_untouched(deployed)


def test_deploy_without_h_uses_pluto_host(deployed):
    result = fab(
        deployed, "deploy", "--no-tunnel", user="", env={"FABRIC_PLUTO_HOST": "admin@hainich"}
    )
    assert result.code == 0, result.stderr
    assert "pre-flight hainich" in result.stdout


def test_not_nixos_is_refused_and_nothing_changes(host):
    host.run("rm /etc/NIXOS")
    before = host.listing()
    result = deploy(host, "--add-import")
    assert result.code == 1
    assert (
        result.error
        == "hainich is not NixOS (no /etc/NIXOS); point -H or pluto.host at a NixOS host"
    )
    assert host.listing() == before


def test_missing_import_is_explained_and_add_import_adds_it_once(host):
    before = host.listing()
    result = deploy(host)
    assert result.code == 1
    assert "add `./pluto` to `imports = [ ... ];` in /etc/nixos/configuration.nix" in result.error
    assert host.listing() == before
    host.set_faults(install_seconds=0)
    assert deploy(host, "--add-import").code == 0
    again = deploy(host, "--add-import")
    assert again.code == 0
    configuration = host.read("/etc/nixos/configuration.nix")
    assert configuration.count("./pluto") == 1
    backups = host.run("ls /etc/nixos").stdout.split()
    assert len([b for b in backups if b.startswith("configuration.nix.pluto-")]) == 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {},
            "sudo on hainich asks alice for a password; run again with --prompt-for-sudo-password",
        ),
        ({"FABRIC_SUDO_PASSWORD": "wrong"}, "sudo on hainich rejected the password for alice"),
        (
            {"USER_UNDER_TEST": "guest"},
            "guest has no sudo on hainich (not in the wheel group); log in as root or as a "
            "wheel user (-H)",
        ),
        (
            {"USER_UNDER_TEST": "guest", "FABRIC_SUDO_PASSWORD": "anything"},
            "guest has no sudo on hainich (not in the wheel group)",
        ),
    ],
)
def test_sudo_password_missing_or_wrong_is_one_clear_line(host, env, message):
    before = host.listing()
    user = env.pop("USER_UNDER_TEST", "alice")
    result = deploy(host, "--add-import", user=user, env=env)
    assert result.code == 1
    assert result.error.startswith(message)
    assert "Traceback" not in result.stderr
    assert host.listing() == before


def test_data_dir_owned_by_someone_else_stops_until_fix_ownership(host):
    host.run("install -d -o 1000 -g 100 -m 0755 /data/pluto")
    host.write("/data/pluto/mine.jl", "x = 1\n", owner="1000:100", mode="0644")
    before = host.listing()
    refused = deploy(host, "--add-import")
    assert refused.code == 1
    assert refused.error.startswith("/data/pluto on hainich is owned by 1000:100, not 2000:2000")
    assert host.listing() == before
    host.set_faults(install_seconds=0)
    fixed = deploy(host, "--add-import", "--fix-ownership")
    assert fixed.code == 0, fixed.stdout + fixed.stderr
    assert host.stat("/data/pluto") == (2000, 2000, "0750")
    assert host.stat("/data/pluto/mine.jl") == (1000, 100, "0644")


def test_failed_switch_rolls_back_files_and_generation(deployed):
    settings_before = deployed.read("/etc/nixos/pluto/settings.json")
    generation = deployed.run("readlink /nix/var/nix/profiles/system").stdout
    deployed.set_faults(container_fails="MemoryMax=6G")
    result = deploy(deployed, env={"FABRIC_PLUTO_MEMORY_MAX": "6G"})
    assert result.code == 1
    assert "activated the system but container@pluto.service is" in result.error
    assert result.error.endswith(f"system switched back to {generation.strip()}.")
    assert deployed.read("/etc/nixos/pluto/settings.json") == settings_before
    assert deployed.run("readlink /nix/var/nix/profiles/system").stdout == generation
    # Exactly that generation, with `nix-env --switch-generation`, never a blind --rollback.
    assert not any(c["command"] and "--rollback" in c["command"] for c in deployed.commands())
    assert deployed.run("systemctl is-active container@pluto.service").stdout.strip() == "active"
    assert_notebooks_untouched(deployed)


def test_link_never_printed_times_out_with_journal_tail_and_rolls_back(deployed):
    deployed.set_faults(link_never_printed=True)
    started = time.monotonic()
    result = deploy(deployed, "--timeout", "10", env={"FABRIC_PLUTO_CPU_QUOTA": "150%"})
    assert result.code == 1
    assert 10 <= time.monotonic() - started < 60
    assert "Pluto printed no link within 10s (--timeout)" in result.error
    assert "Last lines of pluto.service on hainich:" in result.stdout
    assert "[ Info: Loading..." in result.stdout
    assert "Rolled back" in result.error
    assert json.loads(deployed.read("/etc/nixos/pluto/settings.json"))["cpuQuota"] == "200%"


def test_crash_loop_fails_fast(deployed):
    deployed.set_faults(crash_on_start=True)
    started = time.monotonic()
    result = deploy(deployed, env={"FABRIC_PLUTO_CPU_QUOTA": "150%"})
    assert result.code == 1
    assert time.monotonic() - started < 60
    assert "pluto.service keeps crashing" in result.error
    assert "simulated crash on start" in result.stdout
    assert_notebooks_untouched(deployed)


def test_dry_run_changes_nothing_and_shows_the_diff(deployed):
    before = deployed.listing()
    result = deploy(deployed, "--dry-run", env={"FABRIC_PLUTO_MEMORY_MAX": "6G"})
    assert result.code == 3, result.stderr  # would change something
    assert '-  "memoryMax": "4G",' in result.stdout and '+  "memoryMax": "6G",' in result.stdout
    assert "run nixos-rebuild switch" in result.stdout
    assert "Dry run: nothing was changed on hainich." in result.stdout
    assert deployed.listing() == before


def _interrupt_when(host, marker: str, *args: str) -> tuple[int, str]:
    process = subprocess.Popen(
        [FAB, "-S", str(host.ssh_config), "-H", "admin@hainich", "deploy", "--no-tunnel", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output = ""
    for line in process.stdout:
        output += line
        if marker in line:
            process.send_signal(signal.SIGINT)
            break
    output += process.stdout.read()
    return process.wait(timeout=60), output


def test_interrupted_upload_leaves_the_old_files(deployed):
    deployed.set_faults(sftp_delay=3)
    before = deployed.listing("/etc/nixos")
    code, output = _interrupt_when(deployed, "pre-flight hainich …", "--force")
    eventually(
        lambda: "sftp-server" not in "\n".join(deployed.processes()),
        what="the interrupted upload's SFTP session ending",
    )
    assert code == 130, output
    assert "Interrupted: nothing was changed on the host." in output
    assert deployed.listing("/etc/nixos") == before


def test_interrupted_rebuild_completes_on_the_host(deployed):
    deployed.set_faults(rebuild_seconds=2)
    code, _ = _interrupt_when(deployed, "[3/7]")
    assert code in (0, 130)  # the interrupt may land after the command finished
    eventually(
        lambda: "nixos_rebuild.py" not in "\n".join(deployed.processes()),
        timeout=60,
        what="the rebuild finishing on the host",
    )
    assert not deployed.run("ls -a /etc/nixos/pluto | grep -q '\\.new$'", check=False).ok
    assert deployed.run("systemctl is-active container@pluto").stdout.strip() == "active"


def test_bad_local_port_flag_is_refused_before_connecting(host):
    result = fab(host, "deploy", "--local-port", "0")
    assert result.code == 1 and result.error == '--local-port: "0" is not a TCP port (1-65535)'
    assert host.connections() == 0


def test_tunnel_from_deploy_serves_pluto_until_ctrl_c(deployed, free_port):
    # On a terminal, as a person runs it: deploy ends in the open tunnel.
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [FAB, "-S", str(deployed.ssh_config), "-H", "admin@hainich", "deploy",
         "--local-port", str(free_port)],
        cwd=ROOT, stdin=follower, stdout=follower, stderr=follower, close_fds=True,
    )  # fmt: skip
    os.close(follower)
    output = ""
    deadline = time.monotonic() + 60
    while "Ctrl-C closes it" not in output and time.monotonic() < deadline:
        output += os.read(leader, 4096).decode(errors="replace")
    link = re.search(r"http://localhost:\d+/\?secret=\w+", output)
    assert link, output
    url = link.group().replace("localhost", "127.0.0.1")
    assert urllib.request.urlopen(url, timeout=10).status == 200
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=20) == 0
    with contextlib.suppress(OSError):
        output += os.read(leader, 65536).decode(errors="replace")
    os.close(leader)
    assert "Tunnel closed." in output


def test_deploy_in_a_script_opens_no_tunnel_and_prints_no_secret(deployed, free_port):
    result = deploy(deployed, "--local-port", str(free_port), no_tunnel=False)
    assert result.code == 0, result.stdout + result.stderr
    assert "skipped (the output is not a terminal)" in result.stdout
    assert secret_on(deployed) not in result.stdout + result.stderr
    assert "\x1b" not in result.stdout  # no control characters in a log


def test_dry_run_exit_code_says_whether_deploy_would_change_something(deployed):
    assert deploy(deployed, "--dry-run").code == 0
    changed = deploy(deployed, "--dry-run", env={"FABRIC_PLUTO_TASKS_MAX": "2048"})
    assert changed.code == 3 and "Would: write settings.json" in changed.stdout
