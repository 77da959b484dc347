"""Sessions: Pluto instances for guests without an account, behind nginx and invitations.

A session is `services.pluto.instances.<name>` (files/module.nix), its values in
`<module_dir>/sessions/<name>.json`; the host-level ones (public host, certificate)
in `<module_dir>/public.json`. What is read from the host (`SessionFacts`) is
separate from what `fab session` changes, and every change is made by a script
of scripts.py.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import posixpath
import secrets
from dataclasses import dataclass, field

from invoke import Exit

from . import bundle, nixconfig
from .settings import Settings
from .values import Invalid, session_name

SESSIONS_DATA = "/data/pluto-sessions"
SESSIONS_STATE = "/var/lib/pluto-sessions"
FIRST_UID = 2100  # session uids: FIRST_UID + index, one per session
LONGEST = datetime.timedelta(days=14)
UNTIL_FORMAT = "%Y-%m-%d %H:%M:%S UTC"  # a systemd calendar time (systemd.time(7))


def parse_name(value: str) -> str:
    try:
        return session_name(value)
    except Invalid as problem:
        raise Exit(f"NAME: {json.dumps(value)} {problem}") from None


def parse_end(until: str | None, hours: str | None, now: datetime.datetime) -> datetime.datetime:
    """The session's end in UTC: --until (this machine's local time) or --hours from now."""
    if (until is None) == (hours is None):
        raise Exit('--until "YYYY-MM-DD HH:MM" or --hours N: give one (a session always ends)')
    if hours is not None:
        try:
            span = datetime.timedelta(hours=float(hours))
        except ValueError:
            raise Exit(f"--hours: {hours!r} is not a number of hours (like 3 or 1.5)") from None
        end = now + span
        flag, shown = "--hours", hours
    else:
        try:
            local = datetime.datetime.strptime(until, "%Y-%m-%d %H:%M")
        except ValueError:
            raise Exit(f'--until: {until!r} is not a time like "2026-12-28 18:00"') from None
        end = local.astimezone(datetime.timezone.utc)
        flag, shown = "--until", until
    if end <= now + datetime.timedelta(minutes=1):
        raise Exit(f"{flag}: {shown!r} is not in the future (at least a minute from now)")
    if end - now > LONGEST:
        raise Exit(f"{flag}: {shown!r} is more than 14 days away; sessions are short by design")
    return end.replace(microsecond=0)


@dataclass(frozen=True)
class Session:
    """One session's values, as they are in sessions/<name>.json."""

    name: str
    index: int
    until: datetime.datetime
    offline: bool

    @property
    def uid(self) -> int:
        return FIRST_UID + self.index

    @property
    def host_address(self) -> str:
        return f"10.234.{self.index}.1"

    @property
    def local_address(self) -> str:
        return f"10.234.{self.index}.2"

    @property
    def state_dir(self) -> str:
        return f"{SESSIONS_STATE}/{self.name}"

    @property
    def gate_socket(self) -> str:
        return f"/run/pluto-gate/{self.name}.sock"

    def settings(self, s: Settings) -> Settings:
        """The deployment settings of this instance, for the scripts that take Settings."""
        return dataclasses.replace(
            s,
            container=self.name,
            data_dir=f"{SESSIONS_DATA}/{self.name}",
            secret_dir=f"{self.state_dir}/secret",
            uid=self.uid,
            gid=self.uid,
            private_network=True,
            host_address=self.host_address,
            local_address=self.local_address,
            ephemeral=s.install_mode == "nix",
            memory_max=s.session_memory_max,
            memory_high=s.session_memory_high,
            cpu_quota=s.session_cpu_quota,
            tasks_max=s.session_tasks_max,
        )

    def module_values(self, s: Settings, state_version: str) -> dict:
        """sessions/<name>.json: option values of services.pluto.instances.<name>."""
        values = bundle.module_settings(self.settings(s), state_version)
        del values["enable"], values["containerName"]
        values.update(
            baseUrl=f"/{self.name}/",
            until=self.until.strftime(UNTIL_FORMAT),
            offline=self.offline,
        )
        return values

    @classmethod
    def from_values(cls, name: str, values: dict) -> Session:
        until = datetime.datetime.strptime(values["until"], UNTIL_FORMAT)
        return cls(
            name=name,
            index=int(values["hostAddress"].split(".")[2]),  # 10.234.<index>.1
            until=until.replace(tzinfo=datetime.timezone.utc),
            offline=bool(values.get("offline")),
        )


def public_values(s: Settings) -> dict:
    """public.json: the host-level options of sessions."""
    return {
        "publicHost": s.public_host,
        "sslCertificate": s.tls_certificate,
        "sslCertificateKey": s.tls_certificate_key,
    }


def link(s: Settings, session: str, token: str) -> str:
    return f"https://{s.public_host}/{session}/?invite={token}"


