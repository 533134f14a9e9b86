"""Which Locust process does what: the master (or a standalone local runner) coordinates, while
workers, including `--processes` children, only generate load. Plugins that bind ports, check the
host, seed data or clean up act on the coordinator only, so they happen once per run."""

from __future__ import annotations

from locust.env import Environment
from locust.runners import WorkerRunner


def is_coordinator(environment: Environment) -> bool:
    """True on the master or a standalone process; False on workers (and before a runner exists)."""
    return environment.runner is not None and not isinstance(environment.runner, WorkerRunner)


def target_host(environment: Environment) -> str | None:
    """The host the run targets: --host (or the web UI's host field), else the User classes' `host`."""
    if environment.host:
        return environment.host.rstrip("/")
    for user_class in environment.user_classes:
        if getattr(user_class, "host", None):
            return str(user_class.host).rstrip("/")
    return None
