"""One rule for a usable secret file, shared by the tool's scripts and files/launcher.jl.

The whole file is one line of at least 16 characters [A-Za-z0-9], with or without a
final newline, read in full whatever its length. An empty secret would let everyone
in (Pluto compares the `secret` query parameter with it); other characters would
break Pluto's raw cookie.
"""

from __future__ import annotations

import re

PATTERN = re.compile(rb"[A-Za-z0-9]{16,}")

# The same rule in POSIX shell, for the scripts of scripts.py: the file's first line is
# the whole file, and that line is the pattern.
SHELL_FUNCTION = """secret_ok() {
  [ -f "$1" ] && [ "$(head -n 1 "$1" | wc -c)" = "$(wc -c < "$1")" ] &&
    LC_ALL=C grep -Eqx '[A-Za-z0-9]{16,}' "$1"
}
"""


def parse(content: bytes | None) -> str | None:
    """The secret the file holds, or None when it holds no usable one."""
    if content is None:
        return None
    line = content[:-1] if content.endswith(b"\n") else content
    return line.decode() if PATTERN.fullmatch(line) else None
