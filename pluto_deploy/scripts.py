"""Every command the tasks run on the host, built here with every value quoted.

Each function returns a POSIX shell script that `connection.run_as_root` (or
the streaming helper) runs as one remote command. Values come from the
validated settings and still pass through shlex.quote; secrets never appear
in a script: they are generated, moved and read on the host, so they never
reach a command line.
"""

from __future__ import annotations

import posixpath
import shlex

from . import secretfile
from .settings import Settings

q = shlex.quote
STATE_MARK = "@@pluto-deploy state"


def _prelude() -> str:
    return 'set -u\nexport LC_ALL=C\nsay() { printf \'%s=%s\\n\' "$1" "$2"; }\n'


def _pluto_state(name: str) -> str:
    """`ActiveState=… NRestarts=… SubState=…` of pluto.service, in systemd's order, one line."""
    return (
        f"systemctl -M {name} show -p ActiveState -p SubState -p NRestarts pluto.service "
        "2>/dev/null | paste -sd' '"
    )


def facts(s: Settings, file_names: list[str]) -> str:
    """Everything deploy, status and the dry run compare against, in one read-only pass.

    Prints `key=value` lines; files as `file:NAME:BASE64`, the secret file among
    them, straight from the file to stdout, never through an argument.
    """
    module_files = " ".join(q(f) for f in file_names)
    name = q(s.container)
    return (
        _prelude()
        + f"""
file() {{ if [ -f "$2" ]; then printf 'file:%s:' "$1"; base64 -w0 < "$2"; echo; fi; }}
stat_of() {{ if [ -e "$2" ] || [ -L "$2" ]; then say "$1" "$(stat -c '%F|%u|%g|%a' "$2")"; fi; }}
say now "$(date +%s)"
say generation "$(readlink /nix/var/nix/profiles/system 2>/dev/null)"
if [ -e /etc/NIXOS ]; then say nixos yes; else say nixos no; fi
say nixos_version "$(nixos-version 2>/dev/null | head -n 1)"
say hostname "$(hostname)"
if command -v git >/dev/null 2>&1; then say git yes; fi
flake_dir=""
if [ -e /etc/nixos/flake.nix ]; then
  flake_dir=$(dirname "$(readlink -f /etc/nixos/flake.nix)")
  say flake_dir "$flake_dir"
  file flake.nix "$flake_dir/flake.nix"
  if git -C "$flake_dir" rev-parse --show-toplevel >/dev/null 2>&1; then
    say flake_git yes
    for f in {module_files}; do
      if git -C "$flake_dir" ls-files --error-unmatch {q(s.module_dir)}/"$f" >/dev/null 2>&1; then
        say "tracked:$f" yes
      fi
    done
  fi
fi
file configuration.nix "${{flake_dir:-/etc/nixos}}/configuration.nix"
for f in {module_files}; do file "module:$f" {q(s.module_dir)}/"$f"; done
for f in {q(s.module_dir)}/sessions/*.json; do
  if [ -f "$f" ]; then say session "$(basename "$f" .json)"; fi
done
stat_of module_dir {q(s.module_dir)}
stat_of data_dir {q(s.data_dir)}
stat_of state_dir {q(s.state_host_dir)}
stat_of secret_dir {q(s.secret_dir)}
stat_of secret_file {q(s.secret_file)}
file secret {q(s.secret_file)}
say port_listeners "$(ss -Hltn 'sport = :{s.port}' 2>/dev/null | wc -l)"
say uid_owner "$(getent passwd {s.uid} | cut -d: -f1)"
say gid_owner "$(getent group {s.gid} | cut -d: -f1)"
for conf_dir in /etc/nixos-containers /etc/containers; do
  if [ -e "$conf_dir"/{name}.conf ]; then say container_declared "$conf_dir/"{name}.conf; fi
done
say container_state "$(systemctl is-active container@{name}.service 2>/dev/null)"
if [ "$(systemctl is-active container@{name}.service 2>/dev/null)" = active ]; then
  systemctl -M {name} show -p ActiveState -p SubState -p NRestarts pluto.service \
    2>/dev/null | sed 's/^/pluto./'

  cursor=$(journalctl -M {name} -u pluto.service -n 1 -q --show-cursor -o cat 2>/dev/null)
  say cursor "$(printf '%s\\n' "$cursor" | sed -n 's/^-- cursor: //p')"
fi
"""
    )


