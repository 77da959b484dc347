"""Show what the tasks will use."""

from dataclasses import asdict

from . import settings
from .cli import task


@task(name="settings")
def show_settings(c):
    """Print the validated settings (fabric.yaml, FABRIC_PLUTO_*, defaults)."""
    for name, value in asdict(settings.load(c.config)).items():
        print(f"{name:22} {value}")
