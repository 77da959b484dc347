"""files/: the NixOS module, evaluated with real Nix against the mini module system."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from pluto_deploy import bundle
from pluto_deploy.settings import Settings
from tests.conftest import ROOT, run_nix

EVAL_HOST = ROOT / "tests" / "fakehost" / "nix" / "eval-host.nix"
NIX_FILES = sorted([*ROOT.glob("files/*.nix"), *ROOT.glob("tests/fakehost/nix/*.nix")])
CONFIGURATION = """{ config, pkgs, ... }:
{
  imports = [ ./pluto ];
  networking.hostName = "hainich";
  system.stateVersion = "25.05";
%s}
"""


def evaluate(tmp_path: Path, module_settings: dict, extra: str = "") -> tuple[dict | None, str]:
    etc = tmp_path / "nixos"
    (etc / "pluto").mkdir(parents=True, exist_ok=True)
    for name in bundle.STATIC_FILES:
        (etc / "pluto" / name).write_bytes((bundle.FILES / name).read_bytes())
    (etc / "pluto" / bundle.SETTINGS_FILE).write_text(json.dumps(module_settings))
    (etc / "configuration.nix").write_text(CONFIGURATION % extra)
    result = run_nix(
        "--eval", "--strict", "--json", "--readonly-mode", str(EVAL_HOST),
        "--arg", "configuration", str(etc / "configuration.nix"),
    )  # fmt: skip
    if result.returncode != 0:
        return None, result.stderr
    return json.loads(result.stdout), ""


def settings_json(**overrides) -> dict:
    return bundle.module_settings(Settings.from_mapping(overrides), "25.05")


def pluto_service(config: dict, name: str = "pluto") -> dict:
    return config["containers"][name]["config"]["systemd"]["services"]["pluto"]


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_nix_file_parses(path):
    result = run_nix("--parse", str(path))
    assert result.returncode == 0, result.stderr


def test_defaults_give_one_writable_and_one_read_only_bind_mount(tmp_path):
    config, error = evaluate(tmp_path, settings_json())
    assert error == ""
    container = config["containers"]["pluto"]
    assert container["autoStart"] is True
    assert container["bindMounts"] == {
        "/data/pluto": {"hostPath": "/data/pluto", "isReadOnly": False},
        "/var/lib/pluto-secret": {"hostPath": "/var/lib/pluto-secret", "isReadOnly": True},
    }
    assert container["privateNetwork"] is False and container["ephemeral"] is False
    assert config["units"]["container@pluto"]["serviceConfig"] == {
        "MemoryMax": "4G", "MemoryHigh": "3584M", "CPUQuota": "200%", "TasksMax": 4096,
    }  # fmt: skip


def test_pluto_runs_as_the_fixed_uid_with_the_launcher_interface(tmp_path):
    config, _ = evaluate(tmp_path, settings_json(uid=2345, gid=2346, port=8123))
    inner = config["containers"]["pluto"]["config"]
    assert inner["users"]["users"]["pluto"]["uid"] == 2345
    assert inner["users"]["groups"]["pluto"]["gid"] == 2346
    assert inner["networking"]["firewall"]["enable"] is False
    assert inner["system"]["stateVersion"] == "25.05"
    service = pluto_service(config)
    assert service["environment"]["PLUTO_PORT"] == "8123"
    assert service["environment"]["PLUTO_HOST"] == "127.0.0.1"
    assert service["environment"]["JULIA_PLUTO_NEW_NOTEBOOKS_DIR"] == "/data/pluto"
    assert not service["environment"]["PLUTO_SECRET_FILE"].startswith("/nix/store")
    unit = service["serviceConfig"]
    assert (unit["User"], unit["WorkingDirectory"], unit["Restart"]) == (
        "pluto",
        "/data/pluto",
        "on-failure",
    )
    assert re.fullmatch(
        r"/nix/store/\S+-julia-bin-1\.10\.11/bin/julia .* /nix/store/\S+-launcher\.jl",
        unit["ExecStart"],
    )


def test_service_is_hardened_but_keeps_wx_memory_for_julia(tmp_path):
    config, _ = evaluate(tmp_path, settings_json())
    unit = pluto_service(config)["serviceConfig"]
    expected = {
        "NoNewPrivileges": True, "PrivateTmp": True, "ProtectSystem": "strict", "ProtectHome": True,
        "PrivateDevices": True, "ProtectKernelTunables": True, "ProtectKernelModules": True,
        "ProtectKernelLogs": True, "ProtectControlGroups": True, "RestrictNamespaces": True,
        "RestrictRealtime": True, "RestrictSUIDSGID": True, "LockPersonality": True,
        "SystemCallArchitectures": "native", "CapabilityBoundingSet": "", "UMask": "0077",
        "RestrictAddressFamilies": ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"],
        "ReadWritePaths": ["/data/pluto"], "MemoryDenyWriteExecute": False,
    }  # fmt: skip
    assert {key: unit.get(key) for key in expected} == expected


def test_hardening_exception_removes_exactly_that_setting(tmp_path):
    config, _ = evaluate(tmp_path, settings_json(hardening_exceptions=["RestrictNamespaces"]))
    unit = pluto_service(config)["serviceConfig"]
    assert "RestrictNamespaces" not in unit and unit["NoNewPrivileges"] is True


def test_private_network_moves_pluto_to_the_container_address(tmp_path):
    values = settings_json(
        private_network=True,
        install_mode="nix",
        host_address="10.250.0.1",
        local_address="10.250.0.2",
    )
    config, _ = evaluate(tmp_path, values)
    container = config["containers"]["pluto"]
    assert (container["hostAddress"], container["localAddress"]) == ("10.250.0.1", "10.250.0.2")
    assert pluto_service(config)["environment"]["PLUTO_HOST"] == "10.250.0.2"
    firewall = container["config"]["networking"]["firewall"]
    assert firewall == {"enable": True, "allowedTCPPorts": [9999]}


def test_nix_mode_uses_julia_with_pluto_from_the_store_and_may_be_ephemeral(tmp_path):
    config, _ = evaluate(tmp_path, settings_json(install_mode="nix", ephemeral=True))
    assert config["containers"]["pluto"]["ephemeral"] is True
    assert (
        "-julia-1.10.11-env-1.10.11/bin/julia"
        in pluto_service(config)["serviceConfig"]["ExecStart"]
    )


def test_ephemeral_without_nix_mode_fails_the_assertion(tmp_path):
    values = settings_json(install_mode="nix", ephemeral=True) | {"installMode": "pkg"}
    config, _ = evaluate(tmp_path, values)
    assert config["failedAssertions"] == [
        'services.pluto.ephemeral needs services.pluto.installMode = "nix".'
    ]


def test_values_reach_nix_as_inert_data(tmp_path):
    hostile = '/srv/${builtins.abort "evaluated"}"; x = "'
    values = settings_json() | {"dataDir": hostile}
    config, error = evaluate(tmp_path, values)
    assert error == ""
    assert config["containers"]["pluto"]["bindMounts"][hostile]["hostPath"] == hostile


def test_an_out_of_range_value_fails_like_nixos(tmp_path):
    for port in (70000, 80):  # the Python validation refuses the same values
        _, error = evaluate(tmp_path, settings_json() | {"port": port})
        assert (
            "A definition for option `services.pluto.port' is not of type `integer between 1024"
            in error
        )


def test_admins_own_definition_wins_over_the_deployed_values_without_mk_force(tmp_path):
    extra = '  services.pluto.memoryMax = "8G";\n  services.pluto.port = 4321;\n'
    config, error = evaluate(tmp_path, settings_json(), extra=extra)
    assert error == ""
    limits = config["units"]["container@pluto"]["serviceConfig"]
    assert limits["MemoryMax"] == "8G" and limits["MemoryHigh"] == "3584M"  # others deployed
    assert pluto_service(config)["environment"]["PLUTO_PORT"] == "4321"


@pytest.mark.parametrize(("quota", "cores"), [("50%", "1"), ("150%", "1"), ("200%", "2"),
                                              ("350%", "3"), ("1600%", "16")])  # fmt: skip
def test_julia_parallelism_follows_the_cpu_quota_not_the_host(tmp_path, quota, cores):
    config, error = evaluate(tmp_path, settings_json(cpu_quota=quota))
    assert error == ""
    environment = pluto_service(config)["environment"]
    assert environment["JULIA_NUM_THREADS"] == cores
    assert environment["JULIA_NUM_PRECOMPILE_TASKS"] == cores


def test_stops_and_one_notebooks_oom_are_not_failures_of_pluto(tmp_path):
    config, error = evaluate(tmp_path, settings_json())
    assert error == ""
    service = pluto_service(config)["serviceConfig"]
    assert service["SuccessExitStatus"] == 143
    assert service["OOMPolicy"] == "continue"


def test_module_and_settings_agree_on_hardening_exceptions_and_state_versions(tmp_path):
    from pluto_deploy import values

    for name in values.HARDENING_EXCEPTIONS:
        _, error = evaluate(tmp_path, settings_json() | {"hardeningExceptions": [name]})
        assert error == "", name
    _, error = evaluate(tmp_path, settings_json() | {"hardeningExceptions": ["ProtectSystem"]})
    assert "services.pluto.hardeningExceptions" in error
    with pytest.raises(Exception, match="hardening"):
        Settings.from_mapping({"hardening_exceptions": ["ProtectSystem"]})
    for version, accepted in (("25.05", True), ("24.11", True), ("25.07", False)):
        _, error = evaluate(tmp_path, settings_json() | {"stateVersion": version})
        assert (error == "") is accepted, version
        try:
            values.state_version(version)
            python_accepts = True
        except values.Invalid:
            python_accepts = False
        assert python_accepts is accepted, version


def test_settings_json_is_plain_data_with_every_option():
    rendered = json.loads(bundle.render(Settings.from_mapping({}), "25.05")[bundle.SETTINGS_FILE])
    module = (bundle.FILES / "module.nix").read_text()
    instance = module[
        module.index("instanceOptions = defaults: {") : module.index("sessionOptions")
    ]
    declared = set(re.findall(r"^    (\w+) = (?:lib\.)?mk", instance, re.M))
    assert set(rendered) == declared | {"enable"}


LAUNCHER = (bundle.FILES / "launcher.jl").read_text()
STANDIN = (ROOT / "tests" / "fakehost" / "sim" / "pluto.py").read_text()


def test_launcher_stand_in_and_module_agree_on_the_environment(tmp_path):
    config, _ = evaluate(tmp_path, settings_json())
    module_sets = {k for k in pluto_service(config)["environment"] if k.startswith("PLUTO_")}
    launcher_reads = set(re.findall(r'setting\("(\w+)"\)', LAUNCHER))
    standin_reads = set(re.findall(r'setting\("(\w+)"\)', STANDIN)) - {"JULIA_DEPOT_PATH"}
    assert launcher_reads == module_sets
    # PLUTO_BASE_URL: only a session's launcher reads it (files/module.nix `launcher`).
    assert standin_reads == module_sets | {"PLUTO_BASE_URL"}


PROGRESS_LINES = [
    "Installing Pluto ",
    "Starting Pluto ",
    "Secret loaded (fingerprint ",
    "Secret rotated (fingerprint ",
    "keeping the current secret: ",
]


@pytest.mark.parametrize("line", PROGRESS_LINES)
def test_launcher_and_stand_in_print_the_same_progress_lines(line):
    assert line in LAUNCHER and line in STANDIN


def test_changing_a_setting_only_changes_settings_json():
    before = bundle.render(Settings.from_mapping({}), "25.05")
    after = bundle.render(replace(Settings.from_mapping({}), memory_max="8G"), "25.05")
    assert [name for name in before if before[name] != after[name]] == [bundle.SETTINGS_FILE]