UNIT_PROPERTIES = (
    "ActiveState,ActiveEnterTimestamp,MemoryCurrent,MemoryPeak,MemoryHigh,MemoryMax,"
    "CPUUsageNSec,CPUQuotaPerSecUSec,TasksCurrent,TasksMax"
)


def status_extras(s: Settings) -> str:
    """What `status` adds to the facts: unit usage, Pluto's version, disk; CPU over 1 s."""
    name, data = q(s.container), q(s.data_dir)
    unit = q(s.container_unit)
    return f"""
systemctl show --timestamp=unix {unit} -p {UNIT_PROPERTIES} 2>/dev/null | sed 's/^/unit./'
if [ "$(systemctl is-active {unit} 2>/dev/null)" = active ]; then
  systemctl -M {name} show --timestamp=unix pluto.service \
    -p ActiveState,SubState,NRestarts,ActiveEnterTimestamp \
    2>/dev/null | sed 's/^/pluto./'
  before=$(systemctl show -p CPUUsageNSec --value {unit})
  sleep 1
  say cpu_window "$before $(systemctl show -p CPUUsageNSec --value {unit})"
  started=$(journalctl -M {name} -u pluto.service -o cat --no-pager 2>/dev/null |
    grep -a 'pluto-launcher: Starting Pluto' | tail -n 1)
  say started "$started"
fi
if [ -d {data} ]; then
  say data_size "$(du -sb {data} | cut -f1)"
  say disk "$(df -B1 --output=avail,size {data} | tail -n 1)"
fi
"""


def install_files(
    s: Settings, staging: str, names: list[str], previous: str, git_dir: str | None
) -> str:
    """Move uploaded files into the module directory: root-owned 0644, atomically.

    The old directory is copied to `previous` first (for rollback), and that copy
    replaces the last one only once it is complete. Files are first written
    beside their final name, then renamed one after another, and the script
    ignores hangups: a client that disappears halfway still leaves complete files
    behind. When a step fails (a full disk), what it left half-done is removed.
    """
    module = q(s.module_dir)
    copy = q(f"{previous}.new")
    leftovers = " ".join([copy, q(staging)] + [f"{module}/.{q(n)}.new" for n in names])
    steps = [
        "set -eu",
        "trap '' HUP INT TERM PIPE",
        f"trap 'rm -rf {leftovers}' EXIT",
        f"rm -rf {copy}",
        f"if [ -d {module} ]; then cp -a {module} {copy}",
        f"else mkdir -p {copy} && touch {copy}/.absent; fi",
        f"rm -rf {q(previous)}",
        f"mv {copy} {q(previous)}",
        f"install -d -m 0755 -o root -g root {module}",
    ]
    for name in names:
        steps.append(
            f"install -m 0644 -o root -g root {q(staging)}/{q(name)} {module}/.{q(name)}.new"
        )
    for name in names:
        steps.append(f"mv -f {module}/.{q(name)}.new {module}/{q(name)}")
    if git_dir is not None:
        paths = " ".join(f"{module}/{q(name)}" for name in names)
        steps.append(f"git -C {q(git_dir)} add -- {paths}")
    steps.append(f"rm -rf {q(staging)}")
    return "\n".join(steps) + "\n"


def ensure_secret(s: Settings) -> str:
    """Create the secret once; keep a usable one; fix owner and mode; print it.

    Generated on the host from /dev/urandom (32 characters of [A-Za-z0-9],
    about 190 bits) and written by the shell's own printf, so the secret never
    appears in any process's arguments. Owner: the service uid, mode 0400, so
    the running server can re-read it after a rotation (files/module.nix).
    """
    return f"set -eu\n{_secret_in_place(s, 0o700)}printf 'secret='; cat {q(s.secret_file)}\n"


