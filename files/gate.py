"""Invitation gate of one Pluto session: between the host's nginx and the session's Pluto.

nginx passes every request for https://<publicHost>/<name>/ to this gate's socket
(socket activation, systemd.socket(5): only nginx's group may connect). The gate
lets a request through only with a valid invitation, and then adds Pluto's own
secret, which therefore never leaves the host:

* `?invite=TOKEN` on a valid invitation sets the cookie `pluto_invite` (Path = the
  session's path, Secure, HttpOnly) and redirects to the same address without the
  token; later requests carry the cookie;
* the invitation list (GATE_INVITATIONS, written by `fab session invite/revoke`)
  holds SHA-256 hashes of the tokens, never the tokens; it is re-read when it
  changes, and every open connection (the notebook's WebSocket above all) of an
  invitation that is no longer valid is closed at once;
* at GATE_UNTIL the session is over: everything open is closed, every request gets
  "This session has ended" (the timer also stops the container);
* Pluto's secret (GATE_SECRET_FILE, readable by nginx's group, which the gate's
  dynamic user joins) goes to Pluto as its `secret` cookie; a `secret` the guest
  sends is dropped, and Pluto's Set-Cookie of it is never passed back.

nginx speaks HTTP/1.1 with `Connection: close` or `upgrade` to it (nixpkgs'
proxyWebsockets, with the `$connection_upgrade` map), so each connection carries
one request; after the request head, bytes are passed through as they come.
Python's standard library only; one line per refusal to the journal, with the
invitation's id, never its token.
"""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import json
import os
import socket
import sys
import time
import urllib.parse

LISTEN_FDS_START = 3  # sd_listen_fds(3)
MAX_HEAD = 64 * 1024
COOKIE = "pluto_invite"

PAGE = (
    "<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
    "<meta name='viewport' content='width=device-width'></head>"
    "<body style='font-family:sans-serif;max-width:36em;margin:4em auto'>"
    "<h1>{title}</h1><p>{text}</p></body></html>"
)


def log(message: str) -> None:
    print(message, flush=True)


def end_of_session(text: str) -> float:
    """GATE_UNTIL ("2026-12-28 17:00:00 UTC", a systemd calendar time) as a Unix time."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S UTC"))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Invitations:
    """The list `fab session` writes: {"invitations": [{"id", "hash", "revoked"}]}."""

    def __init__(self, path: str):
        self.path = path
        self.stamp: tuple[int, int] | None = None
        self.valid: dict[str, str] = {}  # hash -> id

    def reload(self) -> bool:
        """Re-read the file if it changed; True if it did."""
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            status = None
        stamp = (status.st_mtime_ns, status.st_ino) if status else None
        if stamp == self.stamp:
            return False
        self.stamp = stamp
        try:
            with open(self.path) as file:
                entries = json.load(file).get("invitations", [])
        except (OSError, ValueError, AttributeError) as problem:
            log(f"cannot read {self.path} ({problem}): no invitation is valid until it is fixed")
            entries = []
        self.valid = {
            entry["hash"]: entry["id"]
            for entry in entries
            if isinstance(entry, dict) and not entry.get("revoked") and "hash" in entry
        }
        return True

    def check(self, token: str) -> str | None:
        """The invitation's id if `token` is valid."""
        return self.valid.get(token_hash(token)) if token else None


