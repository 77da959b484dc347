"""The stand-in Pluto server answers as Pluto 1.0.1 does (docs/pluto-facts.md)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pluto_deploy import journal
from tests.conftest import eventually

STANDIN = Path(__file__).resolve().parent / "fakehost" / "sim" / "pluto.py"
SECRET = "Abcdefghijklmnop1234"
JULIA = "/nix/store/6ccc92d22fbc16ad0d0a0bf5bd5ca021-julia-bin-1.10.11/bin/julia"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Standin:
    def __init__(self, directory: Path, layout="1.0", secret=SECRET, port=None, **faults):
        self.port = port or _free_port()
        self.secret_file = directory / "secret"
        self.secret_file.write_text(secret + "\n")
        (directory / "faults.json").write_text(
            json.dumps({"pluto_layout": layout, "install_seconds": 0, **faults})
        )
        launcher = directory / "launcher.jl"
        launcher.write_text("# launcher\n")
        self.notebooks = directory / "notebooks"
        self.notebooks.mkdir()
        environment = {
            "PATH": os.environ["PATH"],
            "PLUTO_SECRET_FILE": str(self.secret_file),
            "PLUTO_HOST": "127.0.0.1",
            "PLUTO_PORT": str(self.port),
            "PLUTO_NOTEBOOK_DIR": str(self.notebooks),
            "PLUTO_INSTALL_MODE": "pkg",
            "PLUTO_VERSION": "1.0.1",
            "JULIA_DEPOT_PATH": f"{directory}/depot:",
            "JULIA_PLUTO_NEW_NOTEBOOKS_DIR": str(self.notebooks),
            "SIM_FAULTS_FILE": str(directory / "faults.json"),
        }
        self.log = directory / "pluto.log"
        self.process = subprocess.Popen(
            [sys.executable, str(STANDIN), JULIA, "--startup-file=no", str(launcher)],
            env=environment,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def wait_for_link(self, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = journal.find_link(self.output().splitlines())
            if found:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no link; output:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text()

    def request(self, path: str, headers: dict | None = None) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        response.body = response.read()
        connection.close()
        return response

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=5)


@pytest.fixture
def pluto(tmp_path):
    server = Standin(tmp_path)
    server.wait_for_link()
    yield server
    server.stop()


def test_public_routes_need_no_secret_and_set_no_cookie(pluto):
    for path in (
        "/ping",
        "/favicon.ico",
        "/index.css",
        "/index.js",
        "/possible_binder_token_please",
    ):
        response = pluto.request(path)
        assert response.status == 200, path
        assert response.getheader("Set-Cookie") is None
        assert response.getheader("Access-Control-Allow-Origin") == "*"
        assert SECRET not in str(response.getheaders())
    assert pluto.request("/ping").body == b"OK!"


def test_everything_else_answers_403_not_yet_authenticated_without_the_secret(pluto):
    for path in (
        "/",
        "/edit?id=1",
        "/editor.html",
        "/auth-check",
        "/new",
        "/open?path=/etc/passwd",
        "/nope",
    ):
        response = pluto.request(path)
        assert response.status == 403, path
        assert response.getheader("Content-Type") == "text/html; charset=utf-8"
        assert b"<title>Not yet authenticated</title>" in response.body
        assert response.getheader("Set-Cookie") is None


def test_secret_in_query_or_cookie_authenticates_and_sets_the_cookie(pluto):
    response = pluto.request(f"/?secret={SECRET}")
    assert response.status == 200
    assert response.getheader("Set-Cookie") == f"secret={SECRET}; SameSite=Strict; HttpOnly"
    assert response.getheader("Server") == "Pluto.jl/1.0.1 Julia/1.10.11"
    assert response.getheader("Referrer-Policy") == "same-origin"
    assert pluto.request("/auth-check", {"Cookie": f"secret={SECRET}"}).body == b"OK!"
    assert pluto.request("/nope", {"Cookie": f"secret={SECRET}"}).status == 404
    assert pluto.request("/?secret=wrong").status == 403


def test_unauthenticated_request_logs_the_link_with_the_requests_host(pluto):
    pluto.request("/", {"Host": "example.invalid:1234"})
    expected = f"url = http://example.invalid:1234/?secret={SECRET}"
    eventually(lambda: expected in pluto.output(), timeout=10, what="the log line")


def _websocket(port: int, path: str, key: str = "") -> tuple[socket.socket, bytes]:
    connection = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = key or base64.b64encode(os.urandom(16)).decode()
    connection.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += connection.recv(1)
    return connection, head


def test_websocket_upgrade_is_forbidden_without_secret_and_echoes_with_it(pluto):
    refused, head = _websocket(pluto.port, "/")
    assert head.startswith(b"HTTP/1.1 403") and refused.recv(100) == b"Forbidden"
    refused.close()
    # The key and accept value of RFC 6455's own example (section 1.3): browsers check it.
    accepted, head = _websocket(pluto.port, f"/?secret={SECRET}", key="dGhlIHNhbXBsZSBub25jZQ==")
    assert head.startswith(b"HTTP/1.1 101")
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
    mask, payload = os.urandom(4), b"x" * 200
    accepted.sendall(bytes([0x82, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask
                     + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))  # fmt: skip
    echoed = b""
    while len(echoed) < 4 + len(payload):
        echoed += accepted.recv(4096)
    assert echoed[4:] == payload
    accepted.close()


@pytest.mark.parametrize("layout", ["1.0", "0.20.13", "0.19.2", "0.17"])
def test_startup_output_of_each_pluto_version_gives_the_link(tmp_path, layout):
    server = Standin(tmp_path, layout=layout)
    try:
        assert server.wait_for_link() == f"http://localhost:{server.port}/?secret={SECRET}"
        assert ("[ Info: Loading..." in server.output()) == (layout != "0.17")
    finally:
        server.stop()


@pytest.mark.parametrize("secret", ["", "short123", "has space in the secret!!"])
def test_a_weak_or_odd_secret_is_refused_like_the_launcher_does(tmp_path, secret):
    server = Standin(tmp_path, secret=secret)
    assert server.process.wait(timeout=10) == 1
    assert "does not hold one line of at least 16 characters A-Z, a-z, 0-9" in server.output()


def test_busy_port_fails_with_plutos_message(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        server = Standin(tmp_path, port=blocker.getsockname()[1])
        assert server.process.wait(timeout=10) == 1
    assert "Cannot listen on port" in server.output()
    assert "It may already be in use" in server.output()
