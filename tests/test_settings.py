"""Settings are parsed once, strictly, with one clear line per mistake."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import Exit

from pluto_deploy import settings, values
from pluto_deploy.settings import Invalid, Settings

ROOT = Path(__file__).resolve().parent.parent
FAB = str(Path(sys.executable).with_name("fab"))


def test_defaults_are_valid_and_local_port_follows_port():
    s = Settings.from_mapping({"port": 8123})
    assert (s.port, s.local_port, s.data_dir, s.uid) == (8123, 8123, "/data/pluto", 2000)
    assert s.secret_file == "/var/lib/pluto-secret/secret"
    assert s.pluto_address == "127.0.0.1"


def test_private_network_moves_pluto_to_the_container_address():
    s = Settings.from_mapping(
        {"private_network": True, "install_mode": "nix", "local_address": "10.250.0.2"}
    )
    assert s.pluto_address == "10.250.0.2"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("port", 0, "pluto.port: 0 is not a TCP port (1-65535)"),
        (
            "port",
            80,
            "pluto.port: 80 is below 1024, which Pluto (no capabilities in its container) "
            "cannot listen on; use 1024-65535",
        ),
        ("memory_max", "lots", 'pluto.memory_max: "lots" is not a size like 4G or 512M'),
        ("data_dir", "/data/../etc", 'pluto.data_dir: "/data/../etc" is not a normalised path'),
        ("container", "my_pluto", 'pluto.container: "my_pluto" is not a container name NixOS'),
        ("uid", 999, "pluto.uid: 999 is not a uid from 1000 to 65533"),
        ("datadir", "/x", "pluto.datadir: unknown setting (did you mean data_dir?)"),
    ],
)
def test_invalid_values_name_key_value_and_what_is_allowed(key, value, message):
    with pytest.raises(Invalid) as problem:
        Settings.from_mapping({key: value})
    assert str(problem.value).startswith(message)
    assert "\n" not in str(problem.value)


def test_memory_high_above_memory_max_is_refused():
    with pytest.raises(Invalid, match=r"pluto.memory_high: \"5G\" is above memory_max 4G"):
        Settings.from_mapping({"memory_high": "5G"})


def test_ephemeral_needs_nix_mode():
    with pytest.raises(Invalid, match=r"pluto\.ephemeral: true needs install_mode nix"):
        Settings.from_mapping({"ephemeral": True})
    assert Settings.from_mapping({"ephemeral": True, "install_mode": "nix"}).ephemeral


def test_long_container_name_only_refused_with_private_network():
    assert Settings.from_mapping({"container": "notebooks-2026"}).container == "notebooks-2026"
    with pytest.raises(Invalid, match="longer than 11 characters"):
        Settings.from_mapping(
            {"container": "notebooks-2026", "private_network": True, "install_mode": "nix"}
        )


def test_flag_values_are_named_by_their_flag():
    class Config(dict):
        pass

    with pytest.raises(Exit) as problem:
        settings.load(Config(pluto={}), local_port=("--local-port", "0"))
    assert problem.value.message == '--local-port: "0" is not a TCP port (1-65535)'


def test_sizes_convert_like_systemd():
    assert values.size_in_bytes("4G") == 4 * 1024**3
    assert values.size_in_bytes("3.5G") == int(3.5 * 1024**3)
    assert values.size_in_bytes("512") == 512


def _fab(*args, env=None):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")}
    environment.update(env or {})
    return subprocess.run(
        [FAB, *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )


def test_environment_overrides_reach_the_settings():
    result = _fab("settings", env={"FABRIC_PLUTO_PORT": "8123", "FABRIC_PLUTO_EPHEMERAL": "0"})
    assert result.returncode == 0, result.stderr
    assert re.search(r"^port +8123 +# ", result.stdout, re.M)


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        ("FABRIC_PLUTO_PORT", "abc", 'FABRIC_PLUTO_PORT: "abc" is not a TCP port (1-65535)'),
        ("FABRIC_PLUTO_DATADIR", "/x", "FABRIC_PLUTO_DATADIR: unknown setting (did you mean"),
        ("FABRIC_PLUTO_EPHEMERAL", "false", 'FABRIC_PLUTO_EPHEMERAL: "false" is not 1 or 0'),
    ],
)
def test_bad_environment_gives_one_line_and_no_traceback(variable, value, line):
    result = _fab("settings", env={variable: value})
    assert result.returncode != 0
    assert result.stderr.startswith(line)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"julia_package": "julia_111", "pluto_version": "0.20.3"},
         'pluto.pluto_version: Pluto 0.20.3 does not work with Julia 1.11 (pluto.julia_package '
         '"julia_111"); use Pluto 0.20.4 or newer'),
        ({"julia_package": "julia_112", "pluto_version": "0.20.19"},
         'pluto.pluto_version: Pluto 0.20.19 does not work with Julia 1.12 (pluto.julia_package '
         '"julia_112"); use Pluto 0.20.20 or newer'),
        ({"private_network": True},
         "pluto.private_network: true needs install_mode nix: a private network has no route "
         "out unless the host NATs it (networking.nat), so Pkg could not install Pluto at the "
         "first start"),
        ({"data_dir": "/home/alice/notebooks"},
         'pluto.data_dir: "/home/alice/notebooks" is under /home, which pluto.service\'s '
         "hardening hides from Pluto; use a directory such as /data/pluto or "
         "/var/lib/pluto-secret"),
        ({"secret_dir": "/var/tmp/pluto"},
         'pluto.secret_dir: "/var/tmp/pluto" is under /var/tmp, which pluto.service\'s '
         "hardening hides from Pluto; use a directory such as /data/pluto or "
         "/var/lib/pluto-secret"),
        ({"data_dir": "/var/lib/pluto"},
         'pluto.data_dir: "/var/lib/pluto" is pluto.service\'s own StateDirectory, which '
         "pluto.service's hardening hides from Pluto; use a directory such as /data/pluto or "
         "/var/lib/pluto-secret"),
    ],
)  # fmt: skip
def test_combinations_that_cannot_work_in_the_container_are_refused(settings, message):
    with pytest.raises(Invalid) as problem:
        Settings.from_mapping(settings)
    assert str(problem.value) == message


@pytest.mark.parametrize(
    ("julia_package", "pluto_version"),
    [("julia-lts", "0.19.28"), ("julia_111", "0.20.4"), ("julia_112", "0.20.20"),
     ("julia_112", "1.0.1")],
)  # fmt: skip
def test_released_pluto_julia_pairs_are_accepted(julia_package, pluto_version):
    s = Settings.from_mapping({"julia_package": julia_package, "pluto_version": pluto_version})
    assert (s.julia_package, s.pluto_version) == (julia_package, pluto_version)
