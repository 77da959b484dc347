"""`pluto-deploy` (or `python -m tasks`): the same tasks as `fab`, with no fabfile needed.

For an installed package, run from any directory; settings come from ~/.fabric.yaml,
`-f FILE` and FABRIC_PLUTO_* as with `fab` (fabric 3.2.3 fabric/main.py make_program).
"""

from fabric import Config, Executor
from fabric import __version__ as fabric_version
from fabric.main import Fab

from tasks import ns


def main() -> None:
    Fab(
        name="pluto-deploy",
        version=fabric_version,
        namespace=ns,
        executor_class=Executor,
        config_class=Config,
    ).run()


if __name__ == "__main__":
    main()