@dataclass
class Invitations:
    """invitations.json: ids and SHA-256 hashes of the tokens, never the tokens (files/gate.py)."""

    entries: list[dict] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Invitations:
        try:
            entries = json.loads(text).get("invitations", []) if text.strip() else []
        except (ValueError, AttributeError):
            entries = []
        return cls([e for e in entries if isinstance(e, dict) and "id" in e and "hash" in e])

    def add(self, count: int, now: datetime.datetime) -> list[tuple[str, str]]:
        """Append `count` new invitations; (id, token) of each, shown once and kept nowhere."""
        taken = {entry["id"] for entry in self.entries}
        made = []
        while len(made) < count:
            invitation, token = secrets.token_hex(3), secrets.token_urlsafe(24)
            if invitation in taken:
                continue
            taken.add(invitation)
            self.entries.append(
                {
                    "id": invitation,
                    "hash": hashlib.sha256(token.encode()).hexdigest(),
                    "created": now.strftime(UNTIL_FORMAT),
                    "revoked": False,
                }
            )
            made.append((invitation, token))
        return made

    def revoke(self, which: str) -> list[str]:
        """Revoke by id, by token or by its whole link ("" = all); the ids revoked."""
        token = which.rsplit("invite=", 1)[-1]
        digest = hashlib.sha256(token.encode()).hexdigest()
        revoked = []
        for entry in self.entries:
            if entry["revoked"]:
                continue
            if which == "" or entry["id"] == which or entry["hash"] == digest:
                entry["revoked"] = True
                revoked.append(entry["id"])
        return revoked

    @property
    def active(self) -> int:
        return sum(1 for entry in self.entries if not entry["revoked"])

    def text(self) -> str:
        return json.dumps({"invitations": self.entries}, indent=1) + "\n"


@dataclass
class SessionFacts:
    """What `fab session` reads from the host before it changes anything."""

    now: int = 0
    module_files: dict[str, bytes] = field(default_factory=dict)
    configs: dict[str, str] = field(default_factory=dict)
    state_version: str = ""
    generation: str = ""
    sessions: dict[str, Session] = field(default_factory=dict)
    invitations: dict[str, Invitations] = field(default_factory=dict)
    containers: set[str] = field(default_factory=set)
    taken_uids: set[int] = field(default_factory=set)
    units: dict[str, dict[str, str]] = field(default_factory=dict)
    joined: dict[str, int] = field(default_factory=dict)
    leftover_notebooks: set[str] = field(default_factory=set)  # non-empty data dirs by name
    tls_files: set[str] = field(default_factory=set)  # the settings' certificate files found

    @classmethod
    def parse(cls, output: str) -> SessionFacts:
        facts = cls()
        for line in output.splitlines():
            key, _, value = line.partition("=")
            if key == "now":
                facts.now = int(value or 0)
            elif key == "generation":
                facts.generation = value
            elif key == "config":
                path, _, content = value.partition(":")
                facts.configs[path] = base64.b64decode(content).decode(errors="replace")
            elif key == "module":
                name, _, content = value.partition(":")
                facts.module_files[name] = base64.b64decode(content)
            elif key == "session":
                name, _, content = value.partition(":")
                try:
                    values = json.loads(base64.b64decode(content))
                    facts.sessions[name] = Session.from_values(name, values)
                except (ValueError, KeyError, TypeError):
                    continue  # not ours to read; the name still counts as taken
            elif key == "invitations":
                name, _, content = value.partition(":")
                facts.invitations[name] = Invitations.parse(base64.b64decode(content).decode())
            elif key == "container":
                facts.containers.add(value)
            elif key == "uid":
                facts.taken_uids.update(int(u) for u in value.split() if u.isdigit())
            elif key == "unit":
                name, _, rest = value.partition(" ")
                facts.units[name] = dict(
                    part.split("=", 1) for part in rest.split("\t") if "=" in part
                )
            elif key == "tls_file":
                facts.tls_files.add(value)
            elif key == "notebooks":
                facts.leftover_notebooks.add(value)
            elif key == "joined":
                name, _, count = value.partition(" ")
                facts.joined[name] = int(count or 0)
        try:
            deployed = json.loads(facts.module_files.get(bundle.SETTINGS_FILE, b"{}"))
            facts.state_version = str(deployed.get("stateVersion") or "")
        except ValueError:
            facts.state_version = ""
        return facts

    def imports_module(self, module_dir: str) -> bool:
        return any(
            nixconfig.imports_module(text, module_dir, posixpath.dirname(path))
            for path, text in self.configs.items()
        )

    def module_current(self) -> bool:
        """Whether the module directory holds this version's files (sessions need them)."""
        ours = {name: (bundle.FILES / name).read_bytes() for name in bundle.STATIC_FILES}
        return all(self.module_files.get(name) == content for name, content in ours.items())

    def free_index(self) -> int:
        used = {session.index for session in self.sessions.values()}
        for index in range(1, 250):
            if index not in used and FIRST_UID + index not in self.taken_uids:
                return index
        raise Exit("no free session slot on this host (249 sessions); close some first")
