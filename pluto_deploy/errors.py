"""Failures the tasks report in one line, after the host may already have changed."""

from __future__ import annotations

from invoke import Exit


class StepFailed(Exit):
    """A step failed; `journal_lines` holds Pluto's last lines when they explain it.

    An Exit, so wherever it is not caught (to roll back) Invoke prints the one
    line and exits 1, never a traceback.
    """

    def __init__(self, reason: str, journal_lines: list[str] | None = None):
        super().__init__(message=reason, code=1)
        self.reason = reason
        self.journal_lines = journal_lines or []
