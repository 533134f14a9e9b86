"""Run a module as `python -m MODULE ARGS`, with the `lab` extra's packages uninstallable.

    python tests/loadlab/server_only.py gunicorn -c python:loadlab.gunicorn_conf myapi:app
    python tests/loadlab/server_only.py monitoring.sidecar --group 'target=...'

As on a server with only the base install (`pip install .`, no `lab` extra): any import of Locust,
Faker, Flask-Login, gevent, matplotlib or numpy (in this process and in the workers it forks) fails
as if they were not installed, and is reported on stderr, so a test proves the server side needs
none of them.
"""

from __future__ import annotations

import runpy
import sys

BLOCKED = ("locust", "faker", "flask_login", "gevent", "matplotlib", "numpy")  # loadlab.__main__.LAB_PACKAGES


class NotOnThisServer:
    """A sys.meta_path finder that refuses the lab-only packages."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in BLOCKED:
            print(f"server_only: blocked import of {name}", file=sys.stderr, flush=True)
            raise ModuleNotFoundError(f"No module named {name!r} (not installed on this server)", name=name)
        return None


def main() -> None:
    already = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if already:
        raise SystemExit(f"server_only: {already} imported at interpreter start-up, before the block")
    sys.meta_path.insert(0, NotOnThisServer())
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
