"""Our tunnel (`fab tunnel`) against plain `ssh -N -L` through the same sshd, side by side.

    sudo python -m tests.benchmarks.tunnel [--rounds 3]

Measures, alternating between the two tunnels each round: throughput of a
100 MB download, round trip of a 200-byte WebSocket message, and latency of a
new HTTP connection (connect + GET /ping). Prints medians and the ratio
ours/plain with the targets from issue #5 (throughput >= 0.9x, times <= 1.1x).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import re
import signal
import socket
import statistics
import subprocess
import time

from tests.benchmarks.common import FAB, ROOT, simulated_host, table

DOWNLOAD = 100 * 1000 * 1000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_listening(port: int) -> None:
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def throughput(port: int, secret: str) -> float:
    """MB/s of one 100 MB download."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    connection.request("GET", f"/sim/blob?bytes={DOWNLOAD}&secret={secret}")
    response = connection.getresponse()
    received = 0
    while chunk := response.read(1 << 20):
        received += len(chunk)
    elapsed = time.perf_counter() - started
    assert received == DOWNLOAD, received
    return DOWNLOAD / elapsed / 1e6


def websocket_round_trips(port: int, secret: str, count: int = 500) -> float:
    """Median microseconds for a 200-byte message to come back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET /?secret={secret} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        payload, mask = os.urandom(200), b"\x01\x02\x03\x04"
        frame = bytes([0x82, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask
        frame += bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        times = []
        for _ in range(count):
            started = time.perf_counter()
            sock.sendall(frame)
            reply = b""
            while len(reply) < 4 + len(payload):
                reply += sock.recv(4096)
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def new_connections(port: int, count: int = 200) -> float:
    """Median milliseconds for connect + GET /ping + response."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/ping")
        assert connection.getresponse().read() == b"OK!"
        connection.close()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    rounds = parser.parse_args().rounds
    with simulated_host() as host:
        secret = host.read("/var/lib/pluto-secret/secret").strip()
        ours_port, plain_port = free_port(), free_port()
        ours = subprocess.Popen(
            [FAB, "-S", str(host.ssh_config), "-H", "admin@hainich",
             "tunnel", "--local-port", str(ours_port)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for line in ours.stdout:
            if re.search("Ctrl-C closes it", line):
                break
        plain = subprocess.Popen(
            ["ssh", "-F", str(host.ssh_config), "-N", "-l", "admin",
             "-L", f"127.0.0.1:{plain_port}:127.0.0.1:9999", "hainich"],
        )  # fmt: skip
        wait_listening(plain_port)
        results = {"ours": {}, "plain": {}}
        measures = {
            "download 100 MB (MB/s)": lambda p: throughput(p, secret),
            "WebSocket 200 B round trip (µs)": lambda p: websocket_round_trips(p, secret),
            "new HTTP connection (ms)": new_connections,
        }
        pairs = [("ours", ours_port), ("plain", plain_port)]
        for round_number in range(rounds):
            for label, measure in measures.items():
                # Alternate who goes first, so warm-up and drift hit both alike.
                for name, port in pairs if round_number % 2 == 0 else pairs[::-1]:
                    results[name].setdefault(label, []).append(measure(port))
        ours.send_signal(signal.SIGINT)
        ours.wait(timeout=20)
        plain.terminate()
        plain.wait()
    rows = []
    for label in measures:
        mine, base = (
            statistics.median(results["ours"][label]),
            statistics.median(results["plain"][label]),
        )
        ratio = mine / base
        higher_is_better = "MB/s" in label
        target = ">= 0.90" if higher_is_better else "<= 1.10"
        ok = ratio >= 0.9 if higher_is_better else ratio <= 1.1
        rows.append(
            [label, f"{mine:.1f}", f"{base:.1f}", f"{ratio:.2f}", target, "ok" if ok else "MISSED"]
        )
    print(f"fab tunnel vs ssh -N -L through the same sshd, median of {rounds} alternating rounds")
    print(table(["measure", "fab tunnel", "ssh -N -L", "ratio", "target", ""], rows))


if __name__ == "__main__":
    main()
