"""Follow Pluto's journal until it prints its link, failing fast when it cannot start."""

from __future__ import annotations

import collections
import time
from typing import NoReturn

from fabric import Connection

from . import journal, scripts
from .errors import StepFailed
from .facts import UnitState
from .progress import Progress
from .settings import Settings
from .stream import Stream


class Watch:
    """State read from the follower's `@@pluto-deploy state` lines and the journal."""

    def __init__(self, container: str):
        self.container = container
        self.restarts_at_start: int | None = None
        self.crashes = 0
        self.started = ""
        self.lines: collections.deque[str] = collections.deque(maxlen=30)

    def state(self, line: str) -> None:
        container, _, rest = line[len(scripts.STATE_MARK) :].strip().partition(" ")
        pluto = UnitState.parse(rest)
        if container and container not in ("active", "activating", "reloading"):
            self.fail(f"container@{self.container} is {container}")
        if pluto.active == "failed":
            self.fail(f"pluto.service failed ({pluto.sub or 'no details'})")
        if self.restarts_at_start is None:
            self.restarts_at_start = pluto.restarts
        elif pluto.restarts is not None and pluto.restarts - self.restarts_at_start >= 2:
            self.fail("pluto.service keeps crashing (restarted twice)")

    def journal_line(self, line: str) -> None:
        self.lines.append(line)
        # "Main process exited, code=exited, status=1/FAILURE" from systemd
        if "Main process exited" in line and "status=0/" not in line:
            self.crashes += 1
            if self.crashes >= 2:
                self.fail("pluto.service keeps crashing (restarted twice)")

    def fail(self, reason: str) -> NoReturn:
        raise StepFailed(reason, list(self.lines))


def wait_for_link(
    cxn: Connection,
    s: Settings,
    cursor: str | None,
    since: int,
    progress: Progress,
    until_message: str | None = None,
    timeout: float | None = None,
) -> tuple[str, str]:
    """(link, "Starting Pluto …" line) from Pluto's journal after `cursor` (or `since`).

    With `until_message`, wait for that launcher line instead of the link (a
    rotation) and return ("", the line). Gives up after `timeout` seconds
    (default pluto.start_timeout).
    """
    timeout = timeout or s.start_timeout
    deadline = time.monotonic() + timeout
    watch = Watch(s.container)
    with Stream(cxn, scripts.follow_pluto(s, cursor, since)) as stream:
        for line in stream.lines():
            if time.monotonic() > deadline:
                what = f"no {until_message!r} line" if until_message else "no link"
                watch.fail(f"Pluto printed {what} within {timeout:.0f}s (--timeout)")
            if line is None:
                progress.note(progress.last_note)
                continue
            if line.startswith(scripts.STATE_MARK):
                watch.state(line)
                continue
            watch.journal_line(line)
            progress.remote(line)
            message = journal.launcher_message(line)
            if message is None:
                progress.latest(line)
            else:
                progress.note(message)
                if message.startswith("Starting Pluto"):
                    watch.started = message
                if until_message and message.startswith(until_message):
                    return "", message
            link = journal.find_link([line])
            if link and not until_message:
                return link, watch.started
    watch.fail("the journal ended before Pluto printed its link")
