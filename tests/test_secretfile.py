"""One rule for a usable secret: the tool, its shell scripts and the launcher agree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pluto_deploy import secretfile

ROOT = Path(__file__).resolve().parent.parent
GOOD = "Abcdefgh12345678"
CASES = [
    (GOOD.encode(), GOOD),
    (GOOD.encode() + b"\n", GOOD),
    (b"x" * 300 + b"\n", "x" * 300),  # any length, read in full
    (b"", None),
    (b"\n", None),
    (b"short\n", None),
    (GOOD.encode() + b"\n\n", None),
    (GOOD.encode() + b"\n" + GOOD.encode() + b"\n", None),  # two lines
    (b" " + GOOD.encode() + b"\n", None),
    (GOOD.encode() + b" \n", None),
    (GOOD.encode() + b"-x\n", None),
    (GOOD.encode() + b"\r\n", None),
]


@pytest.mark.parametrize(("content", "secret"), CASES)
def test_python_rule(content, secret):
    assert secretfile.parse(content) == secret


@pytest.mark.parametrize(("content", "secret"), CASES)
def test_shell_rule_of_the_remote_scripts_agrees(tmp_path, content, secret):
    path = tmp_path / "secret"
    path.write_bytes(content)
    check = subprocess.run(
        ["sh", "-c", secretfile.SHELL_FUNCTION + 'secret_ok "$1"', "sh", str(path)]
    )
    assert (check.returncode == 0) == (secret is not None)


@pytest.mark.parametrize(("content", "secret"), CASES)
def test_stand_in_launcher_agrees(tmp_path, content, secret):
    path = tmp_path / "secret"
    path.write_bytes(content)
    sys.path.insert(0, str(ROOT / "tests" / "fakehost" / "sim"))
    try:
        import pluto
    finally:
        sys.path.pop(0)
    assert pluto.read_secret(str(path))[0] == secret


def test_launcher_uses_the_same_pattern_and_reads_the_whole_file():
    launcher = (ROOT / "files" / "launcher.jl").read_text()
    pattern = re.search(r'const SECRET_PATTERN = r"\\A(.*)\\z"', launcher).group(1)
    assert pattern.encode() == secretfile.PATTERN.pattern
    assert "read(path, String)" in launcher and "strip(" not in launcher
