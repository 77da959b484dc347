"""Security: verified host keys, secret hygiene, strict input, quoting, unit exposure."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from pluto_deploy import scripts
from pluto_deploy.settings import Settings
from tests.conftest import FAB, ROOT, add_notebooks, deploy, fab, require, run_nix
from tests.test_module import evaluate, pluto_service, settings_json
from tests.test_tunnel_logs import Background


def secret(host) -> str:
    return host.read("/var/lib/pluto-secret/secret").strip()


# -- host keys ------------------------------------------------------------------


@pytest.mark.integration
def test_unknown_host_key_is_refused_and_nothing_runs(host):
    known = host.known_hosts.read_text()
    host.known_hosts.write_text("")
    result = fab(host, "status")
    assert result.code == 2  # could not look
    fingerprint = re.escape(known.split()[1])
    assert re.fullmatch(
        rf"hainich: unknown SSH host key {fingerprint} SHA256:\S+; check it with the host's admin, "
        r"then run again with --accept-new-host-key",
        result.error,
    )
    assert host.commands() == []


@pytest.mark.integration
def test_accept_new_host_key_trusts_and_records_a_first_seen_key(host):
    known = host.known_hosts.read_text()
    host.known_hosts.write_text("")
    result = fab(host, "status", "--accept-new-host-key")
    assert "Added the host key of hainich" in result.stdout
    assert host.known_hosts.read_text().split() == known.split()
    assert "unknown SSH host key" not in fab(host, "status").stderr  # no flag needed any more


@pytest.mark.integration
def test_changed_host_key_is_refused(host, tmp_path):
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True
    )
    other = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    host.known_hosts.write_text(f"hainich {other}\n")
    result = fab(host, "status")
    assert result.code == 2  # could not look
    assert result.error.startswith("hainich: the SSH host key CHANGED (now ssh-ed25519 SHA256:")
    assert "ssh-keygen -R hainich" in result.error
    assert host.commands() == []


def test_the_tunnel_uses_the_same_host_key_policy():
    from fabric import Config, Connection

    from pluto_deploy.tunnel import ssh_command

    config = Config()
    cxn = Connection("admin@hainich", config=config)
    command = ssh_command(cxn, Settings.from_mapping({}))
    assert "StrictHostKeyChecking=yes" in command
    assert any(a.startswith("UserKnownHostsFile=") and "known_hosts" in a for a in command)
    assert "StrictHostKeyChecking=accept-new" in ssh_command(cxn, Settings.from_mapping({}), True)


# -- secret hygiene ---------------------------------------------------------------


def _files_containing(host, value: str) -> list[str]:
    """Host files holding `value`; the value reaches the search through stdin, never argv."""
    script = (
        "import os, sys\n"
        "needle = sys.stdin.readline().strip().encode()\n"
        "for top in ('/etc', '/var', '/nix', '/data', '/home', '/root', '/tmp', '/srv', '/run'):\n"
        "    for base, dirs, files in os.walk(top):\n"
        "        for name in files:\n"
        "            path = os.path.join(base, name)\n"
        "            try:\n"
        "                regular = os.path.isfile(path) and not os.path.islink(path)\n"
        "                if regular and needle in open(path, 'rb').read():\n"
        "                    print(path)\n"
        "            except OSError:\n"
        "                pass\n"
    )
    host.write("/run/find-secret.py", script)
    return sorted(host.run("python3 /run/find-secret.py", input=value + "\n").stdout.split())


def _local_processes_holding(value: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = (
                Path(f"/proc/{pid}/cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
            )
        except OSError:
            continue
        if value in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.integration
def test_the_secret_stays_in_its_file_and_pluto_s_journal(host, free_port):
    add_notebooks(host)
    host.set_faults(install_seconds=0)
    first = deploy(host, "--add-import")
    assert first.code == 0, first.stdout + first.stderr
    old = secret(host)
    rotated = fab(host, "rotate-secret")
    assert rotated.code == 0, rotated.stdout + rotated.stderr
    new = secret(host)
    tunnel = Background(host, "tunnel", "--local-port", str(free_port))
    tunnel.wait_for("Ctrl-C closes it")
    local_holders = _local_processes_holding(new)
    logs = fab(host, "logs", "--no-follow")
    status = fab(host, "status", "--json")
    assert tunnel.interrupt() == 0

    argv = [" ".join(a) for _, a in host.execs()]
    for value in (old, new):
        assert not [a for a in argv if value in a], "secret in a process's arguments on the host"
    assert local_holders == []
    # Pluto prints its link into its own journal (the container's journal files), and
    # nowhere else: not the host's journal, not the Nix store, not a settings file.
    container_journal = "/var/lib/nixos-containers/pluto/var/log/journal/"
    holding_new = _files_containing(host, new)
    assert "/var/lib/pluto-secret/secret" in holding_new
    assert [p for p in holding_new if p.startswith(container_journal)]
    assert not [
        p
        for p in holding_new
        if p != "/var/lib/pluto-secret/secret" and not p.startswith(container_journal)
    ]
    holding_old = _files_containing(host, old)
    assert holding_old and all(p.startswith(container_journal) for p in holding_old)
    assert host.stat("/var/lib/pluto-secret/secret") == (2000, 2000, "0400")
    assert host.stat("/var/lib/pluto-secret") == (2000, 2000, "0700")
    # In the tool's output only as the final link.
    link_only = re.compile(rf"http://localhost:\d+/\?secret=({re.escape(old)}|{re.escape(new)})")
    for output in (first.stdout + first.stderr, rotated.stdout + rotated.stderr, tunnel.output):
        assert output.count(old) + output.count(new) == len(link_only.findall(output))
    for output in (logs.stdout, status.stdout):
        assert old not in output and new not in output
    assert not list(Path(os.environ["HOME"]).rglob("*secret*"))  # no local copy


# -- validation table ---------------------------------------------------------------

BAD_INPUTS = [
    # (id, fab arguments after -H, environment, fabric.yaml `pluto:` values, setup, exact error)
    ("port-0", ["deploy"], {"FABRIC_PLUTO_PORT": "0"}, None, None,
     'FABRIC_PLUTO_PORT: "0" is not a TCP port (1-65535)'),
    ("port-70000", ["deploy"], {}, {"port": 70000}, None,
     "pluto.port: 70000 is not a TCP port (1-65535)"),
    ("port-abc", ["deploy"], {"FABRIC_PLUTO_PORT": "abc"}, None, None,
     'FABRIC_PLUTO_PORT: "abc" is not a TCP port (1-65535)'),
    ("memory-lots", ["deploy"], {}, {"memory_max": "lots"}, None,
     'pluto.memory_max: "lots" is not a size like 4G or 512M'),
    ("memory-negative", ["deploy"], {"FABRIC_PLUTO_MEMORY_MAX": "-1G"}, None, None,
     'FABRIC_PLUTO_MEMORY_MAX: "-1G" is not a size like 4G or 512M'),
    ("cpu-no-percent", ["deploy"], {}, {"cpu_quota": "300"}, None,
     'pluto.cpu_quota: "300" is not a CPU quota like 200% (1% or more, 100% = one core)'),
    ("cpu-zero", ["deploy"], {}, {"cpu_quota": "0%"}, None,
     'pluto.cpu_quota: "0%" is not a CPU quota like 200% (1% or more, 100% = one core)'),
    ("data-relative", ["deploy"], {}, {"data_dir": "data/pluto"}, None,
     'pluto.data_dir: "data/pluto" is not an absolute path'),
    ("data-space", ["deploy"], {}, {"data_dir": "/data/my notebooks"}, None,
     'pluto.data_dir: "/data/my notebooks" may only contain letters, digits and . _ - + @ / '
     "(no spaces, quotes, $, ;, : or other shell or Nix characters)"),
    ("data-semicolon", ["deploy"], {}, {"data_dir": "/data/x;rm -rf /"}, None,
     'pluto.data_dir: "/data/x;rm -rf /" may only contain letters, digits and . _ - + @ / '
     "(no spaces, quotes, $, ;, : or other shell or Nix characters)"),
    ("data-subshell", ["deploy"], {}, {"data_dir": "/data/$(reboot)"}, None,
     'pluto.data_dir: "/data/$(reboot)" may only contain letters, digits and . _ - + @ / '
     "(no spaces, quotes, $, ;, : or other shell or Nix characters)"),
    ("data-nix-interpolation", ["deploy"], {}, {"data_dir": "/data/${pkgs}"}, None,
     'pluto.data_dir: "/data/${pkgs}" may only contain letters, digits and . _ - + @ / '
     "(no spaces, quotes, $, ;, : or other shell or Nix characters)"),
    ("data-newline", ["deploy"], {}, {"data_dir": "/data/a\nb"}, None,
     'pluto.data_dir: "/data/a\\nb" may only contain letters, digits and . _ - + @ / '
     "(no spaces, quotes, $, ;, : or other shell or Nix characters)"),
    ("data-dotdot", ["deploy"], {}, {"data_dir": "/data/../etc"}, None,
     'pluto.data_dir: "/data/../etc" is not a normalised path (write /etc)'),
    ("data-system-dir", ["deploy"], {}, {"data_dir": "/etc/pluto"}, None,
     'pluto.data_dir: "/etc/pluto" is a system directory; use a directory of its own such as '
     "/data/pluto (not /, /etc, /nix, /run, /usr or one directly under /)"),
    ("container-underscore", ["deploy"], {}, {"container": "my_pluto"}, None,
     'pluto.container: "my_pluto" is not a container name NixOS accepts: no _ (use -)'),
    ("container-too-long", ["deploy"], {},
     {"container": "notebooks-2026", "private_network": True, "install_mode": "nix"},
     None, 'pluto.container: "notebooks-2026" is longer than 11 characters, which NixOS refuses '
     "with private_network"),
    ("uid-root", ["deploy"], {}, {"uid": 0}, None, "pluto.uid: 0 is not a uid from 1000 to 65533"),
    ("typo-key", ["deploy"], {}, {"dat_dir": "/data/x"}, None,
     "pluto.dat_dir: unknown setting (did you mean data_dir?)"),
    ("pluto-too-new", ["deploy"], {"FABRIC_PLUTO_PLUTO_VERSION": "2.0.0"}, None, None,
     'FABRIC_PLUTO_PLUTO_VERSION: "2.0.0" is out of range (Pluto 0.19.28 up to 1.x)'),
    ("julia-unknown", ["deploy"], {}, {"julia_package": "julia_19"}, None,
     'pluto.julia_package: "julia_19" is not a Julia package of nixpkgs (julia-lts, julia-lts-bin, '
     "julia_110, julia_110-bin, julia_111, julia_111-bin, julia, julia-bin, julia-stable, "
     "julia-stable-bin, julia_112, julia_112-bin)"),
    ("ephemeral-pkg", ["deploy"], {}, {"ephemeral": True}, None,
     "pluto.ephemeral: true needs install_mode nix (in pkg mode Pluto is installed on first start "
     "and would be reinstalled after every stop)"),
    ("timeout-flag", ["deploy", "--timeout", "abc"], {}, None, None,
     '--timeout: "abc" is not a number of seconds from 10 to 86400'),
    ("uid-taken", ["deploy", "--add-import"], {"FABRIC_PLUTO_UID": "1000"}, None, None,
     "pluto.uid: 1000 belongs to admin on hainich; the container's user has the same uid on the "
     "host, so pick one no host account uses"),
    ("module-dir-outside", ["deploy", "--add-import"], {}, {"module_dir": "/srv/pluto"}, None,
     'pluto.module_dir: "/srv/pluto" is outside /etc/nixos (/etc/nixos) on hainich; keep it there '
     "so the configuration can import it by a relative path"),
    ("not-nixos", ["deploy", "--add-import"], {}, None, "rm /etc/NIXOS",
     "hainich is not NixOS (no /etc/NIXOS); point -H or pluto.host at a NixOS host"),
    ("refused-login", ["deploy"], {}, None, "rm /etc/ssh/authorized_keys.d/admin",
     "SSH login as admin@hainich was refused; use a key the host accepts "
     "(ssh-agent, -i KEY or IdentityFile in ~/.ssh/config)"),
    ("sudo-wrong-password", ["deploy"], {"FABRIC_SUDO_PASSWORD": "wrong"}, None, "user:alice",
     "sudo on hainich rejected the password for alice; run again and retype it"),
    ("unknown-host", ["deploy"], {}, None, "host:nosuchhost.invalid",
     "Unknown host nosuchhost.invalid: neither DNS nor your ssh_config knows it "
     "(pass -H HOST or set pluto.host)"),
    ("local-port-busy", ["tunnel", "--local-port", "{busy}"], {}, None, None,
     "local port {busy} is already in use on this machine by pid {pid} ({comm}); "
     "pick a free one with --local-port N (or pluto.local_port)"),
]  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "env", "values", "setup", "error"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_gives_one_exact_line_and_leaves_the_host_unchanged(
    host, tmp_path, args, env, values, setup, error
):
    user = "admin"
    if setup and setup.startswith("user:"):
        user = setup.split(":", 1)[1]
    elif setup and setup.startswith("host:"):
        user = ""
        args = ["-H", setup.split(":", 1)[1], *args]
    elif setup:
        host.run(setup)
    prefix = []
    if values is not None:
        (tmp_path / "fabric.json").write_text(json.dumps({"pluto": values}))
        prefix = ["-f", str(tmp_path / "fabric.json")]
    before = host.listing()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = [a.replace("{busy}", str(port)) for a in args]
        result = fab(host, *prefix, *args, user=user, env=env)
    comm = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    expected = error.format(busy=port, pid=os.getpid(), comm=comm) if "{busy}" in error else error
    assert result.code != 0
    assert result.error == expected
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert host.listing() == before


def test_the_validation_table_has_at_least_25_cases():
    assert len(BAD_INPUTS) >= 25
    assert len({case[0] for case in BAD_INPUTS}) == len(BAD_INPUTS)


# -- injection -------------------------------------------------------------------------

HOSTILE = "/tmp/x'y; touch /tmp/pwned; $(touch /tmp/pwned2) `touch /tmp/pwned3` \"z"


@pytest.mark.integration
def test_quoting_holds_even_for_values_validation_would_refuse(host):
    """Settings are bypassed here on purpose: the scripts must still treat values as data."""
    s = dataclasses.replace(Settings.from_mapping({}), data_dir=HOSTILE, secret_dir=HOSTILE + "s",
                            container="c'x;y", uid=2000)  # fmt: skip
    for script in (
        scripts.create_data_dir(s),
        scripts.fix_data_dir_owner(s, recursive=False),
        scripts.ensure_secret(s),
        scripts.list_data(s),
        scripts.facts(s, ["default.nix"]),
        scripts.logs(s, 5, follow=False, container_unit=False),
        scripts.purge(s),
    ):
        host.run(script, check=False)
        assert not host.run("ls /tmp/pwned /tmp/pwned2 /tmp/pwned3", check=False).ok, script
    host.run(scripts.create_data_dir(s))
    assert host.stat(HOSTILE)[:2] == (2000, 2000)


@pytest.mark.integration
def test_odd_but_legal_values_arrive_verbatim(host):
    host.set_faults(install_seconds=0)
    env = {
        "FABRIC_PLUTO_DATA_DIR": "/srv/notes-2026.v2+lab@x",
        "FABRIC_PLUTO_CONTAINER": "lab-2",
        "FABRIC_PLUTO_MODULE_DIR": "/etc/nixos/pluto-lab",
        "FABRIC_PLUTO_PORT": "8111",
    }
    result = deploy(host, "--add-import", env=env)
    assert result.code == 0, result.stdout + result.stderr
    assert host.stat("/srv/notes-2026.v2+lab@x") == (2000, 2000, "0750")
    assert "./pluto-lab" in host.read("/etc/nixos/configuration.nix")
    settings = json.loads(host.read("/etc/nixos/pluto-lab/settings.json"))
    assert (settings["dataDir"], settings["containerName"], settings["port"]) == (
        "/srv/notes-2026.v2+lab@x", "lab-2", 8111,
    )  # fmt: skip
    conf = host.read("/etc/nixos-containers/lab-2.conf")
    assert "--bind=/srv/notes-2026.v2+lab@x:/srv/notes-2026.v2+lab@x" in conf
    # Pluto saves a new notebook into exactly that directory, as its uid.
    key = secret(host)
    request = (
        "import http.client as h\nc = h.HTTPConnection('127.0.0.1', 8111)\n"
        f"c.request('GET', '/new?secret={key}')\nassert c.getresponse().status == 303\n"
    )
    host.run("python3 -", input=request)
    created = host.run("ls /srv/notes-2026.v2+lab@x").stdout.split()
    assert len(created) == 1 and created[0].startswith("Untitled-")
    assert host.stat(f"/srv/notes-2026.v2+lab@x/{created[0]}") == (2000, 2000, "0600")


# -- unit exposure ----------------------------------------------------------------------


def unit_file(service: dict) -> str:
    """pluto.service as NixOS would render it from the module's systemd.services.pluto."""

    def value(v) -> str:
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, list):
            return " ".join(map(str, v))
        return str(v)

    lines = ["[Unit]", f"Description={service['description']}", "", "[Service]"]
    lines += [f'Environment="{k}={v}"' for k, v in sorted(service["environment"].items())]
    lines += [f"{k}={value(v)}" for k, v in service["serviceConfig"].items()]
    return "\n".join(lines) + "\n"


