"""Preflight: before any user spawns, check that the host answers, then try the scenario's own
requests once.

Without it, a test against a server that is not running records minutes of ConnectionRefused
failures, and a test against an API whose contract differs from the suite's (another login path,
a login that refuses the seeded accounts, a server that answers 500) records minutes of failures
that read like a capacity limit. With it, a --headless (or --autostart) run stops within seconds
with one message:

1. reachability: `GET <host>/healthz`; any HTTP answer passes, even a 404. Nothing answering
   exits with code 1 and says how to start the bundled target.
2. the scenario's requests, as the locustfile declares them with `probe_with()`: the login
   scenario seeds one user and logs in with it once; the registration scenario registers one
   user. A wrong answer exits with code 3 (`loadlab.contract.exits.EXIT_API_FAILED`) and quotes
   the status and the body's error code, and says what to change: the host, the endpoint paths,
   or the request/response settings (REGISTRATION_BODY, LOGIN_BODY, *_OK_STATUS, LOGIN_TOKEN_FIELD,
   REGISTRATION_EXISTS_STATUS for a seeded user that exists),
   which these requests use exactly as the load does.

`--skip-preflight` (env LOCUST_SKIP_PREFLIGHT=true) skips both. With the interactive web UI the
checks only warn, since the host can still be changed (or started) before pressing Start.
"""

from __future__ import annotations

import http.client
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any

from locust import events
from locust.env import Environment

from loadlab.contract.exits import EXIT_API_FAILED
from locust_tests.config.api_contract import expected_statuses

from .checks import describe_answer, login_problem, registration_problem
from .httpclient import call
from .roles import is_coordinator, target_host

logger = logging.getLogger(__name__)

# A target that is still starting gets this long to answer; a refused connection is retried.
PREFLIGHT_SECONDS = 5.0
HOW_TO_START = ("start the bundled target with `python -m target_app --port 5000` (then --host "
                "http://127.0.0.1:5000), point --host at your API, or pass --skip-preflight")

# A probe tries one of the scenario's requests against a host: None when the answer is what the
# scenario expects, else what came back instead.
Probe = Callable[[str], str | None]
_probes: list[Probe] = []


def probe_with(probe: Probe) -> None:
    """Have the preflight try `probe` (e.g. `login_probe(account)`) before any user spawns."""
    _probes.append(probe)


def _post(url: str, body: Any) -> tuple[int, Any] | str:
    """(status, body) of a POST, or why there was no answer."""
    try:
        return call("POST", url, body)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        return f"no answer ({getattr(reason, 'strerror', None) or reason})"


def _register(host: str, user: dict[str, str], accept_existing: bool) -> str | None:
    from locust_tests.config import test_config

    from .testdata import request_fields  # Faker: imported only by scenarios that register users

    url = host + test_config.REGISTRATION_ENDPOINT
    answer = _post(url, test_config.REGISTRATION_BODY.render(request_fields(user)))
    if isinstance(answer, str):
        return f"POST {url} (register a user) got {answer}"
    status, body = answer
    problem = registration_problem(status, body, test_config.REGISTRATION_OK_STATUS)
    exists = test_config.REGISTRATION_EXISTS_STATUS
    if problem is None or (status in exists and accept_existing):
        return None
    expected = problem.removeprefix("expected ")
    if accept_existing:
        expected += f" (or {expected_statuses(exists)} for a user that exists: REGISTRATION_EXISTS_STATUS)"
    return f"POST {url} (register a user) answered {describe_answer(status, body)}, expected {expected}"


def login_probe(account: dict[str, str]) -> Probe:
    """The login scenario's requests: seed `account` (an existing one is fine), then log in with it."""

    def probe(host: str) -> str | None:
        from locust_tests.config import test_config

        from .testdata import request_fields

        problem = _register(host, account, accept_existing=True)
        if problem:
            return problem
        url = host + test_config.LOGIN_ENDPOINT
        answer = _post(url, test_config.LOGIN_BODY.render(request_fields(account)))
        if isinstance(answer, str):
            return f"POST {url} (log in as a seeded user) got {answer}"
        status, body = answer
        wrong = login_problem(status, body, test_config.LOGIN_OK_STATUS, test_config.LOGIN_TOKEN_FIELD)
        if wrong is None:
            return None
        if status in test_config.LOGIN_OK_STATUS:  # the right status without the token: name the body's keys
            keys = f" (its JSON object has: {', '.join(sorted(map(str, body))[:10])})" if isinstance(body, dict) else ""
            return f"POST {url} (log in as the user just seeded) answered {wrong}{keys}"
        return f"POST {url} (log in as the user just seeded) answered {describe_answer(status, body)}, {wrong}"

    return probe


