"""`fab status` and `fab rotate-secret` on the simulated host."""

from __future__ import annotations

import json

import pytest

from tests.conftest import assert_notebooks_untouched, fab

pytestmark = pytest.mark.integration


def get(host, path: str, cookie: str | None = None) -> int:
    headers = f"{{'Cookie': 'secret={cookie}'}}" if cookie else "{}"
    script = (
        "import urllib.request as u, urllib.error as e\n"
        f"r = u.Request('http://127.0.0.1:9999{path}', headers={headers})\n"
        "try: print(u.urlopen(r, timeout=5).status)\n"
        "except e.HTTPError as x: print(x.code)\n"
    )
    return int(host.run("python3 -", input=script).stdout)


def test_status_of_a_healthy_host_shows_every_field_and_exits_0(deployed):
    result = fab(deployed, "status")
    assert result.code == 0, result.stdout + result.stderr
    for label in ("host", "container", "pluto.service", "Pluto", "/ping", "memory", "cpu", "tasks",
                  "notebooks", "drift", "link"):  # fmt: skip
        assert any(line.startswith(label + " ") for line in result.stdout.splitlines()), label
    assert "hainich: NixOS 25.05." in result.stdout
    assert "Pluto          1.0.1 on Julia 1.10.11" in result.stdout
    assert "/ping          200 OK!" in result.stdout
    assert "MemoryMax 4G" in result.stdout and "TasksMax 4096" in result.stdout
    assert "drift          none" in result.stdout
    assert "secret=********" in result.stdout
    secret = deployed.read("/var/lib/pluto-secret/secret").strip()
    assert secret not in result.stdout
    assert result.stdout.strip().endswith("healthy")


def test_status_json_parses_and_shows_the_secret_only_when_asked(deployed):
    report = json.loads(fab(deployed, "status", "--json").stdout)
    assert report["healthy"] is True and report["problems"] == []
    assert report["pluto"] == {"state": "active", "substate": "running", "restarts": 0,
                               "version": "1.0.1", "julia": "1.10.11"}  # fmt: skip
    assert report["memory"]["max"] == 4 << 30
    # What real systemd reports; "[not set]" where the memory controller is v1-bound.
    current = deployed.run(
        "systemctl show -p MemoryCurrent --value container@pluto.service"
    ).stdout.strip()
    assert report["memory"]["current"] == (int(current) if current.isdigit() else None)
    assert report["data"]["size"] > 0 and report["drift"] == []
    assert report["link"].endswith("secret=********")
    secret = deployed.read("/var/lib/pluto-secret/secret").strip()
    shown = json.loads(fab(deployed, "status", "--json", "--show-secret").stdout)
    assert shown["link"] == f"http://localhost:9999/?secret={secret}"


def test_status_of_a_stopped_pluto_is_unhealthy(deployed):
    deployed.run("systemctl -M pluto stop pluto.service")
    result = fab(deployed, "status")
    assert result.code == 1
    assert "UNHEALTHY: pluto.service is stopped" in result.stdout


def test_status_reports_memory_above_memory_high():
    # Memory accounting needs the memory controller, which this machine binds to cgroup
    # v1, so the host cannot show it: the assessment is checked on systemd's own fields.
    from pluto_deploy import bundle, report
    from pluto_deploy.facts import HostFacts, UnitState
    from pluto_deploy.settings import Settings

    s = Settings.from_mapping({"memory_high": "16M"})
    files = {f"module:{n}": c for n, c in bundle.render(s, "25.05").items()}
    facts = HostFacts(
        container_state="active", pluto_state=UnitState("active", "running", 0), files=files,
        secret="a" * 32,
    )  # fmt: skip
    extras = {"unit.MemoryCurrent": str(40 << 20), "unit.MemoryHigh": str(16 << 20),
              "unit.MemoryMax": str(4 << 30), "pluto.ActiveState": "active"}  # fmt: skip
    report = report.assess(s, "hainich", facts, extras, 200)
    assert report["problems"] == ["memory 40M is above MemoryHigh 16M (throttled)"]


def test_status_reports_drift(deployed):
    deployed.run("sed -i 's/4096/8192/' /etc/nixos/pluto/settings.json")
    result = fab(deployed, "status")
    assert result.code == 1
    assert "drift: settings.json differ from what deploy would push" in result.stdout


def test_status_before_any_deploy_says_so_and_exits_2(host):
    result = fab(host, "status")
    assert result.code == 2
    assert result.stdout == ""  # no screen of question marks
    assert result.error == (
        "Pluto is not deployed on hainich (/etc/nixos/pluto is missing); run `fab deploy`"
    )
    report = json.loads(fab(host, "status", "--json").stdout)
    assert report["deployed"] is False and not report["healthy"]


