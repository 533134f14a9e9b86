"""Seeding: make sure the users a scenario logs in with exist before its load starts.

    seeding.seed_before_test(users)   # in a locustfile, at import

registers a test_start listener that, on the master or standalone process only (so once per run,
however many workers), registers each user through the API itself, with the suite's
REGISTRATION_BODY template; a status of REGISTRATION_OK_STATUS counts as created
(locust_tests/config/test_config.py). It is idempotent: a user that already exists (a status of
REGISTRATION_EXISTS_STATUS, default 409) is fine, so a re-run finds the accounts an earlier one left.
Locust fires test_start before it spawns any user, and waits for the listener, so the load never
starts against missing accounts.

`register_users` does not import Locust, so other tools can seed the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from locust_tests.config.api_contract import BodyTemplate

from .checks import describe_answer
from .httpclient import call
from .testdata import request_fields

logger = logging.getLogger(__name__)

# Parallel registrations while seeding: enough to keep a 2-worker target busy, few enough that
# seeding never looks like load.
SEED_CONCURRENCY = 8


@dataclass
class SeedReport:
    created: int = 0
    existing: int = 0
    failed: int = 0
    first_problem: str = ""
    first_status: int = 0  # of the first failure; 0: no answer


def register_users(host: str, users: list[dict[str, str]], endpoint: str = "/client_registeration",
                   concurrency: int = SEED_CONCURRENCY, body: BodyTemplate | None = None,
                   ok: Collection[int] | None = None, exists: Collection[int] | None = None) -> SeedReport:
    """Register `users` at host+endpoint with the registration body template (`body`, default
    REGISTRATION_BODY); a status of `ok` (default REGISTRATION_OK_STATUS) counts as created, one of
    `exists` (default REGISTRATION_EXISTS_STATUS) as already existing."""
    if body is None or ok is None or exists is None:
        from locust_tests.config import test_config

        body = test_config.REGISTRATION_BODY if body is None else body
        ok = test_config.REGISTRATION_OK_STATUS if ok is None else ok
        exists = test_config.REGISTRATION_EXISTS_STATUS if exists is None else exists
    url = host.rstrip("/") + endpoint
    report = SeedReport()

    def register(user: dict[str, str]) -> tuple[int, str]:
        try:
            status, answer = call("POST", url, body.render(request_fields(user)))
        except OSError as exc:
            return 0, f"no answer from {host} ({getattr(exc, 'reason', exc)})"
        return status, describe_answer(status, answer)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for status, problem in pool.map(register, users):
            if status in ok:
                report.created += 1
            elif status in exists:
                report.existing += 1
            else:
                report.failed += 1
                if not report.first_problem:
                    report.first_problem, report.first_status = problem, status
    return report


def exists_hint(status: int, exists: Collection[int]) -> str:
    """For a failed registration: a 4xx may be how the API says "exists" (400, 422), met when a re-run
    finds the accounts an earlier run left (cleanup is optional)."""
    if not 400 <= status < 500 or status in exists:
        return ""
    return (f" (if {status} is how your API answers a user that already exists, add it to "
            f"REGISTRATION_EXISTS_STATUS={','.join(map(str, sorted(exists)))})")


def seed_before_test(users: list[dict[str, str]]) -> None:
    """Register a test_start listener that seeds `users` into the target once per run."""
    from locust import events

    from locust_tests.config import test_config

    from .roles import is_coordinator, target_host

    @events.test_start.add_listener
    def _seed(environment: Any, **_: Any) -> None:
        if not is_coordinator(environment):
            return
        host = target_host(environment)
        if host is None:
            logger.error("seeding: no host to seed: pass --host")
            return
        report = register_users(host, users, test_config.REGISTRATION_ENDPOINT)
        if report.failed:
            logger.error("seeding: %d of %d test users could not be created at %s (first: %s); logins with "
                         "them will fail%s", report.failed, len(users), host, report.first_problem,
                         exists_hint(report.first_status, test_config.REGISTRATION_EXISTS_STATUS))
        else:
            logger.info("seeding: %d test users ready at %s (%d created, %d already there)",
                        len(users), host, report.created, report.existing)
        if environment.shape_class is not None:
            # The load starts now: seeding time must not eat into a preset or the first step.
            # (A master resets the shape's clock after test_start itself; a standalone runner does not.)
            environment.shape_class.reset_time()
