"""Failures the tasks report in one line, after the host may already have changed."""

from __future__ import annotations


class StepFailed(Exception):
    """A step failed; `journal_lines` holds Pluto's last lines when they explain it."""

    def __init__(self, reason: str, journal_lines: list[str] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.journal_lines = journal_lines or []
