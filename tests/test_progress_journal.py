"""Pure logic: progress lines, journal parsing, import editing."""

from __future__ import annotations

import io

import pytest

from pluto_deploy import journal, nixconfig
from pluto_deploy.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_line_shows_elapsed_time_and_the_latest_news_within_the_width():
    out = Terminal()
    progress = Progress(total=7, out=out)
    progress.begin(5, "Pluto")
    progress.note("Installing Pluto 1.0.1 (first start) …")
    progress.note("Pluto 1.0.1 installed " + "x" * 200)
    line = progress._live_line()
    assert line.plain.startswith("[5/7] Pluto … 0:00 Pluto 1.0.1 installed xxx")
    assert len(line.plain) < progress.console.width  # cut, never wrapped into fragments
    progress.end("up")
    assert out.getvalue().endswith("[5/7] Pluto … up\n")
    assert "Installing" not in out.getvalue().rsplit("\r", 1)[-1]  # the live line is gone


def test_a_wait_shows_every_new_journal_line_on_a_terminal_only():
    terminal, plain = Terminal(), io.StringIO()
    shown = []
    for out in (terminal, plain):
        progress = Progress(total=7, out=out)
        progress.begin(5, "Pluto")
        progress.latest("[ Info: Loading...")
        shown.append(progress._live_line().plain)
        progress.end("up")
    assert shown[0].endswith("0:00 [ Info: Loading...")
    assert plain.getvalue() == "[5/7] Pluto … up\n"


def test_progress_elsewhere_prints_plain_lines_once_each():
    out = io.StringIO()
    progress = Progress(total=7, out=out)
    progress.begin(5, "Pluto")
    for note in ("a", "a", "b"):
        progress.note(note)
    progress.end("up")
    assert out.getvalue() == "[5/7]   a\n[5/7]   b\n[5/7] Pluto … up\n"


def test_progress_masks_secrets_in_notes_and_verbose_output():
    out = io.StringIO()
    progress = Progress(total=1, verbose=True, out=out)
    progress.begin(1, "x")
    progress.note("Go to http://localhost:9999/?secret=AbCdEfGh12345678 in your browser")
    progress.remote("secret=AbCdEfGh12345678")
    assert "AbCdEfGh12345678" not in out.getvalue()
    assert "secret=********" in out.getvalue()


LINK = "http://localhost:9999/?secret=AbCd1234efgh5678"
GO = f"Go to {LINK} in your browser to start writing ~ have fun!"
LAYOUTS = {
    "1.0": ["┌ Info: ", f"│ {GO}", "└ "],
    "0.20.13": ["┌ Info: ", f"└ {GO}"],
    "0.19.2": ["", GO, ""],
    "browser": ["┌ Info: ", f"│ Opening {LINK} in your default browser... ~ have fun!", "└ "],
    "colour": [f"\x1b[36m│\x1b[39m Go to {LINK} in your browser"],
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_link_is_found_in_every_pluto_layout(layout):
    link = journal.find_link(LAYOUTS[layout])
    assert link == "http://localhost:9999/?secret=AbCd1234efgh5678"
    assert journal.secret_of(link) == "AbCd1234efgh5678"


def test_no_link_in_other_lines():
    assert journal.find_link(["[ Info: Loading...", "pluto-launcher: Starting Pluto 1.0.1"]) is None


def test_mask_hides_every_secret_value():
    text = "url = http://x/?secret=abc&y=1 cookie secret=def; SameSite"
    assert (
        journal.mask(text) == "url = http://x/?secret=********&y=1 cookie secret=********; SameSite"
    )


def test_import_is_added_once_and_removed_exactly():
    original = "{ config, ... }:\n{\n  imports = [\n    ./hardware-configuration.nix\n  ];\n}\n"
    added = nixconfig.add_import(original, "/etc/nixos/pluto", "/etc/nixos")
    assert nixconfig.imports_module(added, "/etc/nixos/pluto", "/etc/nixos")
    assert nixconfig.remove_import(added, "/etc/nixos/pluto", "/etc/nixos") == original


@pytest.mark.parametrize(
    ("text", "imported"),
    [
        ("{ imports = [ ./pluto ]; }", True),
        ("{ imports = [ ./pluto/default.nix ]; }", True),
        ("{ imports = [ /etc/nixos/pluto ]; }", True),
        ("{ imports = [ # ./pluto\n ]; }", False),
        ("{ imports = [ ./pluto-old ]; }", False),
        ("{ /* ./pluto */ imports = [ ]; }", False),
    ],
)
def test_import_detection_ignores_comments_and_similar_names(text, imported):
    assert nixconfig.imports_module(text, "/etc/nixos/pluto", "/etc/nixos") is imported


def test_no_place_for_an_import_is_reported():
    assert nixconfig.add_import("import ./other.nix", "/etc/nixos/pluto", "/etc/nixos") is None


@pytest.mark.parametrize("no_color", [False, True])
def test_colour_on_a_terminal_and_never_with_no_color(monkeypatch, no_color):
    monkeypatch.delenv("NO_COLOR", raising=False)
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    out = Terminal()
    progress = Progress(total=1, out=out)
    progress.begin(1, "x")
    progress.fail("boom")
    assert "FAILED: boom" in out.getvalue()
    assert ("\x1b[1;31mFAILED: boom" in out.getvalue()) is not no_color
