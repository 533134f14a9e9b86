"""Settings of the Locust suite, each overridable by an environment variable of the same name.

    HOST=http://127.0.0.1:8000 MIN_WAIT_TIME=500 locust -f locust_tests/scenarios/login_test.py

`--host` on Locust's command line (or LOCUST_HOST, or host= in locust.conf) still wins over HOST,
as in any locustfile: HOST is only the User classes' default `host`.

The SLO defaults come from `loadlab/contract/thresholds.py`, the one place the alert rules, dashboards and
the breaking-point analysis read them from too; the variables here only override them for a run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from loadlab.contract.thresholds import ThresholdError, Thresholds, resolve
from locust_tests.config.api_contract import BodyTemplate, ContractError, read_setting, setting_error

_SUITE_DIR = Path(__file__).resolve().parent.parent


def _fail(name: str, raw: str, expected: str) -> SystemExit:
    # SystemExit rather than ValueError: Locust imports this while loading the locustfile, and a
    # one-line message serves a user better there than a traceback.
    return SystemExit(setting_error(name, raw, expected))


def _str(name: str, default: str) -> str:
    return os.environ.get(name, "") or default


def _int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _fail(name, raw, f"a whole number >= {minimum}") from None
    if value < minimum:
        raise _fail(name, raw, f"a whole number >= {minimum}")
    return value


def _url(name: str, default: str) -> str:
    value = _str(name, default).rstrip("/")
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise _fail(name, value, "an http:// or https:// URL such as http://127.0.0.1:5000")
    return value


def _path(name: str, default: str) -> str:
    value = _str(name, default)
    if not value.startswith("/"):
        raise _fail(name, value, "a URL path starting with '/'")
    return value


# The API under test; Locust's --host overrides it.
HOST: str = _url("HOST", "http://localhost:5000")

# Think time between a simulated user's requests, in milliseconds (uniformly random in between).
MIN_WAIT_TIME: int = _int("MIN_WAIT_TIME", 1000)
MAX_WAIT_TIME: int = _int("MAX_WAIT_TIME", 3000)
if MAX_WAIT_TIME < MIN_WAIT_TIME:
    raise SystemExit(f"MAX_WAIT_TIME ({MAX_WAIT_TIME}) is below MIN_WAIT_TIME ({MIN_WAIT_TIME}): "
                     "set MAX_WAIT_TIME >= MIN_WAIT_TIME")

# How many test users `python -m locust_tests.data` writes into test_users.json by default.
USERS_COUNT: int = _int("USERS_COUNT", 1000, minimum=1)
# How many of them the login scenario seeds and logs in with. Each account may have several
# concurrent sessions; 100 keeps seeding to a few seconds even with the target's slow default hash.
LOGIN_USERS: int = _int("LOGIN_USERS", 100, minimum=1)
TEST_USERS_FILE: str = _str("TEST_USERS_FILE", str(_SUITE_DIR / "data" / "test_users.json"))

# Endpoint paths of the API (the existing API spells registration this way).
REGISTRATION_ENDPOINT: str = _path("REGISTRATION_ENDPOINT", "/client_registeration")
LOGIN_ENDPOINT: str = _path("LOGIN_ENDPOINT", "/client_login")
HEALTH_ENDPOINT: str = _path("HEALTH_ENDPOINT", "/healthz")
ADMIN_USERS_ENDPOINT: str = _path("ADMIN_USERS_ENDPOINT", "/admin/users")


def _contract(name: str) -> Any:
    try:
        return read_setting(name, os.environ)
    except ContractError as exc:
        raise SystemExit(str(exc)) from None


# The API's request/response contract (locust_tests/config/api_contract.py): JSON body templates with
# the placeholders {username} {email} {password} {name}, the statuses that count as success (and, for a
# registration, as "already exists"), and the dotted JSON path of the login token ("" = no token check).
# Seeding and the preflight use them too; the lab checks them before it starts anything.
REGISTRATION_BODY: BodyTemplate = _contract("REGISTRATION_BODY")
LOGIN_BODY: BodyTemplate = _contract("LOGIN_BODY")
REGISTRATION_OK_STATUS: frozenset[int] = _contract("REGISTRATION_OK_STATUS")
REGISTRATION_EXISTS_STATUS: frozenset[int] = _contract("REGISTRATION_EXISTS_STATUS")
LOGIN_OK_STATUS: frozenset[int] = _contract("LOGIN_OK_STATUS")
# Empty (LOGIN_TOKEN_FIELD=) turns the token check off; unset means the default, "token".
LOGIN_TOKEN_FIELD: str = _contract("LOGIN_TOKEN_FIELD")

# The SLO the step hunt judges each step against, and the share of each step it ignores as a
# transient: SLO_P95_MS, SLO_ERROR_RATIO, STEP_TRANSIENT_FRACTION over the defaults in
# loadlab/contract/thresholds.py, resolved (and validated) by the same function the lab uses.
try:
    THRESHOLDS: Thresholds = resolve(os.environ)
except ThresholdError as exc:
    raise SystemExit(str(exc)) from None
SLO_P95_MS: float = THRESHOLDS.latency_p95_ms
SLO_ERROR_RATIO: float = THRESHOLDS.error_ratio
STEP_TRANSIENT_FRACTION: float = THRESHOLDS.step_transient_fraction
