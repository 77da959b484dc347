"""Show the state of Pluto on the host in one screen."""

from __future__ import annotations

import re
import time

from invoke import Exit

from . import bundle
from .facts import HostFacts, UnitState
from .journal import local_link, mask
from .plan import plan
from .settings import Settings

SIZE_UNITS = "BKMGT"


def human(size: int | None) -> str:
    if size is None:
        return "?"
    value, unit = float(size), 0
    while value >= 1024 and unit < len(SIZE_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    return f"{value:.1f}{SIZE_UNITS[unit]}".replace(".0", "") if unit else f"{size}B"


def _number(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def read_extras(output: str) -> dict[str, str]:
    """The status_extras lines: unit.X=, pluto.X=, cpu_window=, started=, data_size=, disk=."""
    extras = {}
    for line in output.splitlines():
        key, _, value = line.partition("=")
        if key.startswith(("unit.", "pluto.")) or key in (
            "cpu_window",
            "started",
            "data_size",
            "disk",
        ):
            extras[key] = value
    return extras


# systemd's time span units (man:systemd.time(7), "PARSING TIME SPANS"), in seconds.
TIMESPAN_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1, "min": 60, "h": 3600, "d": 86400,
                  "w": 604800, "M": 2629800, "y": 31557600}  # fmt: skip
TIMESPAN_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(us|ms|s|min|h|d|w|M|y)")


def _timespan_seconds(text: str) -> float | None:
    """ "1min 15.500000s", "2s", "500ms" (systemctl show) in seconds; None if not one."""
    parts = text.split()
    matches = [TIMESPAN_PART.fullmatch(part) for part in parts]
    if not parts or not all(matches):
        return None
    return sum(float(m.group(1)) * TIMESPAN_UNITS[m.group(2)] for m in matches)


def _quota_percent(text: str | None) -> str:
    """systemd's CPUQuotaPerSecUSec as a CPUQuota percentage, whatever its size."""
    if not text or text == "infinity":
        return "none"
    seconds = _timespan_seconds(text)
    return "?" if seconds is None else f"{round(seconds * 100, 2):g}%"


def _utc(stamp: str) -> str | None:
    """A `--timestamp=unix` value as UTC time, whatever the host's time zone."""
    if not stamp.startswith("@") or not stamp[1:].isdigit():
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(stamp[1:])))


def _seconds_since(stamp: str, now: int) -> int | None:
    """Seconds since a `systemctl show --timestamp=unix` value ("@1796420965")."""
    if not stamp.startswith("@") or not stamp[1:].isdigit():
        return None
    return now - int(stamp[1:])


