"""Stand-in for `julia launcher.jl` running Pluto (docs/pluto-facts.md, files/launcher.jl).

Started by the container's service manager in place of ExecStart's Julia, with
the same arguments, user, environment and sandbox. It does what launcher.jl
does and prints the same "pluto-launcher: " lines: reads the environment the
module sets (a missing variable is fatal, so module and launcher cannot drift
apart unnoticed), refuses a secret that is not >= 16 characters of [A-Za-z0-9],
installs "Pluto" into the depot in pkg mode (a marker file), and swaps in a new
secret when the file changes. As Pluto it prints the startup output of the
chosen version (default the v0.20.14+ layout), fails on a busy port with
Pluto's message, and answers HTTP and WebSocket requests with Pluto's
authentication: public routes, `/ping` -> `OK!`, 403 "Not yet
authenticated" HTML, `secret` query parameter or cookie, the Set-Cookie header,
403 `Forbidden` on an unauthenticated WebSocket upgrade, and an echo on an
authenticated one. `GET /new` saves an empty notebook into
JULIA_PLUTO_NEW_NOTEBOOKS_DIR.

Simpler than the real thing: no notebooks are run, the editor and index pages
are placeholders, the WebSocket echoes frames instead of speaking MsgPack, and
`/sim/blob?bytes=N` (sim only) serves N bytes for throughput benchmarks.
Fault switches (/run/sim-host/faults.json, or $SIM_FAULTS_FILE when the
stand-in runs on its own in tests): pluto_layout ("1.0", "0.20.13",
"0.19.2", "0.17"), install_seconds, slow_start (seconds before binding),
crash_on_start, link_never_printed, extra_memory_mb.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import signal
import sys
import threading
import time
import urllib.parse

SECRET_PATTERN = re.compile(r"[A-Za-z0-9]{16,}")
# RFC 6455 section 1.3 (https://www.rfc-editor.org/rfc/rfc6455#section-1.3); browsers check it.
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PUBLIC_EXTENSIONS = (
    ".ico", ".js", ".css", ".png", ".gif", ".svg", ".woff2", ".woff", ".ttf", ".eot", ".otf",
    ".json", ".map",
)  # fmt: skip
NOT_AUTHENTICATED = (
    "<!DOCTYPE html><html><head><title>Not yet authenticated</title></head><body>"
    "<h2>Not yet authenticated</h2><p><b>Open the link that was printed in the terminal where "
    "you launched Pluto.</b> It includes a <em>secret</em>, which is needed to access this "
    "server.<br><br>If you are running the server yourself and want to change this "
    "configuration, have a look at the keyword arguments to <em>Pluto.run</em>. <br><br>Please "
    "<a href='https://github.com/fonsp/Pluto.jl/issues'>report this error</a> if you did not "
    "expect it!</p></body></html>"
)


def say(message: str) -> None:
    print(f"pluto-launcher: {message}", file=sys.stderr, flush=True)


def info(lines: list[str]) -> None:
    """Julia's ConsoleLogger layout for an @info message (docs/pluto-facts.md)."""
    if len(lines) == 1:
        print(f"[ Info: {lines[0]}", file=sys.stderr, flush=True)
        return
    out = [f"┌ Info: {lines[0]}"] + [f"│ {line}" for line in lines[1:-1]] + [f"└ {lines[-1]}"]
    print("\n".join(out), file=sys.stderr, flush=True)


def fail(message: str) -> None:
    say(message)
    sys.exit(1)


