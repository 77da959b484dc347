"""Show what the tasks will use."""

from dataclasses import asdict

from pluto_deploy import settings
from pluto_deploy.cli import task


@task(name="settings")
def show_settings(c):
    """Print the validated settings (fabric.yaml, FABRIC_PLUTO_*, defaults)."""
    for name, value in asdict(settings.load(c.config)).items():
        shown = ", ".join(value) if isinstance(value, tuple) else value
        print(f"{name:21} {shown!s:22} # {settings.SETTINGS[name].help}")
