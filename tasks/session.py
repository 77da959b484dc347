"""`fab session.open|invite|revoke|list|close`: Pluto for guests, behind invitations."""

from __future__ import annotations

import datetime
from pathlib import Path

from invoke import Exit

from pluto_deploy import scripts, sessions
from pluto_deploy.archive import download_backup
from pluto_deploy.cli import WOULD_CHANGE, task
from pluto_deploy.deployment import failed_units, nix_error, read_switch, upload
from pluto_deploy.progress import Progress
from pluto_deploy.session_plan import (
    SessionPlan,
    plan_close,
    plan_invite,
    plan_open,
    plan_revoke,
    read_facts,
)
from pluto_deploy.sessions import Invitations, Session, SessionFacts
from pluto_deploy.settings import Settings, load
from pluto_deploy.ssh import ACCEPT_NEW_HELP, check, connect, host_connection, run_as_root
from pluto_deploy.stream import run_streamed
from pluto_deploy.waiting import wait_for_link

ACCEPT = {"accept_new_host_key": ACCEPT_NEW_HELP}
DRY_RUN = {"dry_run": "show what would change on the host and change nothing (exit 3)"}
QR_HELP = "write a QR code PNG of each new link into this directory"


@task(
    name="open",
    positional=["name"],
    help={
        "name": "the session: 1-11 lower-case letters, digits, - (its path and container)",
        "until": 'end, "YYYY-MM-DD HH:MM" in this machine\'s time',
        "hours": "end, N hours from now (--until or --hours: a session always ends)",
        "invites": "how many invitation links to make (default 1)",
        "offline": "no outgoing network for notebooks (needs install_mode nix)",
        "qr": QR_HELP,
        **DRY_RUN,
        **ACCEPT,
    },
)
def open_(
    c,
    name,
    until=None,
    hours=None,
    invites=1,
    offline=False,
    qr=None,
    dry_run=False,
    accept_new_host_key=False,
):
    """Open a session: its own container, https://<public_host>/NAME/, invitation links."""
    s = load(c.config)
    name = sessions.parse_name(name)
    end = sessions.parse_end(until, hours, _now())
    number = _positive("--invites", invites)
    if offline and s.install_mode != "nix":
        raise Exit(
            "--offline: needs install_mode nix (in pkg mode Pluto is installed from the "
            "internet at the first start)"
        )
    if s.public_host is None:
        raise Exit(
            "pluto.public_host: not set; sessions are served at https://<public_host>/<name>/ "
            "(e.g. pluto.example.org)"
        )
    qr_dir = _qr_dir(qr)
    cxn = connect(host_connection(c, s), accept_new_host_key)
    facts = read_facts(cxn, s)
    plan = plan_open(facts, s, cxn.original_host, name, end, offline, number, _now())
    _dry_run(cxn, plan, dry_run)
    _open(cxn, s, facts, plan, qr_dir)


@task(
    positional=["name"],
    help={"count": "how many more links (default 1)", "qr": QR_HELP, **DRY_RUN, **ACCEPT},
)
def invite(c, name, count=1, qr=None, dry_run=False, accept_new_host_key=False):
    """More invitation links for a session, one per person."""
    s = load(c.config)
    name, number, qr_dir = sessions.parse_name(name), _positive("--count", count), _qr_dir(qr)
    cxn = connect(host_connection(c, s), accept_new_host_key)
    plan = plan_invite(read_facts(cxn, s), s, cxn.original_host, name, number, _now())
    _dry_run(cxn, plan, dry_run)
    _write_invitations(cxn, plan)
    _show_links(s, name, plan.made, qr_dir)


@task(
    positional=["name", "which"],
    help={"which": "the invitation's id, token or link; `all` for every one", **DRY_RUN, **ACCEPT},
)
def revoke(c, name, which, dry_run=False, accept_new_host_key=False):
    """Lock one guest (or `all`) out of a session at once, open notebooks included."""
    s = load(c.config)
    name = sessions.parse_name(name)
    cxn = connect(host_connection(c, s), accept_new_host_key)
    target = "" if which == "all" else which
    plan = plan_revoke(read_facts(cxn, s), s, cxn.original_host, name, target)
    _dry_run(cxn, plan, dry_run)
    _write_invitations(cxn, plan)
    print(
        f"Revoked {len(plan.revoked)} invitation(s) of {name}: {', '.join(plan.revoked)}; "
        f"their open notebooks are disconnected now. {plan.active} still valid."
    )