class Gate:
    def __init__(self, base_url: str, upstream: str, secret: str, until: float, invitations):
        self.base_url = base_url
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.secret = secret
        self.until = until
        self.invitations = invitations
        # Open connections by invitation id: closed when the invitation goes.
        self.open: dict[str, set[asyncio.StreamWriter]] = {}

    def ended(self) -> bool:
        return time.time() >= self.until

    async def watch(self) -> None:
        """Apply revocations and the end of the session to what is already open."""
        while True:
            await asyncio.sleep(0.5)
            changed = self.invitations.reload()
            for invitation, writers in list(self.open.items()):
                if self.ended() or (changed and invitation not in self.invitations.valid.values()):
                    reason = "the session ended" if self.ended() else "revoked"
                    log(f"invitation {invitation}: closing {len(writers)} connection(s), {reason}")
                    for writer in list(writers):
                        writer.close()
                    self.open.pop(invitation, None)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        try:
            await self.route(head, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def route(self, head: bytes, reader, writer) -> None:
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = [*lines[0].split(" "), "", ""][:3]
        headers = [line.split(":", 1) for line in lines[1:] if ":" in line]
        headers = [(name.strip(), value.strip()) for name, value in headers]
        url = urllib.parse.urlsplit(target)
        if not url.path.startswith(self.base_url):
            await self.page(writer, 404, "Not found", "There is no Pluto session here.")
            return
        if self.ended():
            await self.page(writer, 410, "This session has ended", "Thank you for joining.")
            return
        query = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
        offered = dict(query).get("invite")
        if offered is not None:
            await self.accept(writer, offered, url.path, query)
            return
        cookies = _cookies(headers)
        invitation = self.invitations.check(cookies.get(COOKIE, ""))
        if invitation is None:
            await self.page(
                writer,
                403,
                "You need an invitation",
                "Open the invitation link you were given. If it worked before, it has "
                "been withdrawn, or the session has ended.",
            )
            return
        await self.forward(method, target, headers, cookies, invitation, reader, writer)

    async def accept(self, writer, token: str, path: str, query: list) -> None:
        invitation = self.invitations.check(token)
        if invitation is None:
            log("refused an invitation link that is not valid")
            await self.page(
                writer,
                403,
                "This invitation is not valid",
                "It may have been withdrawn. Ask the session's host for a new one.",
            )
            return
        log(f"invitation {invitation} joined")
        rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "invite"])
        location = path + (f"?{rest}" if rest else "")
        max_age = max(int(self.until - time.time()), 0)
        cookie = (
            f"{COOKIE}={token}; Path={self.base_url}; Max-Age={max_age}; Secure; HttpOnly; "
            "SameSite=Lax"
        )
        await self.respond(
            writer, 303, b"", "text/plain", [("Location", location), ("Set-Cookie", cookie)]
        )

    async def forward(self, method, target, headers, cookies, invitation, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            await self.page(
                writer, 502, "Pluto is not running", "The session's Pluto is starting or stopped."
            )
            return
        kept = {k: v for k, v in cookies.items() if k not in (COOKIE, "secret")}
        kept["secret"] = self.secret
        upgrade = any(n.lower() == "upgrade" for n, _ in headers)
        out = [f"{method} {target} HTTP/1.1"]
        out += [f"{n}: {v}" for n, v in headers if n.lower() not in ("cookie", "connection")]
        out.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in kept.items()))
        out.append("Connection: " + ("Upgrade" if upgrade else "close"))
        up_writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
        self.open.setdefault(invitation, set()).update({writer, up_writer})
        try:
            response = await up_reader.readuntil(b"\r\n\r\n")
            writer.write(_without_secret_cookie(response))
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            for either in (writer, up_writer):
                self.open.get(invitation, set()).discard(either)
            up_writer.close()

    async def page(self, writer, status: int, title: str, text: str) -> None:
        body = PAGE.format(title=title, text=text).encode()
        await self.respond(writer, status, body, "text/html; charset=utf-8", [])

    async def respond(self, writer, status: int, body: bytes, kind: str, extra: list) -> None:
        reasons = {303: "See Other", 403: "Forbidden", 404: "Not Found", 410: "Gone"}
        reasons[502] = "Bad Gateway"
        lines = [f"HTTP/1.1 {status} {reasons[status]}", f"Content-Type: {kind}"]
        lines += [f"Content-Length: {len(body)}", "Cache-Control: no-store", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in extra]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()


def _cookies(headers: list[tuple[str, str]]) -> dict[str, str]:
    found = {}
    for name, value in headers:
        if name.lower() == "cookie":
            for part in value.split(";"):
                key, sep, content = part.strip().partition("=")
                if sep:
                    found[key] = content
    return found


def _without_secret_cookie(head: bytes) -> bytes:
    """Pluto sets `secret=…` on authenticated responses: that never reaches a guest."""
    lines = head.split(b"\r\n")
    kept = [
        line
        for line in lines
        if not (line.lower().startswith(b"set-cookie:") and b"secret=" in line.lower())
    ]
    return b"\r\n".join(kept)


async def _pipe(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            target.write(chunk)
            await target.drain()
    finally:
        target.close()


async def serve() -> None:
    if os.environ.get("LISTEN_FDS") != "1":
        sys.exit("pluto-gate: expects one socket from systemd (LISTEN_FDS=1)")
    listener = socket.socket(fileno=LISTEN_FDS_START)
    with open(os.environ["GATE_SECRET_FILE"]) as file:
        secret = file.read().strip()
    invitations = Invitations(os.environ["GATE_INVITATIONS"])
    invitations.reload()
    gate = Gate(
        os.environ["GATE_BASE_URL"],
        os.environ["GATE_UPSTREAM"],
        secret,
        end_of_session(os.environ["GATE_UNTIL"]),
        invitations,
    )
    server = await asyncio.start_unix_server(gate.handle, sock=listener, limit=MAX_HEAD)
    log(f"gate of {gate.base_url} open until {os.environ['GATE_UNTIL']}")
    asyncio.get_running_loop().create_task(gate.watch())
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve())
