"""The library under the Fabric tasks of tasks/: settings, SSH, remote scripts, host facts,
the deploy plan and its execution, the tunnel, reports. Importing it has no side effects."""