@task(name="list", help=ACCEPT)
def list_(c, accept_new_host_key=False):
    """Every session: state, time left, invitations, memory and CPU, public URL."""
    s = load(c.config)
    cxn = connect(host_connection(c, s), accept_new_host_key)
    _list(s, read_facts(cxn, s))


@task(
    positional=["name"],
    help={
        "no_backup": "do not download the session's notebooks first",
        "output": "backup file (default: session-<name>-<time>.tar.gz)",
        **DRY_RUN,
        **ACCEPT,
    },
)
def close(c, name, no_backup=False, output=None, dry_run=False, accept_new_host_key=False):
    """End a session now: download its notebooks, then remove container, gate and path."""
    s = load(c.config)
    name = sessions.parse_name(name)
    if no_backup and output:
        raise Exit("--output: not together with --no-backup")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    backup = None if no_backup else Path(output or f"session-{name}-{stamp}.tar.gz")
    cxn = connect(host_connection(c, s), accept_new_host_key)
    plan = plan_close(read_facts(cxn, s), s, cxn.original_host, name, backup)
    _dry_run(cxn, plan, dry_run)
    _close(cxn, s, plan)


def _dry_run(cxn, plan: SessionPlan, dry_run: bool) -> None:
    """With --dry-run: print the plan, change nothing, exit 3 (it would change something)."""
    if not dry_run:
        return
    for action in plan.actions:
        print(f"Would: {action}")
    print(f"Dry run: nothing was changed on {cxn.original_host}.")
    raise Exit(code=WOULD_CHANGE)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _positive(flag: str, value) -> int:
    text = str(value)
    if not text.isdigit() or not 1 <= int(text) <= 500:
        raise Exit(f"{flag}: {text!r} is not a number of invitations from 1 to 500")
    return int(text)


def _qr_dir(path: str | None) -> Path | None:
    if path is None:
        return None
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise Exit(f"--qr: {path} is not a directory")
    return directory


def _open(cxn, s: Settings, facts: SessionFacts, plan: SessionPlan, qr_dir) -> None:
    new, instance = plan.session, plan.instance
    progress = Progress(total=4)

    progress.begin(1, f"session {new.name} files")
    staging = upload(cxn, plan.files)
    check(
        run_as_root(cxn, scripts.session_prepare(instance, new.state_dir, staging, new.name)),
        "preparing the session",
    )
    progress.end(f"{instance.data_dir}, owner {instance.uid}, secret kept on the host")

    progress.begin(2, "nixos-rebuild switch")
    code, output = run_streamed(cxn, scripts.rebuild(), progress)
    lines, after, activated = read_switch(output, facts.generation)
    failed = failed_units(code, lines)
    ours = [u for u in failed or [] if new.name in u]
    if failed is None or ours:
        problem = nix_error(lines) if failed is None else f"{', '.join(ours)} failed"
        progress.fail(problem)
        _undo_open(cxn, s, new, problem, (facts.generation, after) if activated else None)
    progress.end("switched" + (f" (failed elsewhere: {', '.join(failed)})" if failed else ""))

    check(
        run_as_root(cxn, scripts.session_share(instance, new.state_dir, new.gate_socket)),
        "giving the gate its files",
    )
    progress.begin(3, f"Pluto in container {new.name}")
    wait_for_link(cxn, instance, None, facts.now, progress)
    progress.end("running")

    progress.begin(4, f"https://{s.public_host}/{new.name}/ through nginx")
    answer = _answer(cxn, s, new.name)
    if answer.get("status") != "403":
        progress.fail(f"nginx answered {answer or 'nothing'}; expected the invitation page")
        raise Exit(f"the session runs but https://{s.public_host}/{new.name}/ does not answer")
    progress.end("only with an invitation")
    ends = new.until.astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print(f"Session {new.name} is open until {ends} (the host ends it by itself).")
    _show_links(s, new.name, plan.made, qr_dir)