def assess(
    s: Settings, host: str, facts: HostFacts, extras: dict[str, str], ping: int | None
) -> dict:
    """Every fact status shows, plus `problems`: why the host is not healthy (empty if it is)."""
    problems = []
    deployed = facts.module_file(bundle.SETTINGS_FILE) is not None
    if not deployed:
        problems.append(f"Pluto is not deployed on {host} (no {s.module_dir}); run `fab deploy`")
    container = facts.container_state or "inactive"
    if deployed and container != "active":
        problems.append(f"container@{s.container} is {container}")
    pluto = UnitState.parse(
        " ".join(f"{k}={v}" for k, v in extras.items() if k.startswith("pluto.")), "pluto."
    )
    pluto_state = pluto.active
    if container == "active" and not pluto.running:
        problems.append(f"pluto.service is {pluto.words}")
    if container == "active" and ping != 200:
        problems.append(f"/ping: {ping or 'no answer'}")

    memory = {
        k: _number(extras.get(f"unit.Memory{k.title()}"))
        for k in ("current", "peak", "high", "max")
    }
    if memory["current"] and memory["high"] and memory["current"] > memory["high"]:
        problems.append(
            f"memory {human(memory['current'])} is above MemoryHigh {human(memory['high'])} "
            "(throttled)"
        )
    elif memory["current"] and memory["max"] and memory["current"] > 0.9 * memory["max"]:
        problems.append(
            f"memory {human(memory['current'])} is near MemoryMax {human(memory['max'])}"
        )
    tasks = {
        "current": _number(extras.get("unit.TasksCurrent")),
        "max": _number(extras.get("unit.TasksMax")),
    }
    if tasks["current"] and tasks["max"] and tasks["current"] > 0.9 * tasks["max"]:
        problems.append(f"{tasks['current']} tasks, near TasksMax {tasks['max']}")
    window = [int(x) for x in extras.get("cpu_window", "").split() if x.isdigit()]
    cpu = round((window[1] - window[0]) / 1e7, 1) if len(window) == 2 else None

    # Drift is what deploy's own plan would do now (pluto_deploy/plan.py).
    try:
        planned = plan(facts, s, host)
        drift, would = planned.changed, planned.actions(s)
    except Exit as refusal:
        drift, would = [], [f"refuse: {refusal.message}"]
    if deployed and drift:
        problems.append(
            f"drift: {', '.join(drift)} differ from what deploy would push (run fab deploy)"
        )
    disk = [int(x) for x in extras.get("disk", "").split() if x.isdigit()]
    if len(disk) == 2 and (disk[0] < 1 << 30 or disk[0] < 0.05 * disk[1]):
        problems.append(f"only {human(disk[0])} free on the disk of {s.data_dir}")
    if deployed and not facts.secret:
        problems.append(f"no usable secret in {s.secret_file}")

    started = extras.get("started", "").partition("Starting Pluto ")[2]
    version, _, julia = started.partition(" on Julia ")
    return {
        "host": host,
        "nixos_version": facts.nixos_version,
        "deployed": deployed,
        "container": {
            "name": s.container,
            "state": container,
            "since": _utc(extras.get("unit.ActiveEnterTimestamp", "")),
            "uptime_seconds": _seconds_since(
                extras.get("unit.ActiveEnterTimestamp", ""), facts.now
            ),
        },
        "pluto": {
            "state": pluto_state or None,
            "substate": extras.get("pluto.SubState") or None,
            "restarts": _number(extras.get("pluto.NRestarts")),
            "version": version or None,
            "julia": julia or None,
        },
        "ping": ping,
        "memory": memory,
        "cpu": {
            "percent_of_one_core": cpu,
            "quota": _quota_percent(extras.get("unit.CPUQuotaPerSecUSec")),
        },
        "tasks": tasks,
        "data": {
            "dir": s.data_dir,
            "size": _number(extras.get("data_size")),
            "disk_free": disk[0] if disk else None,
            "disk_size": disk[1] if disk else None,
        },
        "drift": drift if deployed else None,
        "deploy_would": would if deployed else None,
        "link": local_link(facts.secret, s.local_port) if facts.secret else None,
        "healthy": not problems,
        "problems": problems,
    }


def _uptime(seconds: int | None) -> str:
    if seconds is None:
        return ""
    days, rest = divmod(seconds, 86400)
    return (
        f" (up {days}d {rest // 3600}h)" if days else f" (up {rest // 3600}h {rest % 3600 // 60}m)"
    )


def screen(report: dict, show_secret: bool) -> str:
    c, p, m, d, t = (report[k] for k in ("container", "pluto", "memory", "data", "tasks"))
    cpu = report["cpu"]["percent_of_one_core"]
    since = f" since {c['since']}" if c["since"] else ""
    restarts = "?" if p["restarts"] is None else p["restarts"]
    ping = "200 OK!" if report["ping"] == 200 else str(report["ping"] or "no answer")
    drift = report["drift"]
    if drift is None:
        drift_text = "-"
    else:
        drift_text = (
            f"{', '.join(drift)} differ" if drift else "none (the host has what deploy would push)"
        )
    link = report["link"] or "no secret on the host"
    rows = [
        ("host", f"{report['host']}: NixOS {report['nixos_version'] or '?'}"),
        ("container", f"{c['name']}: {c['state']}{since}{_uptime(c['uptime_seconds'])}"),
        ("pluto.service", f"{p['state'] or '-'} ({p['substate'] or '-'}), {restarts} restarts"),
        ("Pluto", f"{p['version']} on Julia {p['julia']}" if p["version"] else "version unknown"),
        ("/ping", ping),
        ("memory", f"{human(m['current'])} now, {human(m['peak'])} peak; "
                   f"MemoryHigh {human(m['high'])}, MemoryMax {human(m['max'])}"),
        ("cpu", f"{'?' if cpu is None else cpu}% of one core over 1 s; "
                f"CPUQuota {report['cpu']['quota']}"),
        ("tasks", f"{t['current'] or '?'} of TasksMax {t['max'] or '?'}"),
        ("notebooks", f"{d['dir']}: {human(d['size'])}, {human(d['disk_free'])} free "
                      f"of {human(d['disk_size'])}"),
        ("drift", drift_text),
        ("deploy would", "; ".join(report["deploy_would"] or []) or "change nothing"),
        ("link", link if show_secret else mask(link)),
    ]  # fmt: skip
    text = "\n".join(f"{label:14} {value}" for label, value in rows)
    verdict = "healthy" if report["healthy"] else "UNHEALTHY: " + "; ".join(report["problems"])
    return f"{text}\n{verdict}"
