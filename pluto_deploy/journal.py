"""Read Pluto's link and the launcher's progress from journal lines."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable

# Every layout of Pluto's startup message (docs/pluto-facts.md): the URL follows
# "Go to" (or "Opening" when a browser was launched) on one line, whether that
# line starts with "│ ", "└ " or nothing.
STARTUP_LINK = re.compile(r"(?:Go to|Opening) (https?://\S+) in your (?:default )?browser")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
SECRET_VALUE = re.compile(r"((?:[?&]|\b)secret=)([^&\s;\"']+)")
LAUNCHER = "pluto-launcher: "


def find_link(lines: Iterable[str]) -> str | None:
    """The first startup link in `lines`, or None."""
    for line in lines:
        match = STARTUP_LINK.search(ANSI.sub("", line))
        if match:
            return match.group(1)
    return None


def secret_of(link: str) -> str | None:
    values = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query).get("secret")
    return values[0] if values else None


def local_link(secret: str, local_port: int) -> str:
    """The link that works on this machine through the tunnel."""
    return f"http://localhost:{local_port}/?secret={secret}"


def mask(text: str) -> str:
    """Hide every secret=... value (links, cookies) behind asterisks."""
    return SECRET_VALUE.sub(r"\1********", text)


def launcher_message(line: str) -> str | None:
    """What launcher.jl said on this line, if it is one of its lines."""
    _, found, message = line.partition(LAUNCHER)
    return message if found else None
