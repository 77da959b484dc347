"""Stand-in for journalctl (systemd 25x) on the simulated host.

Follows ../shared/reference/nixos.md §2.3: `-M NAME` reads a running
container's journal (root only, through the machine registry), `-u UNIT`
matches entries of the unit and systemd's messages about it, `-o cat` prints
the bare message. Supported: -M/--machine, -u/--unit, -n/--lines, -f/--follow,
-o/--output (cat, short, short-iso, json), --since/--until (@EPOCH or
"YYYY-MM-DD HH:MM:SS"), --cursor, --after-cursor, --show-cursor, -q,
--no-pager, -a, -e, --no-tail. Simpler than the real thing: entries live in a
JSON-lines file (common.py), no field matches, no boots other than "current".
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import sys
import time

import common


def _since(text: str) -> float:
    if text.startswith("@"):
        return float(text[1:])
    return time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S")) - time.timezone


def _sequence(cursor: str) -> int:
    for part in cursor.split(";"):
        if part.startswith("i="):
            return int(part[2:], 16)
    raise ValueError(cursor)


def _format(entry: dict, output: str, hostname: str) -> str:
    message = entry.get("MESSAGE", "")
    if output == "cat":
        return message
    if output == "json":
        return json.dumps(entry)
    seconds = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
    if output == "short-iso":
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(seconds))
    else:
        stamp = time.strftime("%b %d %H:%M:%S", time.gmtime(seconds))
    identifier = entry.get("SYSLOG_IDENTIFIER", "unknown")
    pid = f"[{entry['_PID']}]" if entry.get("_PID") else ""
    return f"{stamp} {entry.get('_HOSTNAME', hostname)} {identifier}{pid}: {message}"


def _may_read_system_journal() -> bool:
    if os.geteuid() == 0:
        return True
    user = pwd.getpwuid(os.geteuid()).pw_name
    return any(
        user in grp.getgrnam(g).gr_mem for g in ("wheel", "systemd-journal", "adm") if _group(g)
    )


def _group(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="journalctl", add_help=False)
    parser.add_argument("-M", "--machine")
    parser.add_argument("-u", "--unit", action="append", default=[])
    parser.add_argument("-n", "--lines", nargs="?", const="10")
    parser.add_argument("-f", "--follow", action="store_true")
    parser.add_argument("-o", "--output", default="short")
    parser.add_argument("--since")
    parser.add_argument("--until")
    parser.add_argument("--cursor")
    parser.add_argument("--after-cursor")
    parser.add_argument("--show-cursor", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true")
    for flag in ("--no-pager", "-a", "--all", "-e", "--pager-end", "--no-tail", "--merge"):
        parser.add_argument(flag, action="store_true")
    args = parser.parse_args(argv)
    if args.output not in ("cat", "short", "short-iso", "json", "short-precise"):
        print(f'Unknown output format "{args.output}".', file=sys.stderr)
        return 1

    hostname = os.uname().nodename
    if args.machine:
        if os.geteuid() != 0:
            print("Failed to open journal: Permission denied", file=sys.stderr)
            return 1
        record = common.machine(args.machine)
        if record is None:
            print(
                f"Failed to get machine '{args.machine}': No machine '{args.machine}' known",
                file=sys.stderr,
            )
            return 1
        journal = f"{record['root']}/var/log/journal/sim.jsonl"
        hostname = args.machine
    else:
        journal = common.HOST_JOURNAL
        if not _may_read_system_journal():
            print(
                "Hint: You are currently not seeing messages from other users and the system.\n"
                "      Users in groups 'adm', 'systemd-journal', 'wheel' can see all messages.",
                file=sys.stderr,
            )
            journal = "/nonexistent"

    units = {u if "." in u else f"{u}.service" for u in args.unit}

    def wanted(entry: dict) -> bool:
        if units and not ({entry.get("_SYSTEMD_UNIT"), entry.get("UNIT")} & units):
            return False
        stamp = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
        if args.since and stamp < _since(args.since):
            return False
        if args.until and stamp > _since(args.until):
            return False
        sequence = _sequence(entry["__CURSOR"])
        if args.cursor and sequence < _sequence(args.cursor):
            return False
        return not (args.after_cursor and sequence <= _sequence(args.after_cursor))

    def read_from(offset: int) -> tuple[list[dict], int]:
        try:
            with open(journal) as file:
                file.seek(offset)
                data = file.read()
        except FileNotFoundError:
            return [], offset
        complete = data[: data.rfind("\n") + 1]
        entries = [json.loads(line) for line in complete.splitlines() if line.strip()]
        return entries, offset + len(complete.encode())

    entries, offset = read_from(0)
    selected = [e for e in entries if wanted(e)]
    if args.lines is not None:
        count = int(args.lines.lstrip("+")) if args.lines != "all" else len(selected)
        selected = selected[-count:] if count else []
    elif args.follow and not (args.since or args.cursor or args.after_cursor):
        selected = selected[-10:]

    def emit(batch: list[dict]) -> None:
        for entry in batch:
            sys.stdout.write(_format(entry, args.output, hostname) + "\n")
        sys.stdout.flush()

    try:
        if not selected and not args.quiet and not args.follow:
            print("-- No entries --")
        emit(selected)
        if args.show_cursor and selected and not args.follow:
            print(f"-- cursor: {selected[-1]['__CURSOR']}")
        while args.follow:
            time.sleep(0.05)
            fresh, offset = read_from(offset)
            emit([e for e in fresh if wanted(e)])
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
