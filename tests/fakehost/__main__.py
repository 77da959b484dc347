"""Start the simulated NixOS host by hand: `sudo python -m tests.fakehost`.

Prints the ssh_config to use (`fab -S FILE -H hainich deploy`, `ssh -F FILE
hainich`) and runs until Ctrl-C, then stops the host and removes its files.
"""

from __future__ import annotations

import argparse
import signal
import sys

from tests.fakehost import SUDO_PASSWORD, FakeHost, missing_requirements


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakehost", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--dir", help="keep the host's files here (default: a new temporary directory)"
    )
    parser.add_argument("--keep", action="store_true", help="leave the files in place after Ctrl-C")
    args = parser.parse_args()
    problem = missing_requirements()
    if problem:
        print(f"cannot start the simulated host: {problem}", file=sys.stderr)
        return 1
    host = FakeHost(args.dir).start()
    print(f"Simulated NixOS host 'hainich' is up (PID {host.pid}).")
    print(f"ssh_config: {host.ssh_config}")
    print(f"  fab -S {host.ssh_config} -H hainich deploy        # as admin (sudo, no password)")
    print(f"  fab -S {host.ssh_config} -H root@hainich deploy   # as root")
    print(f"  fab -S {host.ssh_config} -H alice@hainich --prompt-for-sudo-password deploy"
          f"   # sudo password: {SUDO_PASSWORD}")  # fmt: skip
    print(f"  ssh -F {host.ssh_config} hainich")
    print("Ctrl-C stops it.", flush=True)
    # Also when started in the background, where SIGINT would be ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        host.stop()
        if not args.keep:
            host.remove()
    print("Stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
