"""HTTP requests to Pluto through the open SSH connection (no extra login, no remote command)."""

from __future__ import annotations

from dataclasses import dataclass

import paramiko
from fabric import Connection


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def get(
    cxn: Connection, address: str, port: int, path: str, timeout: float = 10
) -> Response | None:
    """GET `path` from address:port as seen from the host; None if nothing listens.

    Uses a direct-tcpip channel of the existing SSH connection, so the secret in
    `path` travels only inside SSH, never through a command line on either side.
    """
    try:
        channel = cxn.transport.open_channel(
            "direct-tcpip", (address, port), ("127.0.0.1", 0), timeout=timeout
        )
    except (paramiko.ChannelException, paramiko.SSHException, OSError):
        return None
    channel.settimeout(timeout)
    try:
        channel.sendall(
            f"GET {path} HTTP/1.0\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while True:
            chunk = channel.recv(65536)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, OSError):
        return None
    finally:
        channel.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return None
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return Response(status, headers, body)