def _secret_in_place(s: Settings, dir_mode: int) -> str:
    secret_dir, secret_file = q(s.secret_dir), q(s.secret_file)
    return f"""umask 077
install -d -m {dir_mode:04o} -o {s.uid} -g {s.gid} {secret_dir}
chown {s.uid}:{s.gid} {secret_dir}
chmod {dir_mode:04o} {secret_dir}
{secretfile.SHELL_FUNCTION}
if secret_ok {secret_file}; then
  echo kept
else
  if [ -e {secret_file} ]; then echo replaced; fi
  secret=$(tr -dc 'A-Za-z0-9' < /dev/urandom | head -c 32)
  printf '%s\\n' "$secret" > {secret_file}.new
  mv -f {secret_file}.new {secret_file}
  echo created
fi
chown {s.uid}:{s.gid} {secret_file}
chmod 0400 {secret_file}
"""


def rotate_secret(s: Settings) -> str:
    """Replace the secret by a new one, atomically (the launcher polls the file).

    Prints the journal's cursor from before the change (to wait for Pluto's
    answer without a race), then the new secret.
    """
    secret_file = q(s.secret_file)
    name = q(s.container)
    return f"""set -eu
cursor=$(journalctl -M {name} -u pluto.service -n 1 -q --show-cursor -o cat 2>/dev/null || true)
printf 'cursor=%s\\n' "$(printf '%s\\n' "$cursor" | sed -n 's/^-- cursor: //p')"
printf 'now=%s\\n' "$(date +%s)"
printf 'old='; cat {secret_file}
umask 077
secret=$(tr -dc 'A-Za-z0-9' < /dev/urandom | head -c 32)
printf '%s\\n' "$secret" > {secret_file}.new
chown {s.uid}:{s.gid} {secret_file}.new
chmod 0400 {secret_file}.new
mv -f {secret_file}.new {secret_file}
printf 'secret='; cat {secret_file}
"""


def archive_data(s: Settings) -> str:
    """A gzip tar of the notebook directory on stdout; nothing is staged on the host."""
    return f"exec tar -C {q(s.data_dir)} --numeric-owner -czf - ."


def list_data(s: Settings) -> str:
    """Paths (relative, NUL-separated) of everything in the notebook directory."""
    data = q(s.data_dir)
    return (
        f"test -d {data} || {{ echo 'no such directory' >&2; exit 3; }}\n"
        f"find {data} -mindepth 1 -printf '%P\\0'"
    )


def extract_data(s: Settings, existing: str) -> str:
    """Unpack stdin into the notebook directory as Pluto's uid, so files get its owner.

    existing: "refuse" (fail on a file that exists), "skip" (restore only what is
    missing) or "overwrite". Prints READY on stderr once running as root, so the
    caller starts sending the archive only after sudo has had its password.
    """
    keep = {"refuse": " --keep-old-files", "skip": " --skip-old-files", "overwrite": ""}[existing]
    return (
        "echo READY >&2\n"
        f"exec setpriv --reuid={s.uid} --regid={s.gid} --clear-groups "
        f"tar -C {q(s.data_dir)} -xzpf - --no-same-owner{keep}"
    )


def create_data_dir(s: Settings) -> str:
    """mkdir the notebook directory, owned by Pluto, 0750; an existing one is left alone."""
    data = q(s.data_dir)
    return f"""set -eu
if [ -e {data} ]; then echo exists; exit 0; fi
install -d -m 0750 -o {s.uid} -g {s.gid} {data}
echo created
"""


def create_state_dir(s: Settings) -> str:
    """The host directory an ephemeral container keeps its depot in: Pluto's, 0700."""
    return f"install -d -m 0700 -o {s.uid} -g {s.gid} {q(s.state_host_dir)}\n"


def fix_data_dir_owner(s: Settings, recursive: bool) -> str:
    """chown the notebook directory itself, or (explicitly) everything in it."""
    flag = "-R " if recursive else ""
    return f"chown {flag}{s.uid}:{s.gid} {q(s.data_dir)}\nchmod 0750 {q(s.data_dir)}\n"


GENERATION_MARK = "@@pluto-deploy generation"
ROLLBACK_MARK = "@@pluto-deploy rollback"
PROFILE = "/nix/var/nix/profiles/system"
# nixos-containers.nix: "nixos-" only when the host's system.stateVersion >= 22.05.
CONTAINER_STATE_DIRS = ("/var/lib/nixos-containers", "/var/lib/containers")