def _undo_open(cxn, s: Settings, new: Session, problem: str, switched) -> None:
    """Take the session out again; switched: (before, after) generations if the switch
    activated the new system, which switching back then undoes."""
    run_as_root(cxn, scripts.session_forget(s, new.name))
    if switched is None:
        outcome = "the system was not switched"
    else:
        back = run_as_root(cxn, scripts.switch_back(*switched))
        outcome = "switched back" if back.ok else f"switching back FAILED (exit {back.exited})"
    raise Exit(f"opening session {new.name} failed: {problem}; removed it again, {outcome}")


def _answer(cxn, s: Settings, name: str) -> dict[str, str]:
    result = run_as_root(cxn, scripts.session_answer(s.public_host, name))
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def _show_links(s: Settings, name: str, made: list[tuple[str, str]], qr_dir) -> None:
    print("Invitation links, one per person (shown only now; `fab session revoke` takes the id):")
    for invitation, token in made:
        print(f"  {invitation}  {sessions.link(s, name, token)}")
    if qr_dir is not None:
        import qrcode
        from qrcode.image.pure import PyPNGImage

        qr_dir.mkdir(parents=True, exist_ok=True)
        for invitation, token in made:
            image = qrcode.make(sessions.link(s, name, token), image_factory=PyPNGImage)
            path = qr_dir / f"{name}-{invitation}.png"
            with open(path, "wb") as out:
                image.save(out)
        print(f"QR codes: {qr_dir}/{name}-<id>.png ({len(made)})")


def _write_invitations(cxn, plan: SessionPlan) -> None:
    staging = upload(cxn, plan.files)
    script = scripts.session_invitations(plan.session.state_dir, staging)
    check(run_as_root(cxn, script), "writing invitations")


def _close(cxn, s: Settings, plan: SessionPlan) -> None:
    name, instance = plan.session.name, plan.instance
    if plan.backup is not None:
        download_backup(cxn, instance, plan.backup)
    run_as_root(cxn, scripts.session_forget(s, name))
    progress = Progress(total=1)
    progress.begin(1, "nixos-rebuild switch")
    code, output = run_streamed(cxn, scripts.rebuild(), progress)
    lines = read_switch(output, "")[0]
    if failed_units(code, lines) is None:
        progress.fail(nix_error(lines))
        raise Exit(f"closing session {name}: the switch failed: {nix_error(lines)}")
    progress.end("switched")
    print(
        f"Session {name} is closed: container and gate gone, nginx no longer serves "
        f"/{name}/. Its notebooks stay in {instance.data_dir} on {cxn.original_host}."
    )


def _list(s: Settings, facts: SessionFacts) -> None:
    if not facts.sessions:
        print("No sessions.")
        return
    now = datetime.datetime.fromtimestamp(facts.now, datetime.timezone.utc)
    for name, current in sorted(facts.sessions.items()):
        left = current.until - now
        unit = facts.units.get(name, {})
        invitations = facts.invitations.get(name, Invitations())
        revoked = len(invitations.entries) - invitations.active
        memory = unit.get("MemoryCurrent", "")
        memory = f"{int(memory) / 2**20:.0f} MiB" if memory.isdigit() else "-"
        cpu = unit.get("CPUUsageNSec", "")
        cpu = f"{int(cpu) / 1e9:.0f}s CPU" if cpu.isdigit() else "-"
        state = unit.get("ActiveState", "?") if left.total_seconds() > 0 else "ended"
        print(
            f"{name}: {state}, {_duration(left)}, invitations {len(invitations.entries)} "
            f"(joined {facts.joined.get(name, 0)}, revoked {revoked}), {memory}, {cpu}, "
            f"https://{s.public_host or '<public_host>'}/{name}/"
        )


def _duration(left: datetime.timedelta) -> str:
    minutes = int(left.total_seconds() // 60)
    if minutes <= 0:
        return "over"
    return f"{minutes // 60}h{minutes % 60:02d} left"
