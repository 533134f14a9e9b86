"""The API under test: POST /client_registeration and POST /client_login.

(The spelling "registeration" is the existing API's and part of its contract.)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import Blueprint, Flask, current_app, jsonify
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.exceptions import HTTPException
from werkzeug.security import check_password_hash, generate_password_hash

from . import validation
from .app_metrics import count_login, count_registration
from .db import DuplicateUser, get_storage
from .validation import ApiError

bp = Blueprint("auth", __name__)

TOKEN_SALT = "target_app.client_login"


def invalid_credentials() -> ApiError:
    # Same status and body for an unknown user and a wrong password: no user enumeration.
    return ApiError(401, "invalid_credentials", "username or password is wrong")


F = TypeVar("F", bound=Callable[..., Any])


def counting_invalid(count: Callable[[str], None]) -> Callable[[F], F]:
    """Count a request rejected as bad input (4xx other than 401/409) as outcome "invalid"."""
    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return view(*args, **kwargs)
            except ApiError as exc:
                if exc.status not in (401, 409):
                    count("invalid")
                raise
            except HTTPException:  # 413 from reading the body
                count("invalid")
                raise
        return wrapper  # type: ignore[return-value]
    return decorate


@bp.post("/client_registeration")
@counting_invalid(count_registration)
def register() -> Any:
    username, email, password = validation.registration(validation.json_body())
    # Hash before touching the database: the slow part holds no lock.
    password_hash = generate_password_hash(password, method=current_app.config["PASSWORD_HASH_METHOD"])
    try:
        user_id = get_storage().create_user(username, email, password_hash)
    except DuplicateUser as exc:
        count_registration("duplicate")
        raise ApiError(409, "duplicate", f"{exc.field} is already registered", exc.field) from None
    count_registration("created")
    return jsonify(id=user_id, username=username), 201


@bp.post("/client_login")
@counting_invalid(count_login)
def login() -> Any:
    username, password = validation.login(validation.json_body())
    user = get_storage().find_user(username)
    if user is None:
        # Spend the same time as for a real user, so response time does not tell whether the
        # username exists.
        check_password_hash(current_app.extensions["target_app_dummy_hash"], password)
        count_login("failure")
        raise invalid_credentials()
    if not check_password_hash(user.password_hash, password):
        count_login("failure")
        raise invalid_credentials()
    count_login("success")
    max_age = current_app.config["TOKEN_MAX_AGE"]
    return jsonify(token=serializer().dumps({"uid": user.id}), expires_in=max_age)


def serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=TOKEN_SALT)


def user_id_from_token(token: str) -> int | None:
    """The user id a token was issued for, or None if it is forged, altered or expired."""
    try:
        return int(serializer().loads(token, max_age=current_app.config["TOKEN_MAX_AGE"])["uid"])
    except (BadSignature, KeyError, TypeError, ValueError):  # SignatureExpired is a BadSignature
        return None


def init_app(app: Flask) -> None:
    # A hash, with the configured method, of a password nobody has: checking it costs what checking a
    # real user's hash costs. Computed once per process.
    app.extensions["target_app_dummy_hash"] = generate_password_hash(
        "not a password of anybody", method=app.config["PASSWORD_HASH_METHOD"]
    )
    app.register_blueprint(bp)
