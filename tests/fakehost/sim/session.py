"""sshd's ForceCommand on the simulated host: log the request, then run it as sshd would.

Every SSH session request (a command, the sftp subsystem, or a login shell)
is appended to /var/log/sim/commands.jsonl with the user, so tests can count
remote commands. PATH is what a NixOS login gets (wrappers first, then
/run/current-system/sw/bin). Then the user's shell runs `-c COMMAND`, exactly
what sshd does without a ForceCommand.
"""

import json
import os
import pwd
import time

command = os.environ.get("SSH_ORIGINAL_COMMAND")
user = pwd.getpwuid(os.getuid())
record = {
    "time": time.time(),
    "user": user.pw_name,
    "command": command,
    "client": os.environ.get("SSH_CLIENT", ""),
}
with open("/var/log/sim/commands.jsonl", "a") as log:
    log.write(json.dumps(record) + "\n")
if command and command.endswith("sftp-server"):
    # Fault switch sftp_delay: a slow link, so tests can interrupt an upload.
    with open("/etc/sim/faults.json") as faults:
        time.sleep(float(json.load(faults).get("sftp_delay", 0)))
os.environ["PATH"] = "/run/wrappers/bin:/run/current-system/sw/bin:/usr/local/bin:/usr/bin:/bin"
shell = user.pw_shell or "/bin/sh"
if command is None:
    os.execv(shell, ["-" + os.path.basename(shell)])
os.execv(shell, [os.path.basename(shell), "-c", command])
