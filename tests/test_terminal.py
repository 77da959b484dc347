"""What a person sees in a real terminal (tmux, 80 columns): a live line that keeps time."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time

import pytest

from tests.conftest import FAB, ROOT, require

pytestmark = pytest.mark.integration


class Tmux:
    """One tmux server of its own with an 80×30 window running `command`."""

    def __init__(self, command: str, width: int = 80):
        require(None if shutil.which("tmux") else "tmux is missing (apt-get install tmux)")
        self.socket = f"pluto-test-{os.getpid()}"
        self._tmux("new-session", "-d", "-x", str(width), "-y", "30", command)

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10,
            env={**os.environ, "TERM": "xterm-256color"},
        )  # fmt: skip
        return done.stdout

    def screen(self) -> list[str]:
        return self._tmux("capture-pane", "-p").rstrip("\n").split("\n")

    def close(self) -> None:
        self._tmux("kill-server")


def test_a_slow_rebuild_shows_a_ticking_timer_and_no_fragments_at_80_columns(deployed):
    deployed.set_faults(rebuild_seconds=6)  # a silent build: nothing printed for 6 s
    command = shlex.join([FAB, "-S", str(deployed.ssh_config), "-H", "admin@hainich",
                          "deploy", "--force", "--no-tunnel"])  # fmt: skip
    terminal = Tmux(f"cd {shlex.quote(str(ROOT))} && {command}; sleep 60")
    try:
        seen: set[str] = set()
        deadline = time.monotonic() + 60
        screen: list[str] = []
        while time.monotonic() < deadline:
            screen = terminal.screen()
            live = [
                line for line in screen if re.match(r"\[4/7\] nixos-rebuild switch … \d:", line)
            ]
            assert len(live) <= 1, screen  # one live line, never left-over copies
            seen |= {re.search(r"… (\d:\d\d)", line).group(1) for line in live}
            if any(line.startswith("Deployed to hainich") for line in screen):
                break
            time.sleep(0.2)
        assert len(seen) >= 3, (seen, screen)  # the timer moved while nothing was printed
        assert all(len(line) <= 80 for line in screen)
        assert "[4/7] nixos-rebuild switch … done, container@pluto.service" in "\n".join(screen)
        assert not [line for line in screen if "… 0:0" in line]  # live lines all gone
    finally:
        terminal.close()
