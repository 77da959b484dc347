"""Cost of `fab deploy` against the simulated host: wall time, SSH logins, remote commands.

    sudo python -m tests.benchmarks.deploy [--runs 3]

A first deploy (the stand-ins' own waits set to zero) and a no-op redeploy,
each run on a fresh host / the same host several times; prints medians and
checks issue #4's target: the no-op opens one SSH connection and runs at
most 3 remote commands.
"""

from __future__ import annotations

import argparse
import statistics
import time

from tests.benchmarks.common import fab, simulated_host, table


def measure(host, *args: str) -> tuple[float, int, int]:
    connections, commands = host.connections(), len(host.commands())
    started = time.perf_counter()
    result = fab(host, "deploy", "--no-tunnel", *args)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"deploy failed:\n{result.stdout}{result.stderr}")
    return elapsed, host.connections() - connections, len(host.commands()) - commands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    first, noop = [], []
    for _ in range(runs):
        with simulated_host(deploy=False) as host:
            first.append(measure(host, "--add-import"))
            noop.extend(measure(host) for _ in range(3))
    rows = []
    for label, samples in (("first deploy", first), ("no-op redeploy", noop)):
        seconds = statistics.median(s[0] for s in samples)
        connections = max(s[1] for s in samples)
        commands = max(s[2] for s in samples)
        rows.append([label, f"{seconds:.2f}", str(connections), str(commands)])
    verdict = "ok" if max(s[1] for s in noop) == 1 and max(s[2] for s in noop) <= 3 else "MISSED"
    print(f"fab deploy --no-tunnel on the simulated host ({runs} fresh hosts, 3 no-op runs each)")
    print(table(["run", "seconds (median)", "SSH connections", "remote commands"], rows))
    print(f"target for the no-op redeploy: 1 connection, <= 3 commands: {verdict}")


if __name__ == "__main__":
    main()
