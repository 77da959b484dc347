"""Reading the host: facts and unit states from real tools' output, the wait loop's decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from pluto_deploy import scripts
from pluto_deploy.errors import StepFailed
from pluto_deploy.facts import HostFacts, UnitState, parse
from pluto_deploy.waiting import Watch

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> str:
    return (FIXTURES / f"systemd-252-{name}.txt").read_text()


def test_unit_state_is_read_by_key_in_systemds_order():
    assert fixture("running").splitlines()[0] == "NRestarts=0"  # not the order asked for
    assert UnitState.parse(fixture("running")) == UnitState("active", "running", 0)
    assert UnitState.parse(fixture("stopped")) == UnitState("inactive", "dead", 0)


def test_facts_script_output_gives_plutos_state_and_the_cursor():
    cursor = fixture("cursor").splitlines()[-1].removeprefix("-- cursor: ")
    output = (
        "nixos=yes\ncontainer_state=active\n"
        + "".join(f"pluto.{line}\n" for line in fixture("running").splitlines())
        + f"cursor={cursor}\ngeneration=system-4-link\n"
    )
    facts = parse(output)
    assert facts.pluto_active and facts.pluto_state.restarts == 0
    assert facts.cursor.startswith("s=") and facts.generation == "system-4-link"


@pytest.mark.parametrize(
    ("state", "words"),
    [
        (UnitState("active", "running", 0), "running"),
        (UnitState("inactive", "dead", 0), "stopped"),
        (UnitState("failed", "failed", 5), "failed"),
        (UnitState("activating", "auto-restart", 2), "restarting after a crash"),
        (UnitState("activating", "start", 0), "starting"),
        (UnitState(), "in an unknown state"),
    ],
)
def test_states_are_told_in_words(state, words):
    assert state.words == words


@pytest.mark.parametrize(
    ("nixos_version", "release"),
    [
        ("25.05.20250612.6c62cf2 (Warbler)", "25.05"),
        ("25.11pre812345.0a1b2c3 (Xantusia)", "25.11"),
        ("25.05pre-git (Warbler)", "25.05"),
        ("24.11.719113.9abb87b5 (Vicuna)", "24.11"),
        ("custom build", ""),
        ("", ""),
    ],
)
def test_release_of_every_nixos_version_form(nixos_version, release):
    assert HostFacts(nixos_version=nixos_version).release == release


def state(container: str, pluto: str) -> str:
    return f"{scripts.STATE_MARK} {container} {pluto}"


RUNNING = " ".join(fixture("running").split())
WATCH_ROWS = [
    ("starting-then-running", [state("active", "NRestarts=0 ActiveState=activating SubState=start"),
                               state("active", RUNNING)], None),
    ("container-stopped", [state("inactive", "")], "container@pluto is inactive"),
    ("pluto-failed", [state("active", "NRestarts=5 ActiveState=failed SubState=failed")],
     "pluto.service failed (failed)"),
    ("one-restart-is-fine", [state("active", "NRestarts=0 ActiveState=active SubState=running"),
                             state("active", "NRestarts=1 ActiveState=active SubState=running")],
     None),
    ("crash-loop", [state("active", "NRestarts=0 ActiveState=active SubState=running"),
                    state("active", "NRestarts=2 ActiveState=activating SubState=auto-restart")],
     "pluto.service keeps crashing (restarted twice)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("lines", "failure"), [r[1:] for r in WATCH_ROWS], ids=[r[0] for r in WATCH_ROWS]
)
def test_the_wait_loop_fails_fast_on_what_real_systemd_reports(lines, failure):
    watch = Watch("pluto")
    if failure is None:
        for line in lines:
            watch.state(line)
        return
    with pytest.raises(StepFailed) as failed:
        for line in lines:
            watch.state(line)
    assert failed.value.reason == failure