def setting(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        fail(f"{name} is not set (pluto.service sets it in files/default.nix)")
    return value


def read_secret(path: str) -> tuple[str | None, str]:
    """launcher.jl's read_secret: the whole file is one line of the pattern."""
    try:
        with open(path, newline="") as file:  # bytes as Julia reads them, \r kept
            text = file.read()
    except OSError as problem:
        return None, f"cannot read {path}: {problem.strerror}"
    secret = text[:-1] if text.endswith("\n") else text
    if not SECRET_PATTERN.fullmatch(secret):
        return None, f"{path} does not hold one line of at least 16 characters A-Z, a-z, 0-9"
    return secret, ""


def fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def faults() -> dict:
    try:
        with open(os.environ.get("SIM_FAULTS_FILE", "/run/sim-host/faults.json")) as file:
            return json.load(file)
    except (OSError, ValueError):
        return {}


class Pluto:
    def __init__(self, secret: str, version: str, julia: str, base_url: str):
        self.secret = secret
        self.version = version
        self.julia = julia
        self.host = setting("PLUTO_HOST")
        self.port = int(setting("PLUTO_PORT"))
        self.new_notebooks = os.environ.get("JULIA_PLUTO_NEW_NOTEBOOKS_DIR", "")
        self.base_url = base_url
        self.last_unauthenticated_log = 0.0
        # session.connected_clients: open editor WebSockets. As in Pluto, the secret is
        # checked only when one opens (src/webserver/WebServer.jl), never again after.
        self.connected_clients: set[asyncio.StreamWriter] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def address(self) -> str:
        pretty = "localhost" if self.host in ("127.0.0.1", "::1") else self.host
        return f"http://{pretty}:{self.port}{self.base_url}?secret={self.secret}"

    def authenticated(self, query: dict, cookies: dict) -> bool:
        return query.get("secret", [""])[0] == self.secret or cookies.get("secret") == self.secret

    @staticmethod
    def auth_required(path: str) -> bool:
        public = path in ("/ping", "/possible_binder_token_please") or path.endswith(
            PUBLIC_EXTENSIONS
        )
        return not public

    def log_unauthenticated(self, host: str) -> None:
        now = time.monotonic()
        if now - self.last_unauthenticated_log < 5:
            return
        self.last_unauthenticated_log = now
        url = f"http://{host}/?" + urllib.parse.urlencode({"secret": self.secret})
        info(["No longer authenticated? Visit this URL to continue:", f"  url = {url}"])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, target, _ = request_line.decode("latin-1").split(" ", 2)
                headers = {}
                while True:
                    line = (await reader.readline()).decode("latin-1")
                    if line in ("\r\n", "\n", ""):
                        break
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)
                keep_open = await self.respond(method, target, headers, reader, writer)
                if not keep_open or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()

    async def respond(self, method, target, headers, reader, writer) -> bool:
        url = urllib.parse.urlsplit(target)
        raw_path = url.path
        query = urllib.parse.parse_qs(url.query)
        cookies = dict(
            part.strip().split("=", 1)
            for part in headers.get("cookie", "").split(";")
            if "=" in part
        )
        authenticated = self.authenticated(query, cookies)
        if headers.get("upgrade", "").lower() == "websocket":
            if not authenticated:
                await self.send(writer, 403, b"Forbidden", "text/plain")
                return False
            await self.websocket(headers, reader, writer)
            return False
        # The check sees the raw path, before base_url is stripped (docs/pluto-facts.md).
        required = self.auth_required(raw_path)
        if not raw_path.startswith(self.base_url):
            await self.send(writer, 404, b"Not found!", "text/plain")
            return True
        path = "/" + raw_path[len(self.base_url) :]
        if required and not authenticated:
            self.log_unauthenticated(headers.get("host", "localhost"))
            await self.send(writer, 403, NOT_AUTHENTICATED.encode(), "text/html; charset=utf-8")
            return True
        extra = {}
        if required or path in ("", "/"):
            extra["Set-Cookie"] = f"secret={self.secret}; SameSite=Strict; HttpOnly"
        if not required:
            extra["Access-Control-Allow-Origin"] = "*"
        if path in ("/ping", "/auth-check"):
            await self.send(writer, 200, b"OK!", "text/plain", extra)
        elif path in ("", "/"):
            body = b"<!DOCTYPE html><html><head><title>Pluto.jl</title></head><body></body></html>"
            await self.send(writer, 200, body, "text/html; charset=utf-8", extra)
        elif path == "/possible_binder_token_please":
            await self.send(writer, 200, b"", "text/plain", extra)  # no binder token here
        elif path == "/new":
            notebook = self.new_notebook()
            extra["Location"] = f"{self.base_url}edit?id={os.path.basename(notebook)}"
            await self.send(writer, 303, b"", "text/plain", extra)
        elif path == "/sim/blob":
            await self.blob(writer, int(query.get("bytes", ["0"])[0]), extra)
        elif path.endswith(PUBLIC_EXTENSIONS) or path in ("/edit", "/editor.html"):
            await self.send(writer, 200, b"/* placeholder */", "text/plain", extra)
        else:
            await self.send(writer, 404, b"Not found!", "text/plain", extra)
        return True

    def new_notebook(self) -> str:
        directory = self.new_notebooks
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"Untitled-{secrets.token_hex(4)}.jl")
        with open(path, "w") as file:
            file.write(
                "### A Pluto.jl notebook ###\n# v0.20.0\n\nusing Markdown\nusing InteractiveUtils\n"
            )
        return path

    def headers(self, status: int, length: int, content_type: str, extra: dict | None) -> bytes:
        reasons = {
            101: "Switching Protocols",
            200: "OK",
            303: "See Other",
            403: "Forbidden",
            404: "Not Found",
        }
        lines = [
            f"HTTP/1.1 {status} {reasons[status]}",
            f"Content-Type: {content_type}",
            f"Content-Length: {length}",
            "Referrer-Policy: same-origin",
            f"Server: Pluto.jl/{self.version} Julia/{self.julia}",
        ]
        lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def send(self, writer, status, body: bytes, content_type: str, extra: dict | None = None):
        writer.write(self.headers(status, len(body), content_type, extra) + body)
        await writer.drain()

    async def blob(self, writer, size: int, extra: dict) -> None:
        writer.write(self.headers(200, size, "application/octet-stream", extra))
        chunk = b"\0" * (1 << 20)
        remaining = size
        while remaining:
            part = chunk[: min(remaining, len(chunk))]
            writer.write(part)
            remaining -= len(part)
            await writer.drain()

    async def websocket(self, headers, reader, writer) -> None:
        accept = base64.b64encode(
            hashlib.sha1((headers.get("sec-websocket-key", "") + WEBSOCKET_GUID).encode()).digest()
        ).decode()
        writer.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        self.connected_clients.add(writer)
        try:
            await self.echo(reader, writer)
        finally:
            self.connected_clients.discard(writer)

    async def echo(self, reader, writer) -> None:
        while True:
            head = await reader.readexactly(2)
            opcode, masked, length = head[0] & 0x0F, head[1] & 0x80, head[1] & 0x7F
            if length == 126:
                length = int.from_bytes(await reader.readexactly(2), "big")
            elif length == 127:
                length = int.from_bytes(await reader.readexactly(8), "big")
            mask = await reader.readexactly(4) if masked else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(length)))
            if opcode == 0x8:
                writer.write(bytes([0x88, 0]))
                await writer.drain()
                return
            reply_opcode = 0xA if opcode == 0x9 else opcode
            writer.write(_frame(reply_opcode, payload))
            await writer.drain()

    def watch_secret(self, path: str) -> None:
        """launcher.jl's rotation loop: poll, swap, log the new fingerprint."""
        last_problem = ""
        while True:
            time.sleep(1)
            new_secret, problem = read_secret(path)
            if new_secret is None:
                if problem != last_problem:
                    say(f"keeping the current secret: {problem}")
                last_problem = problem
            elif new_secret != self.secret:
                self.secret = new_secret
                last_problem = ""
                if self.loop is not None:
                    closing = asyncio.run_coroutine_threadsafe(self.close_clients(), self.loop)
                    closing.result(timeout=10)
                say(f"Secret rotated (fingerprint {fingerprint(new_secret)})")

    async def close_clients(self) -> None:
        """What the launcher does on rotation, like Pluto's shutdown: close every client."""
        for writer in list(self.connected_clients):
            with contextlib.suppress(OSError):
                writer.write(_frame(0x8, (1000).to_bytes(2, "big")))
                await writer.drain()
            writer.close()
        self.connected_clients.clear()


