"""Deploy Pluto.jl into a sandboxed nixos-container and reach it over SSH."""

import logging

from invoke import Collection

from pluto_deploy import settings
from pluto_deploy.errors import one_line_for_the_rest

from . import backup, deploy, logs, secret, session, show, status, tunnel, undeploy

# Paramiko logs refused channels as errors; without a handler Python prints
# them to stderr. The tasks report such failures themselves, in one line.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

# FABRIC_PLUTO_* values are checked before Invoke casts them (see check_environment).
settings.check_environment()
one_line_for_the_rest()

# Task modules stay importable as modules (tasks.tunnel); the tasks are their attributes.
ns = Collection(
    deploy.deploy,
    tunnel.tunnel,
    logs.logs,
    status.status,
    secret.rotate_secret,
    backup.backup,
    backup.restore,
    undeploy.undeploy,
    show.show_settings,
)
# `fab session.open NAME …`: Invoke's positional arguments are all required, so one
# task per verb (invoke/parser/parser.py, missing_positional_args).
ns.add_collection(
    Collection(
        "session", session.open_, session.invite, session.revoke, session.list_, session.close
    )
)
ns.configure(
    {
        # Every key of fabric.yaml's `pluto:` block, with its default; Invoke only
        # maps FABRIC_PLUTO_* environment variables onto keys registered here.
        "pluto": settings.DEFAULTS,
    }
)
