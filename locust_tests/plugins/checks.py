"""Response checks for `catch_response` blocks: a wrong answer becomes a failure with a short,
readable message (no usernames or tokens in it: messages become label values of
locust_errors_total and rows of Locust's failure report)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from locust_tests.config.api_contract import expected_statuses, token_problem


def _json(response: Any) -> Any:
    try:
        return response.json()
    except Exception:  # not JSON at all (an HTML error page, an empty body)
        return None


def describe_answer(status: int, body: Any) -> str:
    """The status and the error code of a JSON body, if any: "HTTP 401 (invalid_credentials)". The
    preflight quotes answers the same way, so its message and the load's failures read alike."""
    code = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else ""
    return f"HTTP {status}" + (f" ({code[:40]})" if code else "")


def _describe(response: Any) -> str:
    if not response.status_code:
        error = getattr(response, "error", None)
        return f"no response ({type(error).__name__ if error else 'connection failed'})"
    return describe_answer(response.status_code, _json(response))


def registration_problem(status: int, body: Any, ok: Collection[int]) -> str | None:
    """None when a registration answer is a success by the contract (its status is one of `ok`),
    else what was expected ("expected 201")."""
    return None if status in ok else f"expected {expected_statuses(ok)}"


def login_problem(status: int, body: Any, ok: Collection[int], token_field: str) -> str | None:
    """None when a login answer is a success by the contract (a status of `ok`, and a non-empty
    string at `token_field` unless that is empty), else what was wrong."""
    if status not in ok:
        return f"expected {expected_statuses(ok)}" + (" with a token" if token_field else "")
    missing = token_problem(body, token_field)
    return None if missing is None else f"HTTP {status} without a token {missing}"


def expect_registered(response: Any, ok: Collection[int] | None = None) -> None:
    """A status of REGISTRATION_OK_STATUS (default 201), else a failure ("registration: expected 201,
    got HTTP 409 (duplicate)"). Every failure text carries the HTTP status: `loadlab analyze` tells
    functional failures by it."""
    if ok is None:
        from locust_tests.config import test_config

        ok = test_config.REGISTRATION_OK_STATUS
    problem = registration_problem(response.status_code, None, ok)
    if problem is None:
        response.success()
    else:
        response.failure(f"registration: {problem}, got {_describe(response)}")


def expect_token(response: Any, ok: Collection[int] | None = None, token_field: str | None = None) -> None:
    """A status of LOGIN_OK_STATUS (default 200) with a non-empty string at LOGIN_TOKEN_FIELD
    (default token), else a failure ("login: expected 200 with a token, got HTTP 401 (...)")."""
    from locust_tests.config import test_config

    ok = test_config.LOGIN_OK_STATUS if ok is None else ok
    token_field = test_config.LOGIN_TOKEN_FIELD if token_field is None else token_field
    body = _json(response) if response.status_code in ok and token_field else None
    problem = login_problem(response.status_code, body, ok, token_field)
    if problem is None:
        response.success()
    elif response.status_code in ok:
        response.failure(f"login: {problem}")
    else:
        response.failure(f"login: {problem}, got {_describe(response)}")
