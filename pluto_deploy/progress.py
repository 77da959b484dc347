"""Numbered progress lines, one per step, with a live line while waiting."""

from __future__ import annotations

import sys
import time

from .journal import mask


class Progress:
    """`[3/7] data dir /data/pluto … created, owner 2000:2000`.

    On a terminal a long wait rewrites one line with the elapsed time and the
    latest news; elsewhere (logs, CI) each new piece of news is a plain line.
    `verbose` echoes every remote line, with secrets masked.
    """

    def __init__(self, total: int, verbose: bool = False, out=None):
        self.total = total
        self.verbose = verbose
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.label = ""
        self.started = 0.0
        self.last_note = ""

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def begin(self, number: int, label: str) -> None:
        self.label = f"[{number}/{self.total}] {label}"
        self.started = time.monotonic()
        self.last_note = ""
        if self.tty:
            self._write(f"{self.label} …")

    def note(self, text: str) -> None:
        """Transient news during a step (the latest journal line, a state)."""
        text = mask(text.strip())
        if self.tty:
            elapsed = int(time.monotonic() - self.started)
            line = f"{self.label} … {elapsed // 60}:{elapsed % 60:02d} {text}"
            self._write("\r\x1b[2K" + line[:200])
        elif text and text != self.last_note:
            self._write(f"      {text}\n")
        self.last_note = text

    def latest(self, line: str) -> None:
        """The newest line of a long wait: on a terminal only (plain output gets `note`s)."""
        if self.tty and line.strip():
            self.note(line)

    def remote(self, line: str) -> None:
        """A line of remote output, shown only with -v."""
        if self.verbose:
            self._write(("\r\x1b[2K" if self.tty else "") + f"      | {mask(line.rstrip())}\n")
            if self.tty:
                self._write(f"{self.label} …")

    def end(self, outcome: str) -> None:
        self._finish(outcome)

    def fail(self, outcome: str) -> None:
        self._finish(f"FAILED: {outcome}")

    def _finish(self, outcome: str) -> None:
        line = f"{self.label} … {outcome}"
        self._write(("\r\x1b[2K" if self.tty else "") + line + "\n")
        self.label = ""

    def say(self, text: str) -> None:
        self._write(text + "\n")
