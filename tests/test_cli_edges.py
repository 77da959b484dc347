"""Mistakes at the command line end in one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import FAB, ROOT, fab


def run(*args: str, cwd=ROOT, shell: str | None = None) -> subprocess.CompletedProcess:
    command = shell if shell is not None else [FAB, *args]
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=60,
        shell=shell is not None, executable="/bin/bash" if shell is not None else None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["-S", "/nonexistent/ssh_config", "-H", "x", "status"],
         "/nonexistent/ssh_config: no such file (-S/--ssh-config?)"),
        (["-f", "/nonexistent/fabric.yaml", "settings"],
         "-f: /nonexistent/fabric.yaml: no such file"),
        (["logs", "--lines", "abc"], "--lines: 'abc' is not a number of lines (0 or more)"),
    ],
)  # fmt: skip
def test_bad_flags_and_missing_files_are_one_line(args, line):
    result = run(*args)
    assert result.returncode == 1
    assert result.stderr.strip() == line
    assert "Traceback" not in result.stdout + result.stderr


def test_a_misspelt_pluto_block_is_not_ignored(tmp_path):
    (tmp_path / "fabfile.py").write_text("from tasks import ns  # noqa: F401\n")
    (tmp_path / "fabric.yaml").write_text("plutto:\n  memory_max: 8G\n")
    result = run("settings", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "configuration: unknown top-level key 'plutto' (did you mean pluto?)"
    )


def test_a_broken_fabric_yaml_names_its_file_and_line(tmp_path):
    (tmp_path / "fabfile.py").write_text("from tasks import ns  # noqa: F401\n")
    (tmp_path / "fabric.yaml").write_text("pluto:\n  port: [1\n")
    result = run("settings", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"{tmp_path / 'fabric.yaml'}:3: not valid YAML: expected ',' or ']', but got '<stream end>'"
    )


@pytest.mark.parametrize("attempt", range(5))  # the reader leaves at varying moments
def test_a_closed_pipe_ends_quietly(attempt):
    # `true` exits at once: what fab writes meets a pipe nobody reads, during the
    # run or only at the final flush.
    result = run(shell=f"{FAB} --list | true; echo ${{PIPESTATUS[0]}} >&2")
    assert result.stderr.strip() in ("0", "1"), result.stderr  # only the exit status


def test_a_failing_proxy_command_shows_its_own_error_at_once(tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host down\n"
        '  ProxyCommand sh -c \'echo "ssh: connect to host down port 22: Connection refused"'
        " >&2; exit 255'\n"
    )
    result = subprocess.run(
        [FAB, "-S", str(config), "-H", "down", "status"],
        cwd=ROOT, capture_output=True, text=True, timeout=10,  # OpenSSH-like: no 15 s wait
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "Could not reach down through its ProxyCommand: ssh: connect to host down port 22: "
        "Connection refused"
    )


@pytest.mark.integration
def test_a_command_timeout_is_one_line(deployed):
    result = fab(deployed, "-T", "1", "status")  # status samples the CPU for 1 s
    assert result.code == 2
    assert result.error == (
        "a command on hainich took longer than 1s (-T/--command-timeout); "
        "run again with a larger one, or without"
    )
    assert "Traceback" not in result.stderr
