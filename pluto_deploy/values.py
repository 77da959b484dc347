"""Parsers for single setting values; each raises Invalid saying what is allowed."""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Callable
from typing import Any

# Julia attributes of nixpkgs and the Julia version each one carries
# (docs/nixos-facts.md, "Julia in nixpkgs").
JULIA_PACKAGES = {
    "julia-lts": (1, 10),
    "julia-lts-bin": (1, 10),
    "julia_110": (1, 10),
    "julia_110-bin": (1, 10),
    "julia_111": (1, 11),
    "julia_111-bin": (1, 11),
    "julia": (1, 12),
    "julia-bin": (1, 12),
    "julia-stable": (1, 12),
    "julia-stable-bin": (1, 12),
    "julia_112": (1, 12),
    "julia_112-bin": (1, 12),
}
# The launcher needs `Pluto.run!` (v0.19.28) to swap the secret in a running
# server; 2.x does not exist yet (docs/pluto-facts.md).
PLUTO_OLDEST = (0, 19, 28)
PLUTO_NEWEST_MAJOR = 1
# The oldest Pluto that works on each Julia, as released (docs/pluto-facts.md, "Versions"):
# Julia 1.11 fixes up to 0.20.4 (#3119), Julia 1.12 fixes up to 0.20.20.
PLUTO_FOR_JULIA = {(1, 10): (0, 19, 28), (1, 11): (0, 20, 4), (1, 12): (0, 20, 20)}
# systemd settings of pluto.service an admin may relax when a Julia package needs it.
HARDENING_EXCEPTIONS = (
    "PrivateDevices",
    "ProcSubset",
    "ProtectProc",
    "RestrictAddressFamilies",
    "RestrictNamespaces",
    "SystemCallFilter",
)
# Host directories a data or secret directory may never be, or live under.
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/nix", "/proc", "/run", "/sys", "/usr")
# What pluto.service's hardening hides or replaces inside the container (ProtectHome=,
# PrivateTmp=, and its own StateDirectory=): a bind mount there is invisible to Pluto.
HIDDEN_DIRS = ("/home", "/root", "/tmp", "/var/tmp")
STATE_DIRECTORY = "/var/lib/pluto"
SAFE_PATH = re.compile(r"^/[A-Za-z0-9._+@/-]*$")
SIZE = re.compile(r"^([1-9][0-9]*)(\.[0-9]+)?([KMGT]?)$")
HOST = re.compile(r"^(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9][A-Za-z0-9._-]*(?::[0-9]{1,5})?$")
CONTAINER_NAME = re.compile(r"^[a-z](?:[a-z0-9-]*[a-z0-9])?$")
DNS_NAME = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
# A session's name is its container's (<= 11 characters with a private network,
# docs/nixos-facts.md) and its path under the public host.
SESSION_NAME = re.compile(r"^[a-z](?:[a-z0-9-]{0,9}[a-z0-9])?$")


class Invalid(ValueError):
    """A value that cannot be used; the message says what is allowed."""


def port(value: Any) -> int:
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]{1,5}", str(value).strip()):
        raise Invalid("is not a TCP port (1-65535)")
    port = int(value)
    if not 1 <= port <= 65535:
        raise Invalid("is not a TCP port (1-65535)")
    return port


def container_port(value: Any) -> int:
    """Pluto's port: its uid has no capabilities (CapabilityBoundingSet=), so not below 1024."""
    number = port(value)
    if number < 1024:
        raise Invalid(
            "is below 1024, which Pluto (no capabilities in its container) cannot listen on;"
            " use 1024-65535"
        )
    return number


def optional_port(value: Any) -> int | None:
    return None if value in (None, "") else port(value)


def size(value: Any) -> str:
    text = str(value).strip()
    if isinstance(value, bool) or not SIZE.fullmatch(text):
        raise Invalid("is not a size like 4G or 512M")
    return text


def size_in_bytes(text: str) -> int:
    """Bytes in a systemd size such as `3.5G` (1024-based, as systemd counts)."""
    whole, fraction, unit = SIZE.fullmatch(text).groups()
    scale = 1024 ** " KMGT".index(unit or " ")
    return int(float(whole + (fraction or "")) * scale)


def cpu_quota(value: Any) -> str:
    text = str(value).strip()
    if not re.fullmatch(r"[1-9][0-9]{0,5}%", text):
        raise Invalid("is not a CPU quota like 200% (1% or more, 100% = one core)")
    return text


