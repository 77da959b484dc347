"""Numbered progress lines, one per step, with a live line while a step runs.

Drawn with rich (https://rich.readthedocs.io), which knows the terminal's width,
whether the output is a terminal at all, and NO_COLOR.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator

from rich.console import Console
from rich.live import Live
from rich.text import Text

from .journal import mask


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Ctrl-C waits until rich has fully started or stopped the live line.

    Interrupted half-way, rich's Live keeps its place on the console's live stack
    (rich/live.py `start`/`stop`): the one-line message that follows would land
    above a live line drawn again, or stopping it again fails on an empty stack.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, _frame: pressed.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


class Progress:
    """`[3/7] data dir /data/pluto … created, owner 2000:2000`.

    On a terminal the running step is one live line, cut to the terminal's width,
    whose elapsed time ticks every second even while nothing is printed, with
    the latest news; messages printed meanwhile go above it, never onto it.
    Elsewhere (logs, CI, a pipe) each piece of news is one plain line tagged with
    its step, and there are no control characters. `verbose` shows every remote
    line (secrets masked) instead of the news drawn from them.
    """

    def __init__(self, total: int, verbose: bool = False, out=None):
        self.total = total
        self.verbose = verbose
        self.console = Console(file=out or sys.stdout, highlight=False, emoji=False)
        self.tty = self.console.is_terminal
        self.number = 0
        self.label = ""
        self.started = 0.0
        self.last_note = ""
        self.live: Live | None = None
        # A task that ends with an error mid-step: its one-line message must not land
        # on the live line.
        atexit.register(self._stop_live)

    @property
    def tag(self) -> str:
        return f"[{self.number}/{self.total}]"

    def _print(self, text: str | Text, style: str | None = None) -> None:
        # Never wrapped: a link must stay one piece, whatever the width.
        self.console.print(text, style=style, markup=False, soft_wrap=True, crop=False)

    def _live_line(self) -> Text:
        elapsed = int(time.monotonic() - self.started)
        line = Text(f"{self.label} … {elapsed // 60}:{elapsed % 60:02d} {self.last_note}")
        line.truncate(max(self.console.width - 1, 20), overflow="ellipsis")
        return line

    def begin(self, number: int, label: str) -> None:
        self.number, self.label = number, f"[{number}/{self.total}] {label}"
        self.started = time.monotonic()
        self.last_note = ""
        if self.tty:
            with _ctrl_c_deferred():
                self.live = Live(
                    console=self.console,
                    get_renderable=self._live_line,
                    refresh_per_second=4,
                    transient=True,
                )
                self.live.start()

    def note(self, text: str) -> None:
        """Transient news during a step (the latest journal line, a state)."""
        text = mask(text.strip())
        if not self.tty and text and text != self.last_note and not self.verbose:
            self._print(f"{self.tag}   {text}")
        self.last_note = text

    def latest(self, line: str) -> None:
        """The newest line of a long wait: on a terminal only (plain output gets `note`s)."""
        if self.tty and line.strip():
            self.note(line)

    def remote(self, line: str) -> None:
        """A line of remote output, shown only with -v."""
        if self.verbose:
            prefix = "      |" if self.tty else f"{self.tag} |"
            self._print(f"{prefix} {mask(line.rstrip())}")

    def end(self, outcome: str) -> None:
        self._finish(outcome, None)

    def fail(self, outcome: str) -> None:
        self._finish(f"FAILED: {outcome}", "bold red")

    def _finish(self, outcome: str, style: str | None) -> None:
        self._stop_live()
        line = Text(f"{self.label} … ")
        line.append(outcome, style=style)
        self._print(line)
        self.label = ""

    def _stop_live(self) -> None:
        if self.live is not None:
            with _ctrl_c_deferred():
                self.live.stop()
                self.live = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No live line while the user is asked something on the terminal."""
        self._stop_live()
        yield  # an error while asking ends the step without a live line to restart
        if self.tty and self.label:
            self.begin(self.number, self.label.split("] ", 1)[1])

    def say(self, text: str, style: str | None = None) -> None:
        self._print(text, style if self.tty else None)
