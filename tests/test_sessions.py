"""Sessions on the simulated host: real nginx, the real gate, real systemd timers.

Guests come in through nginx on the host's port 443 with an invitation; the
tests look at what nginx answers, what the host's units and files are, and
what a guest inside a session container can reach.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import tarfile
import types

import pytest
from selenium import webdriver

from tests.conftest import ROOT, eventually, fab

PUBLIC = "pluto.example.org"
TLS_DIR = "/var/lib/pluto-tls"
# RFC 6455 section 1.3 (https://www.rfc-editor.org/rfc/rfc6455#section-1.3).
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LINK = re.compile(r"^  ([0-9a-f]{6})  (https://\S+)$", re.M)


def self_signed(tmp_path) -> tuple[str, str]:
    """A certificate for PUBLIC made by the real openssl, as an admin would for a test host."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={PUBLIC}", "-addext", f"subjectAltName=DNS:{PUBLIC}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert.read_text(), key.read_text()


@pytest.fixture
def public(deployed, tmp_path):
    """The deployed host with a certificate for PUBLIC, an admin's own virtual host,
    and the settings that name them (as FABRIC_PLUTO_* variables)."""
    cert, key = self_signed(tmp_path)
    deployed.write(f"{TLS_DIR}/cert.pem", cert)
    deployed.write(f"{TLS_DIR}/key.pem", key, mode="0600")
    configuration = deployed.read("/etc/nixos/configuration.nix")
    deployed.write(
        "/etc/nixos/configuration.nix",
        configuration.replace(
            "services.openssh.enable = true;",
            "services.openssh.enable = true;\n"
            '  services.nginx.virtualHosts."wiki.example.org".locations."/".return = '
            "\"200 'the wiki'\";",
        ),
    )
    deployed.env = {
        "FABRIC_PLUTO_PUBLIC_HOST": PUBLIC,
        "FABRIC_PLUTO_TLS_CERTIFICATE": f"{TLS_DIR}/cert.pem",
        "FABRIC_PLUTO_TLS_CERTIFICATE_KEY": f"{TLS_DIR}/key.pem",
    }
    return deployed


def session(host, verb, *args, **kwargs):
    return fab(host, f"session.{verb}", *args, env=host.env, **kwargs)


def links(output: str) -> dict[str, str]:
    return dict(LINK.findall(output))


