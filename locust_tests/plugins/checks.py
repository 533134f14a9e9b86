"""Response checks for `catch_response` blocks: a wrong answer becomes a failure with a short,
readable message (no usernames or tokens in it: messages become label values of
locust_errors_total and rows of Locust's failure report)."""

from __future__ import annotations

from typing import Any


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


def expect_registered(response: Any) -> None:
    """201 with the new user's id, else a failure ("registration: expected 201, got HTTP 409 (duplicate)").
    Every failure text carries the HTTP status: `loadlab analyze` tells functional failures by it."""
    if response.status_code == 201:
        body = _json(response)
        if isinstance(body, dict) and "id" in body:
            response.success()
            return
        response.failure("registration: HTTP 201 without an id in the body")
        return
    response.failure(f"registration: expected 201, got {_describe(response)}")


def expect_token(response: Any) -> None:
    """200 with a non-empty token, else a failure ("login: expected 200, got HTTP 401 (...)")."""
    if response.status_code == 200:
        body = _json(response)
        if isinstance(body, dict) and isinstance(body.get("token"), str) and body["token"]:
            response.success()
            return
        response.failure("login: HTTP 200 without a token in the body")
        return
    response.failure(f"login: expected 200 with a token, got {_describe(response)}")
