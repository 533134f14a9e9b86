"""The `loadlab` command (`python -m loadlab`): loadlab.cli, or one line when the lab is not installed.

A plain `pip install .` is the server side only (instrumentation, gunicorn config, sidecar); the
command needs the `lab` extra. Without it, the first import of a lab package says so in one line
instead of a traceback.
"""

from __future__ import annotations

import sys

from loadlab.contract.exits import EXIT_USAGE

# Import names of the `lab` extra's packages (pyproject.toml; py-spy is a program, not imported).
LAB_PACKAGES = frozenset({"locust", "faker", "flask_login", "gevent", "matplotlib", "numpy"})


def main() -> int:
    try:
        from loadlab import cli
        return cli.main()
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in LAB_PACKAGES:
            raise
        print(f"loadlab: the lab needs the `lab` extra, not installed here (no module {exc.name!r}): "
              "in a checkout of this project run `make setup` or `pip install '.[lab]'`", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
