"""How systemd reports units: `show`, `is-active` and `status` text (systemd 252).

Shared by the host's systemctl stand-in and the service manager inside a
simulated container, so both answer in the same format.
"""

from __future__ import annotations

import common

IS_ACTIVE_EXIT = {"active": 0, "reloading": 0}


def show(properties: dict, wanted: list[str], value_only: bool) -> str:
    names = wanted or sorted(properties)
    lines = []
    for name in names:
        value = properties.get(name, "")
        lines.append(str(value) if value_only else f"{name}={value}")
    return "\n".join(lines) + "\n"


def is_active(states: list[str]) -> tuple[str, int]:
    """Text and exit code of `systemctl is-active U...` (3 unless all active)."""
    code = 0 if all(s in IS_ACTIVE_EXIT for s in states) else 3
    return "".join(f"{s}\n" for s in states), code


def is_failed(states: list[str]) -> tuple[str, int]:
    code = 0 if any(s == "failed" for s in states) else 1
    return "".join(f"{s}\n" for s in states), code


def status(unit: str, properties: dict, journal_lines: list[str]) -> str:
    active = properties.get("ActiveState", "inactive")
    sub = properties.get("SubState", "dead")
    since = properties.get("ActiveEnterTimestamp") or properties.get("InactiveEnterTimestamp")
    mark = {"active": "●", "failed": "×"}.get(active, "○")
    text = [
        f"{mark} {unit} - {properties.get('Description', unit)}",
        f"     Loaded: {properties.get('LoadState', 'loaded')}",
        f"     Active: {active} ({sub})" + (f" since {since}" if since else ""),
    ]
    if properties.get("MainPID") not in (None, "", 0, "0"):
        text.append(f"   Main PID: {properties['MainPID']}")
    text.append("")
    text.extend(journal_lines[-10:])
    return "\n".join(text) + "\n"


def result_text(exit_status: int | None, signal: int | None) -> str:
    """systemd's "code=exited, status=1/FAILURE" wording for a main process end."""
    if signal:
        return f"code=killed, status={signal}"
    names = {1: "FAILURE", 200: "CHDIR", 203: "EXEC", 217: "USER", 226: "NAMESPACE"}
    return f"code=exited, status={exit_status}/{names.get(exit_status, '')}".rstrip("/")


def base_properties(unit: str, state: dict) -> dict:
    return {
        "Id": unit,
        "LoadState": state.get("LoadState", "loaded"),
        "ActiveState": state.get("ActiveState", "inactive"),
        "SubState": state.get("SubState", "dead"),
        "Result": state.get("Result", "success"),
        "MainPID": state.get("MainPID", 0),
        "NRestarts": state.get("NRestarts", 0),
        "ExecMainStatus": state.get("ExecMainStatus", 0),
        "ActiveEnterTimestamp": common.timestamp(state.get("ActiveEnterTimestamp")),
        "InactiveEnterTimestamp": common.timestamp(state.get("InactiveEnterTimestamp")),
        "Description": state.get("Description", unit),
    }
