"""Parsing and checking request bodies; every problem becomes an `ApiError` (a 4xx JSON answer).

Rules (also in the README and openapi.json):
- username: 3-64 characters, ASCII letters, digits, `_`, `.`, `-` (case-insensitively unique).
- email: at most 254 characters, `local@domain` with a dotted domain, ASCII only.
- password: 8-128 characters, valid Unicode (no lone surrogates).
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import request
from werkzeug.exceptions import HTTPException

USERNAME_MIN, USERNAME_MAX = 3, 64
EMAIL_MAX, EMAIL_LOCAL_MAX = 254, 64
PASSWORD_MIN, PASSWORD_MAX = 8, 128

USERNAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")
# A sane subset of RFC 5321/5322: dot-atom local part, hostname labels of 1-63 characters.
EMAIL_RE = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)


class ApiError(Exception):
    """An error answer: HTTP status plus the JSON body {"error", "message", "field"}."""

    def __init__(self, status: int, error: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "message": self.message, "field": self.field}


def json_body() -> dict[str, Any]:
    """The request's JSON object, or ApiError 415/400 saying exactly what is wrong with it (the
    content type, a compressed or unreadable body, the encoding, the JSON, its shape)."""
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       "send the body as JSON with the header Content-Type: application/json")
    check_content_encoding()
    raw = read_body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_encoding", "the body is not valid UTF-8") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    return data


def check_content_encoding() -> None:
    """ApiError 415 naming the coding if the body is compressed (Content-Encoding other than
    identity): the API reads plain JSON only, and would otherwise call gzip "not valid UTF-8"."""
    header = request.headers.get("Content-Encoding", "")
    codings = [c.strip().lower() for c in header.split(",") if c.strip()]
    unsupported = [c for c in codings if c != "identity"]
    if unsupported:
        raise ApiError(415, "unsupported_content_encoding",
                       f"the body is {', '.join(unsupported)[:80]}-encoded (Content-Encoding: {header.strip()[:80]}); "
                       f"this API reads only uncompressed JSON: send it without Content-Encoding")


def read_body() -> bytes:
    """The raw request body, or ApiError 400 if the server cannot read it (a malformed chunked
    body: bad chunk size, missing CRLF, bad trailer; or a body cut short)."""
    try:
        return request.get_data(cache=False)
    except HTTPException:  # 413 when larger than MAX_CONTENT_LENGTH
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the WSGI server's body reader raises
        # The server decodes the framing lazily, while the app reads: gunicorn raises its
        # InvalidChunkSize/ChunkMissingTerminator/InvalidHeader (ParseException, not OSError),
        # werkzeug's dev server an OSError. Either way the body is at fault, not the app.
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        framing = "its chunked encoding is malformed" if chunked else "it ended early"
        raise ApiError(400, "malformed_body",
                       f"the request body could not be read: {framing} ({str(exc)[:120]}); "
                       f"send a complete body with valid Content-Length or chunked framing") from None


def string_field(data: dict[str, Any], name: str, min_len: int, max_len: int) -> str:
    """data[name] as a string of min_len..max_len characters, else ApiError 400 naming the field."""
    if name not in data or data[name] is None:
        raise ApiError(400, "missing_field", f"{name} is required", name)
    value = data[name]
    if not isinstance(value, str):
        raise ApiError(400, "invalid_type", f"{name} must be a string", name)
    if value == "":
        raise ApiError(400, "empty_field", f"{name} must not be empty", name)
    if len(value) < min_len:
        raise ApiError(400, "too_short", f"{name} must be at least {min_len} characters", name)
    if len(value) > max_len:
        raise ApiError(400, "too_long", f"{name} must be at most {max_len} characters", name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON allows lone surrogates ("\ud800"); nothing can store them
        raise ApiError(400, "invalid_encoding", f"{name} contains invalid Unicode", name) from None
    return value


def registration(data: dict[str, Any]) -> tuple[str, str, str]:
    """(username, email, password) of a registration body."""
    username = string_field(data, "username", USERNAME_MIN, USERNAME_MAX)
    if not USERNAME_RE.fullmatch(username):
        raise ApiError(400, "invalid_username",
                       "username may contain only letters, digits, '_', '.' and '-'", "username")
    email = string_field(data, "email", 3, EMAIL_MAX)
    if not EMAIL_RE.fullmatch(email) or len(email.split("@", 1)[0]) > EMAIL_LOCAL_MAX:
        raise ApiError(400, "invalid_email", "email must be an address like name@example.com", "email")
    password = string_field(data, "password", PASSWORD_MIN, PASSWORD_MAX)
    return username, email, password


def login(data: dict[str, Any]) -> tuple[str, str]:
    """(username or email, password) of a login body. Only shape is checked here: a password
    that could never have been registered just fails to match, like any wrong password."""
    username = string_field(data, "username", 1, EMAIL_MAX)
    password = string_field(data, "password", 1, PASSWORD_MAX)
    return username, password