def exposure(tmp_path: Path, service: dict) -> float:
    analyze = shutil.which("systemd-analyze")
    require(None if analyze else "systemd-analyze is missing (apt-get install systemd)")
    path = tmp_path / "pluto.service"
    path.write_text(unit_file(service))
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for pluto\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def test_pluto_service_scores_at_most_3_0_with_systemd_analyze(tmp_path):
    config, error = evaluate(tmp_path, settings_json())
    assert error == ""
    assert exposure(tmp_path, pluto_service(config)) <= 3.0


def test_the_escape_hatch_relaxes_one_setting_and_the_score_shows_it(tmp_path):
    strict, _ = evaluate(tmp_path, settings_json())
    relaxed, _ = evaluate(
        tmp_path / "relaxed", settings_json(hardening_exceptions=["RestrictNamespaces"])
    )
    assert "RestrictNamespaces" not in pluto_service(relaxed)["serviceConfig"]
    assert exposure(tmp_path, pluto_service(relaxed)) > exposure(
        tmp_path / "relaxed", pluto_service(strict)
    )


def test_module_files_parse_with_real_nix():
    # The secret rule shared by tool, scripts and launcher: tests/test_secretfile.py.
    assert run_nix("--parse", str(ROOT / "files" / "default.nix")).returncode == 0
    assert run_nix("--parse", str(ROOT / "files" / "module.nix")).returncode == 0


@pytest.mark.integration
def test_a_locked_key_not_in_the_agent_gets_the_ssh_add_hint(host, tmp_path):
    locked = tmp_path / "locked_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(locked)],
                   check=True)  # fmt: skip
    config = tmp_path / "ssh_config"
    config.write_text(
        host.ssh_config.read_text().replace(
            f"IdentityFile {host.identity}", f"IdentityFile {locked}"
        )
    )
    result = subprocess.run(
        [FAB, "-S", str(config), "-H", "admin@hainich", "status"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"SSH login as admin@hainich: the key {locked} is locked with a passphrase and not in "
        f"your agent; run `ssh-add {locked}` and try again"
    )
