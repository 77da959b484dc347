"""The steps of `deploy`: read the host once, then change only what differs."""

from __future__ import annotations

import hashlib
import io
import re
import secrets as random
import time
from dataclasses import dataclass

from fabric import Connection
from invoke import Exit

from . import bundle, journal, scripts, web
from .errors import StepFailed
from .facts import HostFacts, UnitState, gather
from .plan import Plan, describe, plan
from .progress import Progress
from .settings import Settings
from .ssh import check, connect, run_as_root
from .stream import run_streamed
from .waiting import wait_for_link

# switch-to-configuration's report of what it did (nixpkgs
# pkgs/by-name/sw/switch-to-configuration-ng/src/main.rs; the Perl version prints the same).
UNITS_LINE = re.compile(
    r"^(stopping|starting|restarting|reloading) the following units: (.*)$"
    r"|^the following (new) units were started: (.*)$"
)
SECRET_SWAP_TIMEOUT = 30
FAILED_UNITS = re.compile(r"the following units failed: (.*)$")
# 25.05's bash nixos-rebuild turns a failed activation into exit 1 with this line;
# 25.11's nixos-rebuild-ng passes switch-to-configuration's exit 4 through.
SWITCH_WARNING = "error(s) occurred while switching to the new configuration"


def units_touched(lines: list[str]) -> dict[str, str]:
    """unit -> what the switch did to it last ("stopping", "starting", "new", …)."""
    touched: dict[str, str] = {}
    for line in lines:
        match = UNITS_LINE.match(line.strip())
        if match:
            verb = match.group(1) or match.group(3)
            names = match.group(2) or match.group(4)
            touched.update({name.strip(): verb for name in names.split(",") if name.strip()})
    return touched


def failed_units(code: int, lines: list[str]) -> list[str] | None:
    """Units a switch reported as failed: [] when it succeeded, None when it failed before
    activating (evaluation, build), which no unit explains."""
    if code == 0:
        return []
    listed = next((m.group(1) for x in lines if (m := FAILED_UNITS.search(x))), None)
    if listed is None and not any(SWITCH_WARNING in x for x in lines):
        return None
    return [unit.strip() for unit in (listed or "").split(",") if unit.strip()]


def read_switch(output: list[str], before: str) -> tuple[list[str], str, bool]:
    """nixos-rebuild's lines without scripts.rebuild's mark, the system generation after
    it, and whether the switch activated something (then only switching back undoes it)."""
    mark = scripts.GENERATION_MARK
    after = next((x.split()[-1] for x in output if x.startswith(mark)), "")
    lines = [x for x in output if not x.startswith(mark)]
    activated = after != before or any("activating the configuration" in x for x in lines)
    return lines, after, activated


def nix_error(lines: list[str]) -> str:
    """Nix's own error in one line: `error: …` and its `at FILE:LINE:COL` when given."""
    for index, line in enumerate(lines):
        text = line.strip()
        if text.startswith("error:") and text != "error:":
            following = next((x.strip() for x in lines[index + 1 :] if x.strip()), "")
            return f"{text} {following.rstrip(':')}" if following.startswith("at ") else text
    return next((x.strip() for x in reversed(lines) if x.strip()), "")


@dataclass(frozen=True)
class Options:
    force: bool = False
    rollback: bool = True
    add_import: bool = False
    fix_ownership: str = ""  # "", "directory" or "recursive" (plan.plan)


def command_line_hosts() -> list[str]:
    """Hosts given with -H; Fabric runs the task once per host and tells it nothing."""
    try:
        from fabric.main import program

        value = program.core[0].args.hosts.value
    except (AttributeError, IndexError, TypeError):
        return []
    return value.split(",") if value else []


def upload(cxn: Connection, files: dict[str, bytes]) -> str:
    """SFTP as the login user into a fresh 0700 directory; root installs from there."""
    staging = f"/tmp/pluto-deploy-{random.token_hex(8)}"
    try:
        sftp = cxn.sftp()
        sftp.mkdir(staging, 0o700)
        for name, content in files.items():
            sftp.putfo(io.BytesIO(content), f"{staging}/{name}")
    except OSError as problem:
        raise StepFailed(f"uploading to {cxn.original_host}:{staging} failed: {problem}") from None
    return staging


def replace_configuration(cxn: Connection, path: str, text: str) -> str:
    """Replace a configuration file with `text`, keeping a timestamped backup; the backup's path."""
    staging = upload(cxn, {"configuration.nix": text.encode()})
    backup = f"{path}.pluto-{time.strftime('%Y%m%d-%H%M%S')}.bak"
    check(
        run_as_root(cxn, scripts.replace_file(path, f"{staging}/configuration.nix", backup)), "edit"
    )
    return backup