def test_status_that_cannot_connect_exits_2_and_json_still_says_why(host):
    host.kill_ssh_sessions("admin")
    host.run("systemctl stop sshd.service")
    result = fab(host, "status")
    assert result.code == 2 and result.error.startswith("Could not ")
    shown = fab(host, "status", "--json")
    assert shown.code == 2
    report = json.loads(shown.stdout)
    assert report["healthy"] is False and report["error"].startswith("Could not ")


def test_rotate_secret_swaps_it_live_without_restarting_anything(deployed):
    old = deployed.read("/var/lib/pluto-secret/secret").strip()
    before = deployed.run("systemctl -M pluto show -p MainPID,NRestarts pluto.service").stdout
    container = deployed.run(
        "systemctl show -p MainPID,ActiveEnterTimestamp container@pluto"
    ).stdout
    result = fab(deployed, "rotate-secret")
    assert result.code == 0, result.stdout + result.stderr
    new = deployed.read("/var/lib/pluto-secret/secret").strip()
    assert new != old and len(new) == 32
    assert "swapped in live, no restart" in result.stdout
    assert f"http://localhost:9999/?secret={new}" in result.stdout
    assert old not in result.stdout + result.stderr
    assert get(deployed, f"/?secret={new}") == 200
    assert get(deployed, f"/?secret={old}") == 403
    assert get(deployed, "/edit", cookie=old) == 403
    assert get(deployed, "/edit", cookie=new) == 200
    assert (
        deployed.run("systemctl -M pluto show -p MainPID,NRestarts pluto.service").stdout == before
    )
    assert (
        deployed.run("systemctl show -p MainPID,ActiveEnterTimestamp container@pluto").stdout
        == container
    )
    assert deployed.stat("/var/lib/pluto-secret/secret") == (2000, 2000, "0400")
    assert_notebooks_untouched(deployed)


def test_rotate_secret_with_restart_restarts_only_pluto(deployed):
    container = deployed.run(
        "systemctl show -p MainPID,ActiveEnterTimestamp container@pluto"
    ).stdout
    pid = deployed.run("systemctl -M pluto show -p MainPID --value pluto.service").stdout
    result = fab(deployed, "rotate-secret", "--restart")
    assert result.code == 0, result.stdout + result.stderr
    assert "restarted pluto.service (the container kept running)" in result.stdout
    assert deployed.run("systemctl -M pluto show -p MainPID --value pluto.service").stdout != pid
    assert (
        deployed.run("systemctl show -p MainPID,ActiveEnterTimestamp container@pluto").stdout
        == container
    )
    new = deployed.read("/var/lib/pluto-secret/secret").strip()
    assert get(deployed, f"/?secret={new}") == 200
    assert_notebooks_untouched(deployed)


def test_rotate_secret_when_pluto_is_down_changes_nothing(deployed):
    deployed.run("systemctl -M pluto stop pluto.service")
    old = deployed.read("/var/lib/pluto-secret/secret")
    result = fab(deployed, "rotate-secret")
    assert result.code == 1
    assert result.error == "Pluto is not running on hainich; run `fab deploy` (or see `fab logs`)"
    assert deployed.read("/var/lib/pluto-secret/secret") == old


@pytest.mark.parametrize(
    ("shown", "percent"),
    [  # CPUQuotaPerSecUSec as systemctl 252 prints it (CPUQuota= 200%, 50%, 7550%, 12000%)
        ("2s", "200%"),
        ("500ms", "50%"),
        ("1min 15.500000s", "7550%"),
        ("2min", "12000%"),
        ("infinity", "none"),
    ],
)
def test_cpu_quota_of_any_size_is_read(shown, percent):
    from pluto_deploy.report import _quota_percent

    assert _quota_percent(shown) == percent


def test_status_uptime_does_not_depend_on_the_hosts_time_zone(deployed):
    deployed.run("ln -sf /usr/share/zoneinfo/Pacific/Kiritimati /etc/localtime")  # UTC+14
    shown = deployed.run("systemctl show -p ActiveEnterTimestamp container@pluto.service").stdout
    assert "+14" in shown or "LINT" in shown  # the host really prints local time now
    report = json.loads(fab(deployed, "status", "--json").stdout)
    assert 0 <= report["container"]["uptime_seconds"] < 600
    assert report["container"]["since"].endswith(" UTC")
