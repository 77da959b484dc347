"""`fab session`'s read-only half: check the host's facts, plan what a session task changes.

Like plan.py for deploy: each `plan_*` refuses with one line (Exit) when the host
or the request is not fit, else returns every change the task will make. The
dry run prints `SessionPlan.actions`; the task (tasks/session.py) carries out
exactly this plan and nothing else.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

from invoke import Exit

from . import bundle, scripts
from .sessions import (
    SESSIONS_DATA,
    SESSIONS_STATE,
    Invitations,
    Session,
    SessionFacts,
    public_values,
)
from .settings import Settings
from .ssh import check, run_as_root

PUBLIC_FILE = "public.json"


def read_facts(cxn, s: Settings) -> SessionFacts:
    """Everything the session tasks decide on, in one read-only call."""
    script = scripts.session_facts(
        s, [*bundle.FILE_NAMES, PUBLIC_FILE], SESSIONS_STATE, SESSIONS_DATA
    )
    return SessionFacts.parse(check(run_as_root(cxn, script), "reading the sessions").stdout)


@dataclass(frozen=True)
class SessionPlan:
    """Every change one `fab session …` makes on the host, decided before any is made."""

    session: Session
    instance: Settings  # the session's deployment settings (container, uid, paths, limits)
    actions: tuple[str, ...]  # in words, in the order the task takes them
    files: dict[str, bytes]  # uploaded: invitations.json; on open also the module values
    made: tuple[tuple[str, str], ...] = ()  # new invitations (id, token): shown after the run
    revoked: tuple[str, ...] = ()  # ids
    active: int = 0  # valid invitations afterwards
    backup: Path | None = None  # close: the notebooks' archive on this machine


def plan_open(
    facts: SessionFacts,
    s: Settings,
    host: str,
    name: str,
    end: datetime.datetime,
    offline: bool,
    number: int,
    now: datetime.datetime,
) -> SessionPlan:
    if name in facts.sessions:
        raise Exit(_taken(facts, name, host))
    if name in facts.containers:
        raise Exit(f"NAME: {host} already has a container {name!r} that is not a session")
    if not (facts.module_current() and facts.state_version and facts.imports_module(s.module_dir)):
        raise Exit(
            f"the Pluto module on {host} is missing or from another version; "
            "run `fab deploy` first (sessions use its module)"
        )
    served = _served(facts)
    if facts.sessions and served and served.get("publicHost") != s.public_host:
        # Their links and guests' cookies name the old host: they would all stop working.
        raise Exit(
            f"pluto.public_host: {s.public_host!r} is not {served.get('publicHost')!r}, which "
            f"the open sessions ({', '.join(sorted(facts.sessions))}) are served under; close "
            "them first or keep the setting"
        )
    for setting, path in (
        ("tls_certificate", s.tls_certificate),
        ("tls_certificate_key", s.tls_certificate_key),
    ):
        if path and path not in facts.tls_files:
            # nginx would fail to start with it, and take the host's other sites down too.
            raise Exit(f"pluto.{setting}: {path} is not a file on {host}; copy it there first")
    data_dir = f"{SESSIONS_DATA}/{name}"
    if name in facts.leftover_notebooks:
        # A new session must never show its guests the notebooks of an earlier one.
        raise Exit(
            f"NAME: {data_dir} on {host} still holds notebooks of an earlier session {name!r}; "
            "move them away (or delete them), or choose another name"
        )
    new = Session(name, facts.free_index(), end, offline)
    instance = new.settings(s)
    invitations = Invitations()
    made = invitations.add(number, now)
    public = (json.dumps(public_values(s), indent=1) + "\n").encode()
    values = json.dumps(new.module_values(s, facts.state_version), indent=1, sort_keys=True)
    actions = [
        f"write sessions/{name}.json"
        + (f" and {PUBLIC_FILE}" if facts.module_files.get(PUBLIC_FILE) != public else "")
        + f" in {s.module_dir}",
        f"create {data_dir} (owner {instance.uid}, mode 0700)"
        + (f", {instance.state_host_dir} (the depot)" if instance.ephemeral else "")
        + f" and a Pluto secret in {instance.secret_dir}",
        f"write {number} invitation(s) to {new.state_dir}/invitations.json (hashes only)",
        f"run nixos-rebuild switch: container {name} (uid {instance.uid}, memory "
        f"{instance.memory_max}, CPU {instance.cpu_quota}"
        + (", no outgoing network" if offline else "")
        + f"), its invitation gate, https://{s.public_host}/{name}/ in nginx, "
        f"the end at {_local(end)}",
        f"wait for Pluto in {name}; check that nginx answers with the invitation page",
    ]
    if facts.sessions and served and served != public_values(s):
        actions.insert(
            1,
            f"serve the open sessions ({', '.join(sorted(facts.sessions))}) "
            "with the new certificate settings",
        )
    files = {
        "invitations.json": invitations.text().encode(),
        PUBLIC_FILE: public,
        "session.json": (values + "\n").encode(),
    }
    return SessionPlan(new, instance, tuple(actions), files, tuple(made), active=number)


def plan_invite(
    facts: SessionFacts, s: Settings, host: str, name: str, number: int, now: datetime.datetime
) -> SessionPlan:
    current = _existing(facts, host, name)
    invitations = _invitations(facts, name)
    made = invitations.add(number, now)
    actions = (
        f"add {number} invitation(s) to {current.state_dir}/invitations.json "
        "(the gate reads it within a second)",
    )
    files = {"invitations.json": invitations.text().encode()}
    return SessionPlan(
        current, current.settings(s), actions, files, tuple(made), active=invitations.active
    )


def plan_revoke(facts: SessionFacts, s: Settings, host: str, name: str, which: str) -> SessionPlan:
    """which: an invitation's id, token or link; "" for every one."""
    current = _existing(facts, host, name)
    invitations = _invitations(facts, name)
    revoked = invitations.revoke(which)
    if not revoked:
        raise Exit(f"{which or 'all'}: no valid invitation of session {name} matches")
    actions = (
        f"revoke invitation(s) {', '.join(revoked)} of {name} in "
        f"{current.state_dir}/invitations.json; the gate closes their open connections",
    )
    files = {"invitations.json": invitations.text().encode()}
    return SessionPlan(
        current,
        current.settings(s),
        actions,
        files,
        revoked=tuple(revoked),
        active=invitations.active,
    )


