"""Deploy Pluto.jl into a sandboxed nixos-container and reach it over SSH."""

from invoke import Collection

from . import settings
from .deploy import deploy
from .show import show_settings

# FABRIC_PLUTO_* values are checked before Invoke casts them (see check_environment).
settings.check_environment()

ns = Collection(deploy, show_settings)
ns.configure(
    {
        # Every key of fabric.yaml's `pluto:` block, with its default; Invoke only
        # maps FABRIC_PLUTO_* environment variables onto keys registered here.
        "pluto": settings.DEFAULTS,
    }
)
