"""`fab tunnel` and `fab logs` against a deployed simulated host, over real SSH."""

from __future__ import annotations

import base64
import contextlib
import os
import pty
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import FAB, ROOT, eventually, fab

pytestmark = pytest.mark.integration


class Background:
    """A `fab` command running in the background; a thread collects its output."""

    def __init__(self, host, *args: str, user: str = "admin", env: dict | None = None):
        self.process = subprocess.Popen(
            [FAB, "-S", str(host.ssh_config), "-H", f"{user}@hainich", *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output)
            if match:
                return match
            if self.process.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.01)
        raise AssertionError(f"no {pattern!r} within {timeout}s; output:\n{self.output}")

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=20)
        self.reader.join(timeout=5)
        return code


def status(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as error:
        return error.code


def ssh_forwards(port: int) -> list[str]:
    found = subprocess.run(
        ["pgrep", "-af", f"ssh -N -L 127.0.0.1:{port}:"], capture_output=True, text=True
    )
    return found.stdout.splitlines()


def websocket_echo(port: int, path: str, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        key = base64.b64encode(os.urandom(16)).decode()
        connection.sendall(
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += connection.recv(1)
        if not head.startswith(b"HTTP/1.1 101"):
            return head.split(b"\r\n")[0]
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        connection.sendall(bytes([0x82, 0x80 | len(payload)]) + mask + masked)
        reply = b""
        while len(reply) < 2 + len(payload):
            reply += connection.recv(4096)
        return reply[2:]


def test_tunnel_serves_pluto_http_and_websocket_and_closes_cleanly(deployed, free_port):
    tunnel = Background(deployed, "tunnel", "--local-port", str(free_port))
    link = tunnel.wait_for(r"http://localhost:\d+/\?secret=\w+").group()
    local = link.replace("localhost", "127.0.0.1")
    assert status(local) == 200
    assert status(f"http://127.0.0.1:{free_port}/") == 403
    secret = link.split("secret=")[1]
    assert websocket_echo(free_port, f"/?secret={secret}", b"x" * 100) == b"x" * 100
    assert websocket_echo(free_port, "/", b"hello") == b"HTTP/1.1 403 Forbidden"
    assert tunnel.interrupt() == 0
    assert "Tunnel closed." in tunnel.output
    assert ssh_forwards(free_port) == []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", free_port))  # the port is free again


def test_tunnel_runs_without_h_using_pluto_host(deployed, free_port):
    process = subprocess.Popen(
        [FAB, "-S", str(deployed.ssh_config), "tunnel", "--local-port", str(free_port)],
        cwd=ROOT, env={**os.environ, "FABRIC_PLUTO_HOST": "admin@hainich"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    for line in process.stdout:
        if "Ctrl-C closes it" in line:
            break
    assert status(f"http://127.0.0.1:{free_port}/ping") == 200
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=20) == 0


def test_busy_local_port_names_the_holder(deployed):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = fab(deployed, "tunnel", "--local-port", str(port))
    assert result.code == 1
    assert result.error.startswith(
        f"local port {port} is already in use on this machine by pid {os.getpid()}"
    )
    assert "--local-port" in result.error


def test_a_second_tunnel_names_the_first_as_yours(deployed, free_port):
    first = Background(deployed, "tunnel", "--local-port", str(free_port))
    first.wait_for("Ctrl-C closes it")
    ssh = _local_ssh_forwards(free_port)[0]
    second = fab(deployed, "tunnel", "--local-port", str(free_port))
    assert second.code == 1
    assert second.error == (
        f"your tunnel from `fab tunnel` (pid {ssh}) already serves local port {free_port}: "
        "use it, or deploy with --no-tunnel"
    )
    assert first.interrupt() == 0


def test_tunnel_says_when_pluto_is_not_running(deployed, free_port):
    deployed.run("systemctl -M pluto stop pluto.service")
    result = fab(deployed, "tunnel", "--local-port", str(free_port))
    assert result.code == 1
    assert result.error == "Pluto is not running on hainich; see `fab logs`"


def test_tunnel_before_any_deploy_says_so(host, free_port):
    result = fab(host, "tunnel", "--local-port", str(free_port))
    assert result.code == 1
    assert result.error == "Pluto is not deployed on hainich; run `fab deploy` first"


def test_tunnel_refused_login_is_one_line(deployed, free_port):
    deployed.run("rm /etc/ssh/authorized_keys.d/admin")
    result = fab(deployed, "tunnel", "--local-port", str(free_port))
    assert result.code == 1
    assert result.error.startswith("SSH login as admin@hainich was refused")
    assert "Traceback" not in result.stderr


def test_tunnel_reconnects_after_the_ssh_session_is_killed(deployed, free_port):
    tunnel = Background(deployed, "tunnel", "--local-port", str(free_port))
    tunnel.wait_for("Ctrl-C closes it")
    deployed.kill_ssh_sessions("admin")
    tunnel.wait_for(r"Connection to hainich lost")
    tunnel.wait_for(r"Reconnected to hainich\.")
    assert status(f"http://127.0.0.1:{free_port}/ping") == 200
    assert tunnel.interrupt() == 0
    assert ssh_forwards(free_port) == []


def test_guest_without_sudo_gets_a_link_without_the_secret(deployed, free_port):
    tunnel = Background(deployed, "tunnel", "--local-port", str(free_port), user="guest")
    tunnel.wait_for(rf"http://localhost:{free_port}/ \(ask your admin for the secret link\)")
    assert "secret=" not in tunnel.output
    assert tunnel.interrupt() == 0


def _journal_line(host, message: str) -> None:
    """A line in pluto.service's journal inside the container, written by real journald."""
    host.log_in_unit("pluto", "pluto.service", "julia", message)


@pytest.mark.parametrize("ending", [signal.SIGTERM, signal.SIGHUP])
def test_tunnel_ended_by_a_signal_stops_its_ssh_and_frees_the_port(deployed, free_port, ending):
    tunnel = Background(deployed, "tunnel", "--local-port", str(free_port))
    tunnel.wait_for("Ctrl-C closes it")
    assert _local_ssh_forwards(free_port), "the tunnel runs ssh -L"
    tunnel.process.send_signal(ending)
    assert tunnel.process.wait(timeout=20) == 0
    assert _local_ssh_forwards(free_port) == []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", free_port))  # nothing holds the port any more


def _local_ssh_forwards(port: int) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"ssh") and any(f"{port}:".encode() in a for a in argv):
            found.append(pid)
    return found


def test_logs_follow_shows_a_new_line_within_a_second(deployed):
    logs = Background(deployed, "logs")
    logs.wait_for("Go to http://localhost:9999/")
    _journal_line(deployed, "marker-line-1")
    logs.wait_for("marker-line-1", timeout=10)  # followed live, not at the next poll
    assert logs.interrupt() == 130 and logs.output.rstrip().endswith("Interrupted.")
    eventually(
        lambda: not [p for p in deployed.processes() if "journalctl -M pluto" in p],
        what="journalctl ending with the channel",
    )


def test_logs_end_with_one_line_when_the_connection_is_lost(deployed):
    logs = Background(deployed, "logs")
    logs.wait_for("Go to http://localhost:9999/")
    deployed.kill_ssh_sessions("admin")
    assert logs.process.wait(timeout=30) == 1
    logs.reader.join(timeout=5)
    last = logs.output.strip().splitlines()[-1]
    assert last.startswith("Lost the SSH connection to hainich (")
    assert "Traceback" not in logs.output


def test_logs_mask_the_secret_unless_asked(deployed):
    secret = deployed.read("/var/lib/pluto-secret/secret").strip()
    masked = fab(deployed, "logs", "--no-follow")
    assert masked.code == 0, masked.stderr
    assert "secret=********" in masked.stdout and secret not in masked.stdout
    shown = fab(deployed, "logs", "--no-follow", "--show-secret")
    assert f"secret={secret}" in shown.stdout


def test_logs_lines_limits_the_history(deployed):
    for number in range(5):
        _journal_line(deployed, f"history-{number}")
    result = fab(deployed, "logs", "--no-follow", "--lines", "3")
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    assert [line.rsplit(" ", 1)[-1] for line in lines] == ["history-2", "history-3", "history-4"]


def test_logs_container_shows_the_container_unit(deployed):
    # The unit's journal holds the container's boot console too, as on NixOS.
    result = fab(deployed, "logs", "--no-follow", "--container", "--lines", "1000")
    assert result.code == 0
    assert "Started container@pluto.service - Container 'pluto'." in result.stdout


@pytest.mark.parametrize("task", ["logs", "deploy"])
def test_ctrl_c_at_a_terminal_ends_in_one_line_and_130(deployed, task):
    # As a terminal does: SIGINT to the whole foreground process group, which also
    # holds the ProxyCommand unless it runs in a session of its own.
    leader, follower = pty.openpty()
    args = ["--force", "--no-tunnel"] if task == "deploy" else []
    deployed.set_faults(rebuild_seconds=3)
    process = subprocess.Popen(
        [FAB, "-S", str(deployed.ssh_config), "-H", "admin@hainich", task, *args],
        cwd=ROOT, stdin=follower, stdout=follower, stderr=follower, start_new_session=True,
    )  # fmt: skip
    os.close(follower)
    output = ""
    marker = "Go to http" if task == "logs" else "building the system configuration"
    deadline = time.monotonic() + 60
    while marker not in output and time.monotonic() < deadline:
        output += os.read(leader, 4096).decode(errors="replace")
    os.killpg(process.pid, signal.SIGINT)
    code = process.wait(timeout=30)
    with contextlib.suppress(OSError):
        while chunk := os.read(leader, 4096):
            output += chunk.decode(errors="replace")
    os.close(leader)
    assert code == 130, output
    assert "Traceback" not in output
    assert "Interrupted" in output.strip().splitlines()[-1]
