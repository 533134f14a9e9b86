"""Test-data cleanup: DELETE /admin/users?prefix=... removes users whose username starts with it.

Registered only when LAB_ADMIN_TOKEN (config ADMIN_TOKEN) is set, and unless the X-Admin-Token
header equals that token, any method on the path answers exactly like an unknown path (the same
404 and body, no Allow header, `endpoint="<unmatched>"` in the metrics), so without the token
nobody can even tell it exists.
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import Flask, abort, current_app, jsonify, request
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.routing import Rule

from . import validation
from .db import get_storage
from .validation import ApiError

PATH = "/admin/users"
ENDPOINT = "admin.users"


def require_token() -> None:
    given = request.headers.get("X-Admin-Token", "").encode("utf-8", "surrogateescape")
    expected = current_app.config["ADMIN_TOKEN"].encode("utf-8")
    if not hmac.compare_digest(given, expected):  # constant time: the token cannot be guessed bytewise
        request.url_rule = None  # metrics label it like any unknown path (loadlab.instrument notes the rule)
        abort(404)


def users() -> Any:
    require_token()
    if request.method != "DELETE":  # only now: with the token, the route may show itself
        raise MethodNotAllowed(valid_methods=["DELETE"])
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
        # A werkzeug Rule without `methods` matches every method (Flask's add_url_rule would
        # restrict it to a list), so routing never answers 405 with "Allow: DELETE" before the
        # token has been checked.
        app.url_map.add(Rule(PATH, endpoint=ENDPOINT))
        app.view_functions[ENDPOINT] = users