def registration_probe() -> Probe:
    """The registration scenario's request: register one fresh user. Its name is outside every
    run's prefix (runs' users are lt_<run id>_..., and '-' is not in a run id), so a run's cleanup
    count stays the run's own; it is deleted again when LAB_ADMIN_TOKEN is set."""

    def probe(host: str) -> str | None:
        from faker import Faker

        from locust_tests.config import test_config

        from .cleanup import TOKEN_ENV, CleanupError, delete_users
        from .testdata import PREFIX, registration_user

        user = registration_user(f"{PREFIX}preflight-{secrets.token_hex(5)}", Faker())
        problem = _register(host, user, accept_existing=False)
        token = os.environ.get(TOKEN_ENV)
        if problem is None and token:
            try:
                delete_users(host, user["username"], token, test_config.ADMIN_USERS_ENDPOINT)
            except CleanupError as exc:
                logger.warning("preflight: could not delete its test user %s: %s", user["username"], exc)
        return problem

    return probe


def contract_problem(host: str) -> str | None:
    """The first declared probe that fails, as one message naming what to change; None if all pass."""
    from locust_tests.config import test_config

    for probe in _probes:
        problem = probe(host)
        if problem:
            return (f"preflight: the API at {host} does not work as the suite expects: {problem}. To fix: check "
                    f"--host, the endpoint paths (REGISTRATION_ENDPOINT={test_config.REGISTRATION_ENDPOINT}, "
                    f"LOGIN_ENDPOINT={test_config.LOGIN_ENDPOINT}) and the request/response settings "
                    f"(REGISTRATION_BODY, REGISTRATION_OK_STATUS={_codes(test_config.REGISTRATION_OK_STATUS)}, "
                    f"LOGIN_BODY, LOGIN_OK_STATUS={_codes(test_config.LOGIN_OK_STATUS)}, "
                    f"LOGIN_TOKEN_FIELD={test_config.LOGIN_TOKEN_FIELD}; see locust_tests/config/test_config.py), "
                    f"or pass --skip-preflight")
    return None


def _codes(codes: Any) -> str:
    return ",".join(str(c) for c in sorted(codes))


def check_host(host: str, path: str = "/healthz", within: float = PREFLIGHT_SECONDS) -> str | None:
    """None when `host` gives any HTTP answer to GET host+path within `within` seconds, else
    why not (the last connection error)."""
    url = host.rstrip("/") + path
    deadline = time.monotonic() + within
    problem = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        try:
            call("GET", url, timeout=max(0.5, min(2.0, remaining)))
            return None  # any status: reachability is all we check
        except (OSError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            problem = getattr(reason, "strerror", None) or str(reason)
        if time.monotonic() + 0.25 >= deadline:
            return problem
        time.sleep(0.25)


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument("--skip-preflight", action="store_true", default=False, env_var="LOCUST_SKIP_PREFLIGHT",
                        include_in_web_ui=False,
                        help="Do not check that the host answers before starting")


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if not is_coordinator(environment) or (options is not None and options.skip_preflight):
        return
    host = target_host(environment)
    interactive = options is not None and not options.headless and not options.autostart
    if host is None:
        if not interactive:
            logger.error("preflight: no host to test: pass --host (or set HOST / host in locust.conf)")
            sys.exit(1)
        return
    from locust_tests.config import test_config

    problem = check_host(host, test_config.HEALTH_ENDPOINT)
    if problem is not None:
        message = f"preflight: nothing answers at {host} ({problem}). Is the API running? To fix: {HOW_TO_START}."
        if interactive:
            logger.warning(message)
            return
        logger.error(message)
        sys.exit(1)
    contract = contract_problem(host)
    if contract is None:
        return
    if interactive:
        logger.warning(contract)
        return
    logger.error(contract)
    sys.exit(EXIT_API_FAILED)
