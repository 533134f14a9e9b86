"""Test-data cleanup: DELETE /admin/users?prefix=... removes users whose username starts with it.

Registered only when LAB_ADMIN_TOKEN (config ADMIN_TOKEN) is set, and it answers exactly like an
unknown path (404) unless the X-Admin-Token header equals that token, so without the token nobody
can even tell it exists.
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, Flask, abort, current_app, jsonify, request

from . import validation
from .db import get_storage
from .validation import ApiError

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
def require_token() -> None:
    given = request.headers.get("X-Admin-Token", "").encode("utf-8", "surrogateescape")
    expected = current_app.config["ADMIN_TOKEN"].encode("utf-8")
    if not hmac.compare_digest(given, expected):  # constant time: the token cannot be guessed bytewise
        abort(404)


@bp.delete("/users")
def delete_users() -> Any:
    prefix = request.args.get("prefix", "")
    # A prefix is a username fragment; an empty one would delete everybody, so it is refused.
    if not prefix:
        raise ApiError(400, "missing_field", "prefix is required, e.g. ?prefix=lt_", "prefix")
    if len(prefix) > validation.USERNAME_MAX or not validation.USERNAME_RE.fullmatch(prefix):
        raise ApiError(400, "invalid_prefix",
                       "prefix must be 1-64 letters, digits, '_', '.' or '-'", "prefix")
    deleted = get_storage().delete_users_with_prefix(prefix)
    return jsonify(deleted=deleted, prefix=prefix)


def init_app(app: Flask) -> None:
    if app.config["ADMIN_TOKEN"]:
        app.register_blueprint(bp)