def rebuild() -> str:
    """nixos-rebuild switch, then the system profile's generation it left behind."""
    return (
        "nixos-rebuild switch\ncode=$?\n"
        f"printf '%s %s\\n' {q(GENERATION_MARK)} \"$(readlink {PROFILE})\"\nexit $code\n"
    )


def evaluate_configuration() -> str:
    """Evaluate (and plan the build of) the configuration as it is; changes nothing."""
    return "nixos-rebuild dry-build"


def switch_back(before: str, ours: str) -> str:
    """Make `before` (a `system-N-link`) current again and activate it, as `--rollback` does.

    Only when the profile still points at the generation this deploy made: never
    `nixos-rebuild --rollback` blindly, which goes to the highest generation below the
    current one (nix-env --rollback) — after a no-op switch or an earlier rollback that
    is an older, unrelated system.
    """
    number = before.removeprefix("system-").removesuffix("-link")
    mark = q(ROLLBACK_MARK)
    return f"""set -u
now=$(readlink {PROFILE})
if [ "$now" = {q(before)} ]; then printf '%s unchanged\\n' {mark}; exit 0; fi
if [ "$now" != {q(ours)} ]; then printf '%s moved %s\\n' {mark} "$now"; exit 3; fi
nix-env -p {PROFILE} --switch-generation {q(number)} || exit $?
printf '%s switched\\n' {mark}
exec {PROFILE}/bin/switch-to-configuration switch
"""


def unit_state(unit: str) -> str:
    """ActiveState, SubState and NRestarts of a host unit, as key=value lines."""
    return f"systemctl show -p ActiveState -p SubState -p NRestarts {q(unit)}"


def restore_previous(s: Settings, previous: str, git_dir: str | None) -> str:
    """Put the module directory back as it was before this deploy."""
    module, before = q(s.module_dir), q(previous)
    git = ""
    if git_dir is not None:
        git = f"git -C {q(git_dir)} rm -r -q --cached --ignore-unmatch -- {module} || true\n"
        git += f"[ -d {module} ] && git -C {q(git_dir)} add -- {module} || true\n"
    return f"""set -eu
trap '' HUP INT TERM PIPE
if [ -e {before}/.absent ]; then
  rm -rf {module}
else
  rm -rf {module}.restoring
  cp -a {before} {module}.restoring
  rm -rf {module}
  mv {module}.restoring {module}
fi
{git}"""


def replace_file(path: str, staged: str, backup: str) -> str:
    """Replace a configuration file by an uploaded version, keeping a backup.

    The backup appears under its name only once complete; on failure (a full
    disk) nothing half-written is left behind, the staged upload included.
    """
    partial, new = q(f"{backup}.partial"), q(f"{path}.pluto-new")
    staging = q(posixpath.dirname(staged))
    return f"""set -eu
trap 'rm -rf {partial} {new} {staging}' EXIT
cp -a {q(path)} {partial}
mv {partial} {q(backup)}
install -m 0644 -o root -g root {q(staged)} {new}
mv -f {new} {q(path)}
"""


def read_secret(s: Settings) -> str:
    """The secret, from the file straight to stdout (root only)."""
    return f"cat {q(s.secret_file)}"


def logs(s: Settings, lines: int, follow: bool, container_unit: bool) -> str:
    """Pluto's journal inside the container, or the container unit's on the host."""
    source = (
        f"-u {q(s.container_unit)}" if container_unit else f"-M {q(s.container)} -u pluto.service"
    )
    return f"exec journalctl {source} --no-pager -n {int(lines)}" + (" -f" if follow else "")


def retire_module(s: Settings, git_dir: str | None) -> str:
    """Move the module directory aside (to .previous) and out of git."""
    module, previous = q(s.module_dir), q(f"{s.module_dir}.previous")
    git = f"git -C {q(git_dir)} rm -r -q --cached --ignore-unmatch -- {module}\n" if git_dir else ""
    return f"set -eu\n{git}rm -rf {previous}\nif [ -d {module} ]; then mv {module} {previous}; fi\n"


