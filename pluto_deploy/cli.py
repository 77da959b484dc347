"""Fabric's @task, with short flags only where we name them.

Invoke gives every flag an automatic short form from its first free letter,
which for `--no-rollback` next to `--no-tunnel` and `--open` ends up as `--`
(invoke 2.2.1 invoke/tasks.py `arg_opts` walks the dashed name). Tasks here
list their few short flags explicitly (`-v`); everything else is long only.
"""

from __future__ import annotations

import fabric

# A `--dry-run` that would change something exits 3, as `git diff --exit-code` exits 1
# on a difference; 1 stays "failed".
WOULD_CHANGE = 3


class Task(fabric.Task):
    def __init__(self, *args, short: dict[str, str] | None = None, **kwargs):
        kwargs["auto_shortflags"] = False
        super().__init__(*args, **kwargs)
        self.short = short or {}

    def get_arguments(self, ignore_unknown_help=None):
        arguments = super().get_arguments(ignore_unknown_help)
        for argument in arguments:
            letter = self.short.get(argument.attr_name or argument.name)
            if letter:
                argument.names = (*argument.names, letter)
        return arguments


def task(*args, short: dict[str, str] | None = None, **kwargs):
    """`@task(help=..., short={"verbose": "v"})`; use like fabric.task."""
    return fabric.task(*args, klass=Task, short=short, **kwargs)