def _frame(opcode: int, payload: bytes) -> bytes:
    length = len(payload)
    if length < 126:
        head = bytes([0x80 | opcode, length])
    elif length < 1 << 16:
        head = bytes([0x80 | opcode, 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + length.to_bytes(8, "big")
    return head + payload


def print_startup(layout: str, address: str) -> None:
    """The "Go to" output of each Pluto version range (docs/pluto-facts.md)."""
    go = f"Go to {address} in your browser to start writing ~ have fun!"
    if layout == "1.0":
        info(["", go, ""])
        info(["", "Press Ctrl+C in this terminal to stop Pluto", ""])
    elif layout == "0.20.13":
        info(["", go])
        info(["", "Press Ctrl+C in this terminal to stop Pluto", ""])
    else:
        print(f"\n{go}\n\nPress Ctrl+C in this terminal to stop Pluto\n", flush=True)


def install(version: str, julia_version: str) -> None:
    """pkg mode: the pinned version in its own environment of the depot, per Julia minor."""
    depot = setting("JULIA_DEPOT_PATH").split(":")[0]
    minor = ".".join(julia_version.split(".")[:2])
    environment = os.path.join(depot, "environments", f"pluto-{version}-julia-{minor}")
    manifest = os.path.join(environment, "Manifest.toml")
    if os.path.exists(manifest):
        return
    say(f"Installing Pluto {version} (first start) …")
    time.sleep(float(faults().get("install_seconds", 1)))
    try:
        os.makedirs(environment, exist_ok=True)
        with open(manifest, "w") as file:
            file.write(f'[[deps.Pluto]]\nversion = "{version}"\n')
    except OSError as problem:
        print(f"ERROR: LoadError: SystemError: mkdir: {problem.strerror}", file=sys.stderr)
        sys.exit(1)
    say(f"Pluto {version} installed")


def main(argv: list[str]) -> None:
    # Julia turns SIGTERM into exit status 143 (128 + 15), which systemd sees.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    julia_path, launcher = argv[0], argv[-1]
    if not os.path.isfile(launcher):
        print(f"ERROR: could not open file {launcher}", file=sys.stderr)
        sys.exit(1)
    julia = re.search(r"-julia(?:-bin)?-([0-9.]+)", julia_path)
    julia_version = julia.group(1) if julia else "1.10.11"
    fault = faults()

    secret_file = setting("PLUTO_SECRET_FILE")
    setting("PLUTO_NOTEBOOK_DIR")
    secret, problem = read_secret(secret_file)
    if secret is None:
        fail(problem)
    version = setting("PLUTO_VERSION")
    if setting("PLUTO_INSTALL_MODE") == "pkg":
        install(version, julia_version)
    else:
        version = "1.0.1"  # whatever nixpkgs' registry snapshot resolves
    say(f"Starting Pluto {version} on Julia {julia_version}")
    say(f"Secret loaded (fingerprint {fingerprint(secret)})")

    layout = fault.get("pluto_layout", "1.0")
    if layout != "0.17":
        info(["Loading..."])
    if fault.get("crash_on_start"):
        print("ERROR: LoadError: simulated crash on start (fault crash_on_start)", file=sys.stderr)
        sys.exit(1)
    if fault.get("extra_memory_mb"):
        hog = bytearray(int(fault["extra_memory_mb"]) << 20)
        for i in range(0, len(hog), 4096):
            hog[i] = 1
    time.sleep(float(fault.get("slow_start", 0)))

    # ServerOptions.base_url (v0.19.11+) only where the launcher passes it: a session's
    # launcher (files/module.nix), which then needs PLUTO_BASE_URL like every setting.
    with open(launcher) as file:
        passes_base_url = 'base_url = setting("PLUTO_BASE_URL")' in file.read()
    base_url = setting("PLUTO_BASE_URL") if passes_base_url else "/"
    pluto = Pluto(secret, version, julia_version, base_url)

    async def serve():
        pluto.loop = asyncio.get_running_loop()
        try:
            server = await asyncio.start_server(pluto.handle, pluto.host, pluto.port)
        except OSError:
            print(
                f"ERROR: LoadError: Cannot listen on port {pluto.port}. It may already be in use, "
                "or you may not have sufficient permissions. Use Pluto.run() to automatically "
                "select an available port.",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(1)
        if not fault.get("link_never_printed"):
            print_startup(layout, pluto.address)
        async with server:
            await server.serve_forever()

    threading.Thread(target=pluto.watch_secret, args=(secret_file,), daemon=True).start()
    asyncio.run(serve())


if __name__ == "__main__":
    main(sys.argv[1:])