def whole_number(low: int, high: int, what: str) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not re.fullmatch(r"-?[0-9]+", str(value).strip()):
            raise Invalid(f"is not {what}")
        number = int(value)
        if not low <= number <= high:
            raise Invalid(f"is not {what}")
        return number

    return parse


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0", ""):
        return False
    raise Invalid("is not true or false")


def absolute_path(value: Any) -> str:
    text = str(value)
    if not text.startswith("/"):
        raise Invalid("is not an absolute path")
    if not SAFE_PATH.fullmatch(text):
        raise Invalid(
            "may only contain letters, digits and . _ - + @ / "
            "(no spaces, quotes, $, ;, : or other shell or Nix characters)"
        )
    if posixpath.normpath(text) != text or "/./" in text + "/" or "/../" in text + "/":
        raise Invalid(f"is not a normalised path (write {posixpath.normpath(text)})")
    return text


def under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def state_path(value: Any) -> str:
    path = absolute_path(value)
    if path.count("/") < 2 or any(under(path, d) for d in SYSTEM_DIRS):
        raise Invalid(
            "is a system directory; use a directory of its own such as /data/pluto "
            "(not /, /etc, /nix, /run, /usr or one directly under /)"
        )
    return path


def module_dir(value: Any) -> str:
    path = absolute_path(value)
    if path.count("/") < 2 or under(path, "/nix"):
        raise Invalid("is not a directory for the module such as /etc/nixos/pluto")
    return path


def host(value: Any) -> str:
    text = str(value).strip()
    if not HOST.fullmatch(text):
        raise Invalid("is not a host name or ssh alias (like hainich or admin@hainich:22)")
    return text


def container(value: Any) -> str:
    text = str(value)
    if "_" in text:
        raise Invalid("is not a container name NixOS accepts: no _ (use -)")
    if not CONTAINER_NAME.fullmatch(text) or len(text) > 63:
        raise Invalid(
            "is not a container name NixOS accepts "
            "(lower-case letters, digits and -, starting with a letter)"
        )
    return text


def choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in allowed:
            raise Invalid(f"is not one of {', '.join(allowed)}")
        return value

    return parse


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def pluto_version(value: Any) -> str:
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", text):
        raise Invalid("is not a Pluto version like 1.0.1")
    version = version_tuple(text)
    if version < PLUTO_OLDEST or version[0] > PLUTO_NEWEST_MAJOR:
        oldest = ".".join(map(str, PLUTO_OLDEST))
        raise Invalid(f"is out of range (Pluto {oldest} up to {PLUTO_NEWEST_MAJOR}.x)")
    return text


def julia_package(value: Any) -> str:
    if value not in JULIA_PACKAGES:
        raise Invalid(f"is not a Julia package of nixpkgs ({', '.join(JULIA_PACKAGES)})")
    return value


def ipv4(value: Any) -> str:
    try:
        address = ipaddress.IPv4Address(str(value))
    except ValueError:
        raise Invalid("is not an IPv4 address like 10.233.1.2") from None
    if not address.is_private or address.is_loopback:
        raise Invalid("is not a private, non-loopback IPv4 address like 10.233.1.2")
    return str(address)


def state_version(value: Any) -> str | None:
    if value in (None, ""):
        return None
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]{2}\.(05|11)", text):
        raise Invalid("is not a NixOS release like 25.05")
    return text


def hardening_exceptions(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise Invalid(f"is not a list of names from {', '.join(HARDENING_EXCEPTIONS)}")
    for name in value:
        if name not in HARDENING_EXCEPTIONS:
            raise Invalid(f"names {name!r}; allowed: {', '.join(HARDENING_EXCEPTIONS)}")
    return tuple(sorted(set(value)))


def optional_public_host(value: Any) -> str | None:
    if value in (None, ""):
        return None
    text = str(value).strip().lower()
    if not DNS_NAME.fullmatch(text):
        raise Invalid("is not a DNS name like pluto.example.org")
    return text


def optional_host_file(value: Any) -> str | None:
    if value in (None, ""):
        return None
    path = absolute_path(value)
    if under(path, "/nix/store"):
        raise Invalid("is in the Nix store, which every user can read; keep it outside")
    return path


def session_name(value: Any) -> str:
    text = str(value)
    if not SESSION_NAME.fullmatch(text) or text == "pluto":
        raise Invalid(
            "is not a session name: 1 to 11 lower-case letters, digits and -, "
            "starting with a letter (it becomes the container's name and the path)"
        )
    return text
