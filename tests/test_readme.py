"""The README stays true: every setting and every task is documented, the commands exist."""

from __future__ import annotations

import re
import subprocess

from pluto_deploy.settings import SETTINGS
from tests.conftest import FAB, ROOT

README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table():
    rows = re.findall(r"^\| (`[a-z_]+`(?:, `[a-z_]+`)*) \|", README, re.M)
    documented = {key.strip("`") for row in rows for key in row.split(", ")}
    assert set(SETTINGS) <= documented


def test_every_task_is_in_the_task_table():
    listing = subprocess.run(
        [FAB, "--list", "-F", "flat"], cwd=ROOT, capture_output=True, text=True
    )
    tasks = re.findall(r"^  (\S+)", listing.stdout, re.M)
    assert tasks
    for name in tasks:
        assert f"| `fab {name}" in README, name


def test_the_flags_the_readme_names_exist():
    for row in README.splitlines():
        found = re.match(r"\| `fab ([a-z.-]+)", row)
        if not found:
            continue
        help_text = subprocess.run(
            [FAB, "--help", found.group(1)], cwd=ROOT, capture_output=True, text=True
        ).stdout
        for flag in re.findall(r"(--[a-z-]+)", row):
            assert flag in help_text, (found.group(1), flag)


def test_the_two_commands_are_there():
    assert "    pip install -e . && fab -H hainich deploy\n" in README
    assert "    pip install tox && tox\n" in README
    assert "pip install tox && tox" in (ROOT / ".ci" / "run").read_text()