def unretire_module(s: Settings, git_dir: str | None) -> str:
    module, previous = q(s.module_dir), q(f"{s.module_dir}.previous")
    git = f"git -C {q(git_dir)} add -- {module}\n" if git_dir else ""
    return f"set -eu\nif [ -d {previous} ]; then mv {previous} {module}; fi\n{git}"


def container_gone(s: Settings) -> str:
    """Exit 0 only if the container is stopped and no longer declared."""
    name = q(s.container)
    return (
        f"! systemctl is-active --quiet container@{name}.service && "
        f"[ ! -e /etc/nixos-containers/{name}.conf ] && [ ! -e /etc/containers/{name}.conf ]"
    )


def purge(s: Settings) -> str:
    """Delete the container's state, the secret, and last the notebooks (undeploy --purge).

    Declarative containers live in /var/lib/nixos-containers, or /var/lib/containers on
    hosts whose system.stateVersion is older than 22.05 (nixos-containers.nix). NixOS makes
    the root's var/empty immutable; like `nixos-container destroy`, lift that first. Any
    failure stops the script before the notebooks are touched.
    """
    roots = " ".join(q(f"{base}/{s.container}") for base in CONTAINER_STATE_DIRS)
    return f"""set -eu
for root in {roots}; do
  if [ -e "$root/var/empty" ]; then chattr -i "$root/var/empty"; fi
  rm -rf -- "$root"
done
rm -rf -- {q(s.secret_dir)}
rm -rf -- {q(s.data_dir)}
"""


def is_deployed(s: Settings) -> str:
    """Exit 0 when the module is on the host; needs no root (the files are 0644)."""
    return f"test -f {q(s.module_dir)}/settings.json"


def start_container(s: Settings) -> str:
    return f"systemctl start {q(s.container_unit)}"


def restart_pluto(s: Settings) -> str:
    return f"systemctl -M {q(s.container)} restart pluto.service"


def follow_pluto(s: Settings, cursor: str | None, since: int) -> str:
    """Pluto's journal from a point taken before the change, plus state lines.

    journalctl follows in the background; every second the script prints
    `@@pluto-deploy state <container> <ActiveState> <SubState> <NRestarts>`
    when it changes, so the caller can fail fast. It ends with the channel.
    """
    name = q(s.container)
    start = f"--after-cursor={q(cursor)}" if cursor else f"--since=@{int(since)}"
    return f"""journalctl -M {name} -u pluto.service -o cat --no-pager -f {start} &
follower=$!
trap 'kill $follower 2>/dev/null; exit 0' HUP INT TERM EXIT
last=""
while :; do
  container=$(systemctl is-active container@{name}.service 2>/dev/null)
  pluto=$({_pluto_state(name)})
  now="$container ${{pluto:-unknown}}"
  if [ "$now" != "$last" ]; then echo "{STATE_MARK} $now"; last="$now"; fi
  sleep 1
done
"""


# -- sessions (pluto_deploy/sessions.py) ------------------------------------------------


def session_facts(
    s: Settings, module_files: list[str], sessions_state: str, sessions_data: str
) -> str:
    """Read-only: the module's files, each session's values and invitations, what is taken,
    and which session data directories still hold files.

    Files as `key=NAME:BASE64`, read straight from the file; unit state as
    tab-separated key=value pairs in systemd's own order.
    """
    module = q(s.module_dir)
    names = " ".join(q(n) for n in module_files)
    tls_files = " ".join(q(p) for p in (s.tls_certificate, s.tls_certificate_key) if p)
    return (
        _prelude()
        + f"""
say now "$(date +%s)"
say generation "$(readlink {PROFILE} 2>/dev/null)"
for f in {names}; do
  if [ -f {module}/"$f" ]; then printf 'module=%s:' "$f"; base64 -w0 < {module}/"$f"; echo; fi
done
for f in /etc/nixos/configuration.nix /etc/nixos/flake.nix; do
  if [ -f "$f" ]; then printf 'config=%s:' "$f"; base64 -w0 < "$f"; echo; fi
done
for f in {module}/sessions/*.json; do
  [ -f "$f" ] || continue
  name=$(basename "$f" .json)
  printf 'session=%s:' "$name"; base64 -w0 < "$f"; echo
  if [ -f {q(sessions_state)}/"$name"/invitations.json ]; then
    printf 'invitations=%s:' "$name"
    base64 -w0 < {q(sessions_state)}/"$name"/invitations.json; echo
  fi
  props=$(systemctl show -p ActiveState -p MemoryCurrent -p CPUUsageNSec "container@$name.service" \
    2>/dev/null | paste -sd'\t')
  say unit "$name $props"
  say joined "$name $(journalctl -u "pluto-gate-$name.service" -q -o cat 2>/dev/null \
    | grep -c ' joined$')"
done
for f in /etc/nixos-containers/*.conf /etc/containers/*.conf; do
  [ -f "$f" ] && say container "$(basename "$f" .conf)"
done
for f in {tls_files}; do
  [ -f "$f" ] && say tls_file "$f"
done
for d in {q(sessions_data)}/*/; do
  [ -d "$d" ] && [ -n "$(ls -A "$d")" ] && say notebooks "$(basename "$d")"
done
say uid "$(cut -d: -f3 /etc/passwd | tr '\n' ' ')"
"""
    )