def get(
    host, path: str, cookie: str = "", server: str = PUBLIC, port: int = 443
) -> tuple[int, dict, str]:
    """An HTTPS request to the host's nginx, as a guest's browser makes it (real curl)."""
    jar = f"-H {subprocess.list2cmdline(['Cookie: ' + cookie])}" if cookie else ""
    result = host.run(
        f"curl -sk --max-time 10 --resolve {server}:{port}:127.0.0.1 -D /dev/stderr {jar} "
        f"'{'https' if port == 443 else 'http'}://{server}{path}'",
        check=False,
    )
    head = result.stderr.replace("\r", "").split("\n\n")[-2 if "\n\n" in result.stderr else 0]
    status = int(head.split()[1]) if head.startswith("HTTP/") else 0
    headers = {}
    for line in head.splitlines()[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return status, headers, result.stdout


def join(host, url: str) -> str:
    """Open an invitation link: the cookie the gate sets."""
    path = url.split(PUBLIC, 1)[1]
    status, headers, _ = get(host, path)
    assert status == 303, (status, headers)
    cookie = headers["set-cookie"][0].split(";")[0]
    assert cookie.startswith("pluto_invite=")
    return cookie


def test_a_session_opens_behind_nginx_and_lets_in_only_invited_guests(public):
    result = session(public, "open", "jh25", "--hours", "1", "--invites", "2")
    assert result.code == 0, result.stdout + result.stderr
    made = links(result.stdout)
    assert len(made) == 2
    assert all(url.startswith(f"https://{PUBLIC}/jh25/?invite=") for url in made.values())
    secret = public.read("/var/lib/pluto-sessions/jh25/secret/secret").strip()
    assert secret not in result.stdout + result.stderr

    # Without an invitation: the gate's page, never Pluto.
    status, _, body = get(public, "/jh25/")
    assert status == 403 and "You need an invitation" in body
    # With one: a cookie, then Pluto itself, through nginx, the gate and the veth.
    first, second = (join(public, url) for url in made.values())
    status, headers, body = get(public, "/jh25/", cookie=first)
    assert status == 200 and "<title>Pluto.jl</title>" in body
    # Pluto's secret cookie never reaches the guest.
    assert all(secret not in value for values in headers.values() for value in values)
    assert secret not in body

    # Revoking the first invitation locks out its holder only.
    first_id = next(iter(made))
    revoked = session(public, "revoke", "jh25", first_id)
    assert revoked.code == 0, revoked.stderr
    eventually(lambda: get(public, "/jh25/", cookie=first)[0] == 403, what="revocation")
    assert get(public, "/jh25/", cookie=second)[0] == 200

    # The admin's own virtual host is served as before.
    status, _, body = get(public, "/", server="wiki.example.org", port=80)
    assert (status, body) == (200, "the wiki")


def test_upgrading_from_the_release_before_sessions_restarts_nothing(deployed):
    """A host that runs the last release without sessions: this version's deploy leaves
    the container and Pluto running as they are (same processes, same link)."""
    previous = ROOT / "tests" / "fixtures" / "release-before-sessions"
    for name in ("default.nix", "module.nix", "launcher.jl"):
        deployed.write(f"/etc/nixos/pluto/{name}", (previous / name).read_text())
    deployed.run("rm /etc/nixos/pluto/gate.py && nixos-rebuild switch")

    def runs() -> tuple[str, str]:
        """Invocation ids (new at every start) of the container and of Pluto in it."""
        container = deployed.run("systemctl show -p InvocationID --value container@pluto")
        pluto = deployed.run("systemctl -M pluto show -p InvocationID --value pluto.service")
        return container.stdout.strip(), pluto.stdout.strip()

    eventually(lambda: all(runs()), what="Pluto of the previous release")
    before = runs(), deployed.read("/var/lib/pluto-secret/secret")
    result = fab(deployed, "deploy", "--no-tunnel")
    assert result.code == 0, result.stdout + result.stderr
    assert deployed.exists("/etc/nixos/pluto/gate.py")  # this version's files are in place
    assert (runs(), deployed.read("/var/lib/pluto-secret/secret")) == before


def test_files_and_units_of_a_session_on_the_host(public):
    result = session(public, "open", "ws1", "--hours", "2")
    assert result.code == 0, result.stdout + result.stderr
    # Notebooks and secret belong to the session's own uid; the secret is not in the store.
    uid = public.stat("/data/pluto-sessions/ws1")[0]
    assert uid not in (2000, 0)
    assert public.stat("/data/pluto-sessions/ws1") == (uid, uid, "0700")
    # The secret: the session's uid (its Pluto) and nginx's group (the gate), nobody else.
    nginx = int(public.run("getent group nginx | cut -d: -f3").stdout)
    assert public.stat("/var/lib/pluto-sessions/ws1/secret/secret") == (uid, nginx, "0440")
    secret = public.read("/var/lib/pluto-sessions/ws1/secret/secret").strip()
    found = public.run(f"grep -rl {secret} /nix/store /etc/nixos", check=False)
    assert found.stdout == ""
    # The invitation list holds hashes, never tokens.
    token = links(result.stdout).popitem()[1].rsplit("=", 1)[1]
    assert token not in public.read("/var/lib/pluto-sessions/ws1/invitations.json")
    # The gate's socket is for nginx's group only; the end is a real timer.
    assert public.stat("/run/pluto-gate/ws1.sock")[2] == "0660"
    timer = public.run("systemctl show -p NextElapseUSecRealtime pluto-session-end-ws1.timer")
    assert timer.stdout.strip() != "NextElapseUSecRealtime="
    # The session's launcher is launcher.jl with base_url added; the main Pluto still runs
    # launcher.jl byte for byte, so upgrading to sessions restarts nothing.
    launcher = (ROOT / "files" / "launcher.jl").read_text()
    session_launcher = public.read(launcher_of(public, "ws1"))
    assert session_launcher == launcher.replace(
        PORT_OPTION, PORT_OPTION + '    base_url = setting("PLUTO_BASE_URL"),\n'
    )
    assert session_launcher != launcher
    assert public.read(launcher_of(public, "pluto")) == launcher
    # Undeploying would end the session without a backup: refused, nothing changed.
    refused = fab(public, "undeploy", env=public.env)
    assert refused.code == 1 and "use the module: ws1; close each first" in refused.stderr
    assert public.exists("/etc/nixos/pluto/sessions/ws1.json")
    assert public.run("systemctl is-active container@ws1.service", check=False).ok
    # Another public host would break the open session's links: refused, nothing changed.
    elsewhere = {**public.env, "FABRIC_PLUTO_PUBLIC_HOST": "other.example.org"}
    moved = fab(public, "session.open", "ws9", "--hours", "1", env=elsewhere)
    assert moved.code == 1, moved.stdout + moved.stderr
    assert f"'other.example.org' is not '{PUBLIC}', which the open sessions (ws1)" in moved.stderr
    assert not public.exists("/etc/nixos/pluto/sessions/ws9.json")
    listed = session(public, "list")
    assert listed.code == 0
    line = re.compile(
        r"^ws1: active, 1h5\d left, invitations 1 \(joined 0, revoked 0\), .*, "
        rf"https://{re.escape(PUBLIC)}/ws1/$",
        re.M,
    )
    assert line.search(listed.stdout), listed.stdout


def test_dry_runs_change_nothing_and_close_keeps_the_notebooks(public, tmp_path):
    sessions_json = "/etc/nixos/pluto/sessions/ws2.json"
    planned = session(public, "open", "ws2", "--hours", "1", "--dry-run")
    assert planned.code == 3, planned.stdout + planned.stderr
    assert "Would: create /data/pluto-sessions/ws2 (owner 21" in planned.stdout
    assert "Would: run nixos-rebuild switch: container ws2" in planned.stdout
    assert "invite=" not in planned.stdout  # no link exists until the session does
    assert not public.exists(sessions_json) and not public.exists("/data/pluto-sessions/ws2")
    nix = {**public.env, "FABRIC_PLUTO_INSTALL_MODE": "nix"}  # an ephemeral container
    ephemeral = fab(public, "session.open", "ws2", "--hours", "1", "--dry-run", env=nix)
    assert ephemeral.code == 3 and "/var/lib/pluto-state/ws2 (the depot)" in ephemeral.stdout
    assert not public.exists("/var/lib/pluto-state/ws2")

    opened = session(public, "open", "ws2", "--hours", "1", "--invites", "2")
    assert opened.code == 0, opened.stdout + opened.stderr
    (first, link), _ = links(opened.stdout).items()
    cookie = join(public, link)
    status, headers, _ = get(public, "/ws2/new", cookie=cookie)  # a guest's new notebook
    assert status == 303, headers
    notebook = headers["location"][0].rsplit("id=", 1)[1]
    invitations = public.read("/var/lib/pluto-sessions/ws2/invitations.json")
    assert session(public, "revoke", "ws2", first, "--dry-run").code == 3
    assert public.read("/var/lib/pluto-sessions/ws2/invitations.json") == invitations
    assert get(public, "/ws2/", cookie=cookie)[0] == 200
    assert session(public, "close", "ws2", "--dry-run").code == 3
    assert public.run("systemctl is-active container@ws2.service", check=False).ok

    backup = tmp_path / "ws2.tar.gz"
    closed = session(public, "close", "ws2", "--output", str(backup))
    assert closed.code == 0, closed.stdout + closed.stderr
    with tarfile.open(backup) as archive:
        assert f"./{notebook}" in archive.getnames()
    assert not public.run("systemctl is-active container@ws2.service", check=False).ok
    assert not public.exists("/run/pluto-gate/ws2.sock") and not public.exists(sessions_json)
    # The last session is gone, and with it the public virtual host: nothing answers on 443.
    assert get(public, "/ws2/", cookie=cookie)[0] == 0
    assert public.exists(f"/data/pluto-sessions/ws2/{notebook}")  # kept on the host

    # The same name again must not hand the old guests' notebooks to new ones.
    again = session(public, "open", "ws2", "--hours", "1")
    assert again.code == 1 and again.stderr.count("\n") == 1, again.stderr
    assert "/data/pluto-sessions/ws2" in again.stderr and "earlier session" in again.stderr
    assert not public.exists(sessions_json)


def test_a_session_that_cannot_start_is_refused_or_taken_out_again(public):
    # A certificate that is not on the host would stop nginx, the admin's sites too.
    elsewhere = {**public.env, "FABRIC_PLUTO_TLS_CERTIFICATE": f"{TLS_DIR}/other.pem"}
    refused = fab(public, "session.open", "ws3", "--hours", "1", env=elsewhere)
    assert refused.code == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"pluto.tls_certificate: {TLS_DIR}/other.pem is not a file on" in refused.stderr
    assert not public.exists("/data/pluto-sessions/ws3")

    # A switch that fails: the session is taken out again, the system is the one before.
    generation = public.run("readlink /nix/var/nix/profiles/system").stdout
    public.set_faults(switch_fails=True)
    failed = session(public, "open", "ws3", "--hours", "1")
    public.set_faults(switch_fails=False)
    assert failed.code == 1, failed.stdout + failed.stderr
    assert "opening session ws3 failed: error: builder" in failed.stderr
    assert failed.stderr.rstrip().endswith("removed it again, the system was not switched")
    assert not public.exists("/etc/nixos/pluto/sessions/ws3.json")
    assert public.run("readlink /nix/var/nix/profiles/system").stdout == generation
    # Nothing is left in the way of trying again.
    again = session(public, "open", "ws3", "--hours", "1")
    assert again.code == 0, again.stdout + again.stderr


PORT_OPTION = '    port = parse(Int, setting("PLUTO_PORT")),\n'


def launcher_of(host, container: str) -> str:
    """The launcher file pluto.service of a container runs: the last word of its command
    (`{ path=… ; argv[]=julia … LAUNCHER ; … }` in systemctl show)."""
    shown = host.run(f"systemctl -M {container} show -p ExecStart --value pluto.service").stdout
    return shown.split("argv[]=", 1)[1].split(" ; ", 1)[0].split()[-1]


def in_container(host, name: str, command: str):
    """A command in the session container's network namespace (as notebook code would run)."""
    leader = host.run(f"machinectl show {name} -p Leader --value").stdout.strip()
    return host.run(f"nsenter -t {leader} -n {command}", check=False)


@pytest.fixture
def outside(public):
    """The networks on the host's other side, as a real host has them: "the internet"
    (TEST-NET-1, 192.0.2.0/24, a stranger's machine at .2 that also routes to the
    sessions' addresses through the host) and the host's LAN (192.168.77.0/24, a
    printer at .2). Each is a network namespace on a veth, with an HTTP server on 8080.
    """
    made, servers = {}, []
    sh = functools.partial(subprocess.run, check=True, capture_output=True)
    try:
        for name, network in (("net", "192.0.2"), ("lan", "192.168.77")):
            namespace = made[name] = f"pluto-{name}-{os.getpid()}"
            sh(["ip", "netns", "add", namespace])
            sh(["ip", "-n", namespace, "link", "add", "eth0", "type", "veth",
                "peer", "name", f"up-{name}", "netns", str(public.pid)])  # fmt: skip
            public.run(f"ip addr add {network}.1/24 dev up-{name} && ip link set up-{name} up")
            for command in (
                f"ip addr add {network}.2/24 dev eth0",
                "ip link set eth0 up",
                "ip link set lo up",
                f"ip route add 10.234.0.0/16 via {network}.1",
            ):
                sh(["ip", "netns", "exec", namespace, *command.split()])
            servers.append(subprocess.Popen(
                ["ip", "netns", "exec", namespace, "python3", "-m", "http.server", "8080"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
        yield made
    finally:
        for server in servers:
            server.terminate()
            server.wait()
        for namespace in made.values():
            subprocess.run(["ip", "netns", "del", namespace], check=False)


def reaches(run, url: str) -> bool:
    """Whether an HTTP request to `url` gets any answer (run: a command runner)."""
    return run(f"curl -sk -o /dev/null --max-time 3 {url}").ok


def test_what_a_guest_reaches_from_a_session_and_a_stranger_from_outside(public, outside):
    opened = session(public, "open", "lab", "--hours", "1")
    assert opened.code == 0, opened.stdout + opened.stderr
    nix = {**public.env, "FABRIC_PLUTO_INSTALL_MODE": "nix"}
    offline = fab(public, "session.open", "quiet", "--hours", "1", "--offline", env=nix)
    assert offline.code == 0, offline.stdout + offline.stderr
    lab, quiet = (
        json.loads(public.read(f"/etc/nixos/pluto/sessions/{name}.json"))
        for name in ("lab", "quiet")
    )
    quiet_pluto = f"http://{quiet['localAddress']}:{quiet['port']}/"
    # The online session's NAT turns on the host's forwarding, as nixpkgs' nat.nix does.
    assert public.read("/proc/sys/net/ipv4/conf/all/forwarding").strip() == "1"

    def from_lab(command):
        return in_container(public, "lab", command)

    eventually(lambda: reaches(from_lab, "http://192.0.2.2:8080/"), what="the internet from lab")
    assert not reaches(from_lab, "http://192.168.77.2:8080/")  # the host's LAN
    assert not reaches(from_lab, quiet_pluto)  # another session
    for port in (22, 9999):  # the host's loopback services, the main Pluto
        assert not reaches(from_lab, f"http://{lab['hostAddress']}:{port}/")
    assert not reaches(lambda c: in_container(public, "quiet", c), "http://192.0.2.2:8080/")

    # A stranger: nginx answers (with the invitation page), nothing else does, not even
    # with a route to the sessions' addresses through the host.
    def stranger(command):
        done = subprocess.run(
            ["ip", "netns", "exec", outside["net"], "sh", "-c", command], capture_output=True
        )
        return types.SimpleNamespace(ok=done.returncode == 0, stdout=done.stdout.decode())

    page = stranger(f"curl -sk --max-time 5 --resolve {PUBLIC}:443:192.0.2.1 https://{PUBLIC}/lab/")
    assert page.ok and "You need an invitation" in page.stdout
    assert not reaches(stranger, "http://192.0.2.1:9999/")
    assert not reaches(stranger, f"http://{lab['localAddress']}:{lab['port']}/")
    assert not reaches(stranger, quiet_pluto)


def test_a_session_ends_by_itself_at_its_time(public, browser):
    driver, origin = browser
    result = session(public, "open", "short", "--hours", "0.02", "--invites", "1")
    assert result.code == 0, result.stdout + result.stderr
    driver.get(links(result.stdout).popitem()[1].replace(PUBLIC, origin))
    assert driver.title == "Pluto.jl"
    assert driver.execute_async_script(OPEN_CHANNEL) == "open"

    def over() -> bool:
        state = public.run("systemctl is-active container@short.service", check=False)
        return state.stdout.strip() in ("inactive", "failed")

    eventually(over, timeout=150, what="the end-of-session timer stopping the container")
    ran = public.journal(unit="pluto-session-end-short.service")
    assert any("Finished pluto-session-end-short.service" in line for line in ran), ran[-5:]
    # The guest's open notebook connection is gone; a reload gets the gate's last word.
    assert driver.execute_script("return window.channel.readyState") == 3
    driver.refresh()
    assert driver.title == "This session has ended"
    # Ended is not closed: the name stays taken until `close` has taken the backup.
    again = session(public, "open", "short", "--hours", "1")
    assert again.code == 1 and "ended at" in again.stderr and "session.close short" in again.stderr


@pytest.fixture
def browser(public, free_port):
    """Debian's chromium, headless, driven by Selenium through chromium-driver; it reaches
    the host's nginx through a TCP relay into the host's network namespace only."""
    relay = subprocess.Popen(
        ["socat", f"TCP-LISTEN:{free_port},bind=127.0.0.1,fork,reuseaddr",
         f"EXEC:nsenter -t {public.pid} -n socat - TCP\\:127.0.0.1\\:443"],
    )  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--ignore-certificate-errors", f"--host-resolver-rules=MAP {PUBLIC} 127.0.0.1",
    ):  # fmt: skip
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver, f"{PUBLIC}:{free_port}"
    finally:
        driver.quit()
        relay.terminate()
        relay.wait()


# The page keeps its notebook WebSocket in `window.channel` and its events in `window.heard`,
# as Pluto's editor keeps one open to `<base_url>channels`.
OPEN_CHANNEL = """
const done = arguments[arguments.length - 1];
window.heard = [];
window.channel = new WebSocket("wss://" + location.host + location.pathname + "channels");
window.channel.onmessage = (event) => window.heard.push("message " + event.data);
window.channel.onclose = (event) => window.heard.push("closed");
window.channel.onopen = () => { window.channel.send("hello"); done("open"); };
window.channel.onerror = () => done("error");
"""


def guest_channel(origin: str, path: str, cookie: str) -> ssl.SSLSocket:
    """Another guest's WebSocket to the session, through the same relay, TLS and nginx."""
    host, port = origin.split(":")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
    channel = context.wrap_socket(raw, server_hostname=host)
    key = base64.b64encode(os.urandom(16)).decode()
    channel.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {origin}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Cookie: {cookie}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += channel.recv(1)
    accept = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest())
    assert head.startswith(b"HTTP/1.1 101") and accept in head, head
    return channel


def echoes(channel: ssl.SSLSocket, text: bytes) -> bool:
    """Send one masked text frame (RFC 6455 section 5.2) and read the echo of it."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    channel.sendall(bytes([0x81, 0x80 | len(text)]) + mask + masked)
    reply = b""
    while len(reply) < 2 + len(text):
        chunk = channel.recv(4096)
        if not chunk:
            return False
        reply += chunk
    return reply[2:] == text


def test_a_guest_joins_in_a_real_browser_and_revoking_closes_their_websocket(public, browser):
    driver, origin = browser
    result = session(public, "open", "jh25", "--hours", "1", "--invites", "2")
    assert result.code == 0, result.stdout + result.stderr
    (mine, my_link), (_, other_link) = links(result.stdout).items()
    driver.get(my_link.replace(PUBLIC, origin))
    assert driver.title == "Pluto.jl"
    assert "invite=" not in driver.current_url  # the token left the address bar
    # The browser's own WebSocket handshake (Chromium checks Sec-WebSocket-Accept) and echo.
    assert driver.execute_async_script(OPEN_CHANNEL) == "open"
    eventually(lambda: "message hello" in driver.execute_script("return window.heard"),
               what="the echo on the browser's WebSocket")  # fmt: skip
    other = guest_channel(origin, "/jh25/channels", join(public, other_link))
    assert echoes(other, b"before")

    assert session(public, "revoke", "jh25", mine).code == 0
    # The revoked guest's open WebSocket is closed by the gate, without a reload.
    eventually(lambda: driver.execute_script("return window.channel.readyState") == 3,
               what="the revoked guest's WebSocket being closed")  # fmt: skip
    assert driver.execute_script("return window.heard")[-1] == "closed"

    def refused() -> bool:
        driver.refresh()
        return driver.title == "You need an invitation"

    eventually(refused, what="the revoked guest's reload being refused")
    # The other guest's WebSocket stayed open and still works.
    assert echoes(other, b"after")
    other.close()
