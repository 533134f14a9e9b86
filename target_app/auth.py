"""The API under test: POST /client_registeration and POST /client_login.

(The spelling "registeration" is the existing API's and part of its contract.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any, TypeVar

from flask import Blueprint, Flask, current_app, jsonify
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.exceptions import HTTPException
from werkzeug.security import check_password_hash, generate_password_hash

from . import validation
from .app_metrics import count_login, count_registration
from .db import DuplicateUser, get_storage, storage_class
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
    storage = get_storage()
    user = storage.find_user(username)
    checks: PasswordChecks = current_app.extensions[CHECKS_KEY]
    # The same work for an unknown user as for a real one (see PasswordChecks), so response time
    # does not tell whether the username exists.
    matched = checks.verify(user.password_hash if user is not None else None, password)
    if user is None or not matched:
        count_login("failure")
        raise invalid_credentials()
    if checks.outdated(user.password_hash) and hasattr(storage, "set_password_hash"):
        # The password is at hand only now: store it again with the configured method.
        storage.set_password_hash(user.id, checks.hash(password))
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


DUMMY_PASSWORD = "not a password of anybody"
CHECKS_KEY = "target_app_password_checks"


def hash_method(password_hash: str) -> str:
    """The werkzeug method string of a stored hash, e.g. "scrypt:16384:8:1"."""
    return password_hash.split("$", 1)[0]


class PasswordChecks:
    """Password verification whose cost does not depend on whether the user exists.

    Every login checks exactly one hash of each method in use: the user's own hash for its method,
    and a dummy hash (of a password nobody has) for each other method; an unknown user gets the
    dummies only. In use means stored in the database when the worker started, plus the configured
    method. A database of one method, the usual case, costs one check per login, as before. A
    database made with another hash profile (or a mix after a profile change) costs the sum of the
    methods' costs for every login, known user or not: a dummy of the configured method alone would
    answer an unknown user in 41 ms and a user stored with the cheaper `lab` method in 5 ms.
    A successful login with an outdated method rehashes (see `login`), so the mix dies out."""

    def __init__(self, method: str, stored_methods: Iterable[str] = ()) -> None:
        self.method_setting = method
        dummy = generate_password_hash(DUMMY_PASSWORD, method=method)
        self.current = hash_method(dummy)  # "scrypt" as stored: "scrypt:32768:8:1"
        self.dummies: dict[str, str] = {self.current: dummy}
        for stored in stored_methods:
            self.add_method(stored)

    def add_method(self, method: str) -> None:
        if method in self.dummies:
            return
        try:
            self.dummies[method] = generate_password_hash(DUMMY_PASSWORD, method=method)
        except ValueError:
            pass  # a method werkzeug cannot compute: no login can pass such a hash anyway

    def verify(self, password_hash: str | None, password: str) -> bool:
        """True if `password` matches `password_hash` (None: unknown user, always False)."""
        own = hash_method(password_hash) if password_hash is not None else None
        if own is not None and own not in self.dummies:
            self.add_method(own)  # stored by a server with another profile since this one started
        ok = False
        for method, dummy in self.dummies.items():
            if method == own and password_hash is not None:
                ok = check_password_hash(password_hash, password)
            else:
                check_password_hash(dummy, password)  # the cost of this method, result unused
        return ok

    def outdated(self, password_hash: str) -> bool:
        return hash_method(password_hash) != self.current

    def hash(self, password: str) -> str:
        return generate_password_hash(password, method=self.method_setting)


def init_app(app: Flask) -> None:
    storage = storage_class(app)(app.config["DATABASE"])
    try:
        # Optional for other Storage classes: without it, only the configured method is "in use".
        list_methods = getattr(storage, "password_hash_methods", None)
        stored = list_methods() if list_methods is not None else ()
    finally:
        storage.close()
    # Computed once per process: a dummy hash per method in use.
    app.extensions[CHECKS_KEY] = PasswordChecks(app.config["PASSWORD_HASH_METHOD"], stored)
    app.register_blueprint(bp)