def session_prepare(s: Settings, state_dir: str, staging: str, name: str) -> str:
    """A session's directories, its Pluto secret (made here), invitations and module values.

    Notebooks: the session uid's, 0700. Secret: generated on the host like
    ensure_secret, the uid's, 0400, in a 0500 directory bind-mounted read-only.
    invitations.json: root's, 0600 until `session_share` gives nginx's group read access.
    """
    module = q(s.module_dir)
    return f"""set -eu
umask 022
install -d -m 0755 -o root -g root {q(state_dir)}
{_secret_in_place(s, 0o500)}umask 022
install -d -m 0700 -o {s.uid} -g {s.gid} {q(s.data_dir)}
chown {s.uid}:{s.gid} {q(s.data_dir)}
{create_state_dir(s) if s.ephemeral else ""}
install -m 0600 -o root -g root {q(staging)}/invitations.json {q(state_dir)}/invitations.json
install -d -m 0755 -o root -g root {module}/sessions
install -m 0644 -o root -g root {q(staging)}/public.json {module}/public.json
install -m 0644 -o root -g root {q(staging)}/session.json {module}/sessions/{q(name)}.json.new
mv -f {module}/sessions/{q(name)}.json.new {module}/sessions/{q(name)}.json
rm -rf {q(staging)}
"""


def session_share(s: Settings, state_dir: str, socket: str) -> str:
    """Let the gate (in nginx's group, the group of its socket) read the secret and list.

    After the switch, which creates nginx's group on a first session.
    """
    return f"""set -eu
group=$(stat -c %g {q(socket)})
chgrp "$group" {q(s.secret_dir)} {q(s.secret_file)} {q(state_dir)}/invitations.json
chmod 0550 {q(s.secret_dir)}
chmod 0440 {q(s.secret_file)}
chmod 0640 {q(state_dir)}/invitations.json
"""


def session_invitations(state_dir: str, staging: str) -> str:
    """Replace invitations.json atomically: the gate re-reads it and closes what was revoked."""
    target = q(f"{state_dir}/invitations.json")
    return f"""set -eu
group=$(stat -c %g {target})
install -m 0640 -o root -g "$group" {q(staging)}/invitations.json {target}.new
mv -f {target}.new {target}
rm -rf {q(staging)}
"""


def session_forget(s: Settings, name: str) -> str:
    """Take a session out of the configuration; its notebooks and state stay for backup."""
    return f"rm -f {q(s.module_dir)}/sessions/{q(name)}.json\n"


def session_answer(public_host: str, name: str) -> str:
    """What nginx answers for the session's path without an invitation (status and title)."""
    url = q(f"https://{public_host}/{name}/")
    resolve = q(f"{public_host}:443:127.0.0.1")
    return (
        f"curl -sk --max-time 10 --resolve {resolve} -o /dev/stdout "
        f"-w '\\nstatus=%{{http_code}}\\n' {url} "
        "| sed -n 's:.*<title>\\(.*\\)</title>.*:title=\\1:p; /^status=/p'\n"
    )
