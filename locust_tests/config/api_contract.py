"""The request/response contract of the API under test, as data: body templates, accepted statuses
and where the login token is. `test_config` reads them from environment variables (`SETTINGS`,
`read_setting`); the checks, the preflight and the seeding apply them; the lab checks them
(`settings_problem`) before it starts anything.

    REGISTRATION_BODY='{"user": {"login": "{username}", "mail": "{email}", "secret": "{password}"}}'
    LOGIN_OK_STATUS=200,201   LOGIN_TOKEN_FIELD=data.token   REGISTRATION_EXISTS_STATUS=400,409

A body template is a JSON object whose string values may hold the placeholders {username},
{email}, {password} and {name}; they are filled in after parsing, so a value never has to be
JSON-escaped by hand and a password with a quote in it stays one string.

No Locust import: tests and other tools use this without gevent's monkey patching.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

PLACEHOLDERS = ("username", "email", "password", "name")
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FIELD_RE = re.compile(r"[^.\s]+(?:\.[^.\s]+)*")


class ContractError(ValueError):
    """A contract setting that cannot be used; the message says what is expected."""


@dataclass(frozen=True)
class BodyTemplate:
    """A JSON object with placeholders in its string values."""

    text: str
    document: dict[str, Any]

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(_placeholders(self.document))

    def render(self, fields: Mapping[str, str]) -> dict[str, Any]:
        """The body for one user: every placeholder replaced by `fields[name]`."""
        rendered = _fill(self.document, fields)
        assert isinstance(rendered, dict)
        return rendered


def _placeholders(value: Any) -> list[str]:
    if isinstance(value, str):
        return _PLACEHOLDER_RE.findall(value)
    if isinstance(value, dict):
        return [name for item in value.values() for name in _placeholders(item)]
    if isinstance(value, list):
        return [name for item in value for name in _placeholders(item)]
    return []


def _fill(value: Any, fields: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _PLACEHOLDER_RE.sub(lambda m: fields[m.group(1)], value)
    if isinstance(value, dict):
        return {key: _fill(item, fields) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, fields) for item in value]
    return value


def parse_body(text: str, required: Collection[str] = ("password",),
               one_of: Collection[str] = ("username", "email")) -> BodyTemplate:
    """A body template from JSON text; ContractError when it is not a JSON object, names an unknown
    placeholder, or lacks a `required` one or every one of `one_of` (a body that names no user
    cannot create or log in a distinct account)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContractError(f"a JSON object (not JSON: {exc.msg} at column {exc.colno}); placeholders go inside "
                            f'quoted strings, e.g. {{"username": "{{username}}"}}') from None
    if not isinstance(document, dict):
        raise ContractError(f"a JSON object, not a JSON {type(document).__name__}")
    used = _placeholders(document)
    unknown = sorted(set(used) - set(PLACEHOLDERS))
    if unknown:
        raise ContractError(f"placeholders among {', '.join('{' + p + '}' for p in PLACEHOLDERS)} only "
                            f"(unknown: {', '.join('{' + p + '}' for p in unknown)})")
    needed = ["{" + p + "}" for p in required if p not in used]
    if one_of and not set(one_of) & set(used):
        needed.append(" or ".join("{" + p + "}" for p in one_of))
    if needed:
        raise ContractError(f"a body that uses {' and '.join(needed)}")
    return BodyTemplate(text, document)


def parse_statuses(text: str) -> frozenset[int]:
    """Comma-separated HTTP status codes ("200,201"), each 100-599; at least one."""
    parts = [part.strip() for part in text.split(",")]
    if not any(parts):
        raise ContractError("at least one status code, e.g. 200 or 200,201")
    codes = set()
    for part in parts:
        if not part.isdigit() or not 100 <= int(part) <= 599:
            raise ContractError(f"comma-separated HTTP status codes 100-599, e.g. 200,201 ({part!r} is not one)")
        codes.add(int(part))
    return frozenset(codes)


def parse_field(text: str) -> str:
    """A dotted JSON path ("access_token", "data.token", "tokens.0.value"); "" means no check."""
    text = text.strip()
    if text and not _FIELD_RE.fullmatch(text):
        raise ContractError("a dotted JSON path such as access_token or data.token (empty: no token check)")
    return text


def field_value(body: Any, path: str) -> Any:
    """The value at a dotted path of a parsed JSON body (digits index lists), or None."""
    value = body
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def expected_statuses(codes: Collection[int]) -> str:
    """"201", "200 or 201", "200, 201 or 204"."""
    ordered = [str(c) for c in sorted(codes)]
    return ordered[0] if len(ordered) == 1 else f"{', '.join(ordered[:-1])} or {ordered[-1]}"


def token_problem(body: Any, path: str) -> str | None:
    """None when `path` holds a non-empty string in `body` (or there is no path to check), else where
    the token was missing ("in the body" for the default field, "at data.token" otherwise)."""
    if not path:
        return None
    value = field_value(body, path)
    if isinstance(value, str) and value:
        return None
    return "in the body" if path == "token" else f"at {path}"


DEFAULT_REGISTRATION_BODY = '{"username": "{username}", "email": "{email}", "password": "{password}"}'
DEFAULT_LOGIN_BODY = '{"username": "{username}", "password": "{password}"}'

# The contract settings: environment variable -> (default, parser).
SETTINGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "REGISTRATION_BODY": (DEFAULT_REGISTRATION_BODY, parse_body),
    "LOGIN_BODY": (DEFAULT_LOGIN_BODY, parse_body),
    "REGISTRATION_OK_STATUS": ("201", parse_statuses),
    # How the API answers the registration of a user that exists. Seeding and the login preflight
    # count such a user as there: a re-run finds the accounts an earlier run left (cleanup is optional).
    "REGISTRATION_EXISTS_STATUS": ("409", parse_statuses),
    "LOGIN_OK_STATUS": ("200", parse_statuses),
    "LOGIN_TOKEN_FIELD": ("token", parse_field),
}


def setting_error(name: str, raw: str, expected: str) -> str:
    """The one line a bad setting stops Locust (and the lab) with."""
    return f"environment variable {name}={raw!r} is not valid: expected {expected}"


def read_setting(name: str, env: Mapping[str, str]) -> Any:
    """Contract setting `name` from `env`, parsed; its default when unset or empty, except that an
    empty LOGIN_TOKEN_FIELD turns the token check off. ContractError with `setting_error`'s line."""
    default, parse = SETTINGS[name]
    raw = env.get(name)
    text = default if raw is None or (raw == "" and name != "LOGIN_TOKEN_FIELD") else raw
    try:
        return parse(text)
    except ContractError as exc:
        raise ContractError(setting_error(name, text, str(exc))) from None


def settings_problem(env: Mapping[str, str]) -> str | None:
    """The line the first unusable contract setting in `env` would stop Locust with; None if all are usable."""
    for name in SETTINGS:
        try:
            read_setting(name, env)
        except ContractError as exc:
            return str(exc)
    return None
