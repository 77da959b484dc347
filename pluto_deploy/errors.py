"""Failures the tasks report in one line, after the host may already have changed."""

from __future__ import annotations

import atexit
import os
import sys

from invoke import Exit
from invoke.util import yaml  # Invoke reads fabric.yaml with its vendored PyYAML


def one_line_for_the_rest() -> None:
    """Errors raised by Fabric and Invoke outside any task, as one line instead of a traceback.

    Installed when the tasks are loaded, which is before Invoke reads the project's
    fabric.yaml and Fabric reads `-S FILE` (invoke/program.py `load_collection`): a
    missing ssh_config or broken YAML is named in one line with its file and line; a
    reader that closed the pipe (`fab status | head`) ends the output quietly.
    """
    previous = sys.excepthook

    def hook(kind, value, traceback) -> None:
        if issubclass(kind, BrokenPipeError):
            _drop_stdout()
            sys.exit(1)
        if issubclass(kind, FileNotFoundError) and value.filename:
            print(f"{value.filename}: no such file (-S/--ssh-config?)", file=sys.stderr)
            sys.exit(1)
        if issubclass(kind, yaml.MarkedYAMLError) and value.problem_mark is not None:
            mark = value.problem_mark
            print(f"{mark.name}:{mark.line + 1}: not valid YAML: {value.problem}", file=sys.stderr)
            sys.exit(1)
        previous(kind, value, traceback)

    sys.excepthook = hook
    # The reader may also go away after the last write, before Python's own flush at
    # exit (which runs after atexit handlers): flush here, quietly.
    atexit.register(_flush_quietly)


def _flush_quietly() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _drop_stdout()


def _drop_stdout() -> None:
    """Nothing more can be written: point stdout at /dev/null so no flush complains."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class StepFailed(Exit):
    """A step failed; `journal_lines` holds Pluto's last lines when they explain it.

    An Exit, so wherever it is not caught (to roll back) Invoke prints the one
    line and exits 1, never a traceback.
    """

    def __init__(self, reason: str, journal_lines: list[str] | None = None):
        super().__init__(message=reason, code=1)
        self.reason = reason
        self.journal_lines = journal_lines or []