class Deployment:
    """One deploy to one host; remembers what it changed, for rollback."""

    def __init__(self, cxn: Connection, settings: Settings, options: Options, progress: Progress):
        self.cxn = cxn
        self.s = settings
        self.options = options
        self.p = progress
        self.host = cxn.original_host
        self.facts = HostFacts()
        self.plan = Plan({})
        self.secret: str | None = None
        self.previous = f"{settings.module_dir}.previous"
        self.current = "pre-flight"
        # What this run changed on the host, for rollback and for the report.
        self.pushed = False
        self.config_backup: str | None = None
        self.switched = False
        self.generation_after = ""
        self.pluto_starting = False
        self.warnings: list[str] = []
        # Changes a rollback keeps: they are right whatever the outcome.
        self.kept_changes: list[str] = []

    def _root(self, script: str, what: str):
        return check(run_as_root(self.cxn, script), what)

    # -- 1. pre-flight (read-only) ---------------------------------------------------

    def preflight(self, accept_new_host_key: bool = False) -> None:
        self.p.begin(1, f"pre-flight {self.host}")
        try:
            connect(self.cxn, accept_new_host_key)
            self.facts = gather(self.cxn, self.s, bundle.FILE_NAMES)
            opts = self.options
            self.plan = plan(
                self.facts, self.s, self.host, opts.add_import, opts.fix_ownership, opts.force
            )
            if self.plan.system_action == "rebuild":
                self._configuration_evaluates()
        except Exit:
            self.p.fail("nothing was changed")
            raise
        self.secret = self.plan.secret
        who = "root" if self.cxn.user == "root" else f"sudo as {self.cxn.user}"
        changed = self.plan.changed
        todo = f"{len(changed)} file(s) to update" if changed else "module up to date"
        release = self.facts.release or self.facts.nixos_version
        self.p.end(f"NixOS {release}, {who}, {todo}")

    def _configuration_evaluates(self) -> None:
        """Refuse, before changing anything, a host whose configuration is broken already."""
        self.p.note("evaluating the host's configuration as it is …")
        code, lines = self._stream(scripts.evaluate_configuration())
        if code != 0:
            raise Exit(
                f"the NixOS configuration on {self.host} does not evaluate even without this "
                f"deploy: {nix_error(lines)}; fix it first"
            )

    def describe_changes(self) -> None:
        for part in describe(self.facts, self.s, self.plan):
            for line in part.rstrip("\n").split("\n"):
                colour = {"+": "green", "-": "red", "@": "cyan"}.get(line[:1])
                self.p.say(line, None if line.startswith(("+++", "---")) else colour)
        self.p.say(f"Dry run: nothing was changed on {self.host}.")

    # -- 2. push ---------------------------------------------------------------------

    def push(self) -> None:
        self.current = "push"
        self.p.begin(2, f"module {self.s.module_dir}")
        outcome = []
        if self.plan.config_edit:
            path, text = self.plan.config_edit
            self.config_backup = replace_configuration(self.cxn, path, text)
            outcome.append(f"import added to {path} (backup {self.config_backup})")
        if self.plan.changed:
            names = self.plan.changed
            staging = upload(self.cxn, {name: self.plan.files[name] for name in names})
            git_dir = self.facts.flake_dir if self.facts.flake_git else None
            script = scripts.install_files(self.s, staging, names, self.previous, git_dir)
            self._root(script, "install")
            self.pushed = True
            outcome.append(f"wrote {', '.join(names)}" + (" (git add)" if git_dir else ""))
        else:
            outcome.append("up to date")
        outcome.append(self._ensure_secret())
        self.p.end("; ".join(outcome))

    def _ensure_secret(self) -> str:
        if self.plan.secret_action == "keep":
            return "secret kept"
        status, _, secret = self._root(scripts.ensure_secret(self.s), "secret").stdout.partition(
            "secret="
        )
        self.secret = secret.strip()
        if "replaced" in status:
            self.kept_changes.append(f"the unusable secret in {self.s.secret_file} was replaced")
            return "secret replaced (the old file held no usable secret)"
        if "created" in status:
            self.kept_changes.append(f"the secret {self.s.secret_file} was created")
            return "secret created"
        return "secret kept (owner and mode fixed)"

    # -- 3. data directory -------------------------------------------------------------

    def data_dir(self) -> None:
        self.current = "data dir"
        s, action = self.s, self.plan.data_dir_action
        self.p.begin(3, f"data dir {s.data_dir}")
        owner = f"{s.uid}:{s.gid}"
        if action == "create":
            self._root(scripts.create_data_dir(s), "data dir")
            self.kept_changes.append(f"{s.data_dir} was created")
            self.p.end(f"created, owner {owner}, mode 0750")
        elif action in ("chown", "chown-recursive"):
            recursive = action == "chown-recursive"
            self._root(scripts.fix_data_dir_owner(s, recursive), "chown")
            self.kept_changes.append(f"{s.data_dir} was chowned to {owner}")
            scope = (
                "with everything in it" if recursive else "the directory itself, not its contents"
            )
            self.p.end(f"owner changed from {self.plan.data_dir_owner} to {owner} ({scope})")
        else:
            self.p.end(f"exists, owner {owner}")
        if self.plan.create_state_dir:
            self._root(scripts.create_state_dir(s), "state dir")
            self.kept_changes.append(f"{s.state_host_dir} was created")
            self.p.note(f"created {s.state_host_dir} for the ephemeral container's depot")

    # -- 4. the system: rebuild, start the container, restart Pluto, or nothing ---------

    def system(self) -> None:
        self.current = "rebuild"
        action, reason = self.plan.system_action, self.plan.reason
        if action == "none":
            self.p.begin(4, "system")
            self.p.end(f"nothing to do ({reason})")
        elif action == "start-container":
            self.p.begin(4, f"start container@{self.s.container}")
            self._root(scripts.start_container(self.s), "start")
            self.pluto_starting = True
            self.p.end(f"started (it was {reason})")
        elif action == "restart-pluto":
            self.p.begin(4, "restart pluto.service")
            self._root(scripts.restart_pluto(self.s), "restart")
            self.pluto_starting = True
            self.p.end(f"restarted (it was {reason})")
        else:
            self.p.begin(4, "nixos-rebuild switch")
            self._rebuild()

    def _rebuild(self) -> None:
        unit = self.s.container_unit
        code, output = self._stream(scripts.rebuild())
        lines, self.generation_after, self.switched = read_switch(output, self.facts.generation)
        touched = units_touched(lines)
        self.pluto_starting = touched.get(unit) in ("starting", "restarting", "new")
        failed = failed_units(code, lines)
        if failed is None:
            raise StepFailed(f"nixos-rebuild switch failed (exit {code}): {nix_error(lines)}")
        if code != 0:
            self._judge_failed_units(failed)
        if not self.pluto_starting and self.plan.restart_pluto_after_switch:
            self._root(scripts.restart_pluto(self.s), "restart")
            self.pluto_starting = True
        verb = {"starting": "restarted", "restarting": "restarted", "new": "started"}
        done = verb.get(touched.get(unit), "left running (no change)")
        also = "; restarted pluto.service" if self.pluto_starting and unit not in touched else ""
        self.p.end(f"done, {unit} {done}{also}")

    def _judge_failed_units(self, failed: list[str]) -> None:
        """Some unit failed in the switch: ours means failure, someone else's a warning."""
        unit = self.s.container_unit
        state = UnitState.parse(run_as_root(self.cxn, scripts.unit_state(unit)).stdout)
        if unit in failed or not state.running:
            raise StepFailed(
                f"nixos-rebuild switch activated the system but {unit} is {state.words}"
            )
        others = ", ".join(u for u in failed if u != unit) or "some unit"
        self.warnings.append(
            f"nixos-rebuild reported failed units that are not Pluto's: {others} "
            "(the deploy went on; see `systemctl status` on the host)"
        )

    def _stream(self, script: str) -> tuple[int, list[str]]:
        return run_streamed(self.cxn, script, self.p)

    # -- 5. await Pluto ----------------------------------------------------------------

    def await_pluto(self) -> None:
        self.current = "await"
        self.p.begin(5, "Pluto")
        if not self.pluto_starting:
            if self.plan.secret_action in ("create", "replace"):
                # The launcher swaps a new secret in within a second (files/launcher.jl).
                fingerprint = hashlib.sha256(self.secret.encode()).hexdigest()[:12]
                wait_for_link(
                    self.cxn, self.s, self.facts.cursor, self.facts.now, self.p,
                    f"Secret rotated (fingerprint {fingerprint})", SECRET_SWAP_TIMEOUT,
                )  # fmt: skip
                self.p.end("already running, not restarted; took the new secret")
                return
            self.p.end("already running, not restarted")
            return
        link, started = wait_for_link(self.cxn, self.s, self.facts.cursor, self.facts.now, self.p)
        if journal.secret_of(link) != self.secret:
            raise StepFailed("the running Pluto uses another secret than the deployed one")
        self.p.end(f"up: {started.replace('Starting ', '') or 'link found'}")

    # -- 6. health ---------------------------------------------------------------------

    def health(self) -> None:
        self.current = "health"
        self.p.begin(6, "health")
        address, port = self.s.pluto_address, self.s.port
        ping = web.get(self.cxn, address, port, "/ping")
        page = web.get(self.cxn, address, port, f"/?secret={self.secret}")
        if not (
            ping and ping.status == 200 and ping.body == b"OK!" and page and page.status == 200
        ):
            status = {
                path: r.status if r else "no answer" for path, r in (("/ping", ping), ("/", page))
            }
            raise StepFailed(f"health check failed: /ping {status['/ping']}, / {status['/']}")
        self.p.end("/ping 200 OK!, / with the secret 200")

    def link(self) -> str:
        return journal.local_link(self.secret, self.s.local_port)

    # -- failure handling ----------------------------------------------------------------

    def roll_back_after(self, failure: StepFailed) -> None:
        if self.p.label:
            self.p.fail(failure.reason)
        if failure.journal_lines:
            self.p.say(f"Last lines of pluto.service on {self.host}:")
            for line in failure.journal_lines[-30:]:
                self.p.say("  " + journal.mask(line))
        reason = f"Deploy to {self.host} failed: {failure.reason}"
        kept = f" Kept: {'; '.join(self.kept_changes)}." if self.kept_changes else ""
        if not (self.pushed or self.config_backup or self.switched):
            if kept:
                raise Exit(f"{reason}. Nothing else was changed.{kept}")
            raise Exit(f"{reason}. Nothing on the host was changed by this run.")
        if not self.options.rollback:
            raise Exit(f"{reason}. The host keeps the new files and system (--no-rollback).")
        undone = []
        if self.pushed:
            git_dir = self.facts.flake_dir if self.facts.flake_git else None
            self._root(scripts.restore_previous(self.s, self.previous, git_dir), "restore")
            existed = "module_dir" in self.facts.stats
            how = "restored to its previous version" if existed else "removed"
            undone.append(f"{self.s.module_dir} {how}")
        if self.config_backup:
            path = self.plan.config_edit[0]
            self._root(f"cp -a {scripts.q(self.config_backup)} {scripts.q(path)}", "restore")
            undone.append(f"{path} restored from {self.config_backup}")
        if self.switched:
            undone.append(self._switch_back())
        raise Exit(f"{reason}. Rolled back: {'; '.join(undone)}.{kept}")

    def _switch_back(self) -> str:
        """Back to exactly the generation that was current before this deploy."""
        before = self.facts.generation
        code, lines = self._stream(scripts.switch_back(before, self.generation_after))
        outcome = next((x for x in reversed(lines) if x.startswith(scripts.ROLLBACK_MARK)), "")
        outcome = outcome[len(scripts.ROLLBACK_MARK) :].strip()
        if outcome == "unchanged":
            return f"system left at {before} (this deploy did not change it)"
        if outcome.startswith("moved"):
            return (
                f"system NOT switched back: the current generation is now {outcome.split()[-1]}, "
                f"not the one this deploy made ({self.generation_after}); someone else changed "
                f"it meanwhile — check the host, the generation before this deploy was {before}"
            )
        if code == 0:
            return f"system switched back to {before}"
        return f"switching back to {before} FAILED (exit {code}); check the host"

    def explain_interruption(self) -> None:
        if self.p.label:
            self.p.fail("interrupted")
        raise Exit(f"Interrupted: {self._state_of_host()}.", code=130)

    def explain_lost_connection(self, problem: Exception) -> None:
        if self.p.label:
            self.p.fail("connection lost")
        raise Exit(f"Lost the SSH connection to {self.host} ({problem}): {self._state_of_host()}.")

    def _state_of_host(self) -> str:
        if not (self.pushed or self.config_backup):
            state = "nothing was changed on the host"
        elif self.current == "rebuild":
            state = (
                f"{self.host} has the new module files; nixos-rebuild goes on on the host "
                "(activation outlives the SSH session); `fab status` shows the outcome"
            )
        else:
            state = (
                f"{self.host} has the new module files (complete, none half-written); "
                "deploy again to finish"
            )
        return state