def plan_close(
    facts: SessionFacts, s: Settings, host: str, name: str, backup: Path | None
) -> SessionPlan:
    current = _existing(facts, host, name)
    instance = current.settings(s)
    if backup is not None and backup.exists():
        raise Exit(f"--output: {backup} already exists; choose another file")
    actions = [
        f"remove sessions/{name}.json from {s.module_dir}",
        f"run nixos-rebuild switch: container {name}, its gate, https://{s.public_host}/{name}/ "
        "and its end timer go",
        f"keep the notebooks in {instance.data_dir} on {host}",
    ]
    if backup is not None:
        actions.insert(0, f"download the notebooks of {name} into {backup}")
    return SessionPlan(current, instance, tuple(actions), {}, backup=backup)


def _existing(facts: SessionFacts, host: str, name: str) -> Session:
    current = facts.sessions.get(name)
    if current is None:
        known = ", ".join(sorted(facts.sessions)) or "none"
        raise Exit(f"NAME: no session {name!r} on {host} (open ones: {known})")
    return current


def _invitations(facts: SessionFacts, name: str) -> Invitations:
    found = facts.invitations.get(name, Invitations())
    return Invitations([dict(entry) for entry in found.entries])


def _taken(facts: SessionFacts, name: str, host: str) -> str:
    until = facts.sessions[name].until
    if until.timestamp() <= facts.now:
        return (
            f"NAME: session {name!r} on {host} ended at {_local(until)} but is not closed; "
            f"`fab session.close {name}` first"
        )
    return (
        f"NAME: session {name!r} is already open on {host} (until {_local(until)}); "
        f"`fab session.invite {name}` makes more links"
    )


def _served(facts: SessionFacts) -> dict | None:
    """public.json on the host: what the open sessions are served under."""
    try:
        served = json.loads(facts.module_files.get(PUBLIC_FILE) or b"null")
    except ValueError:
        return None
    return served if isinstance(served, dict) else None


def _local(moment: datetime.datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M %Z")
