"""Who may use the web UI under Locust's `--web-login`: one account, from the environment.

    from locust_tests.plugins import webauth  # noqa: F401
    LOCUST_WEB_PASSWORD=... locust -f locust_tests/scenarios/login_test.py --web-login

Locust's `--web-login` puts every route of its web UI behind Flask-Login (the suite's routes too:
they use `auth_required_if_enabled`), and leaves to the locustfile who may sign in. This plugin
answers with one account: LOCUST_WEB_USERNAME (default "locust") and LOCUST_WEB_PASSWORD, which
--web-login requires. People sign in on Locust's own login page; scripts send HTTP Basic
credentials with each request (`curl -u locust:PASSWORD`, or a Prometheus scrape of `/metrics` with
`basic_auth`). A wrong username and a wrong password get the same answer. Sessions are signed with a
key made at start, so they end with the Locust process. Without --web-login nothing changes.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import sys
from typing import Any

from flask import Blueprint, redirect, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_login import UserMixin, login_user
from locust import events
from locust.env import Environment

logger = logging.getLogger(__name__)

USERNAME_ENV = "LOCUST_WEB_USERNAME"
PASSWORD_ENV = "LOCUST_WEB_PASSWORD"
DEFAULT_USERNAME = "locust"


class WebUser(UserMixin):
    def __init__(self, username: str) -> None:
        self.id = username


class Account:
    """The one account, compared in constant time (both fields, always, so timing tells nothing)."""

    def __init__(self, username: str, password: str) -> None:
        self.username, self.password = username, password

    def matches(self, username: str | None, password: str | None) -> bool:
        same_user = hmac.compare_digest((username or "").encode(), self.username.encode())
        same_password = hmac.compare_digest((password or "").encode(), self.password.encode())
        return same_user and same_password


def configure(web_ui: Any, account: Account, base: str = "") -> None:
    """Flask-Login for `account` on Locust's web UI: the login form's callback and HTTP Basic."""
    web_ui.app.config["SECRET_KEY"] = secrets.token_hex(32)
    manager = web_ui.login_manager
    manager.user_loader(lambda user_id: WebUser(user_id) if user_id == account.username else None)

    @manager.request_loader
    def basic_auth(req: Any) -> WebUser | None:
        auth = req.authorization
        if auth is not None and auth.type == "basic" and account.matches(auth.username, auth.password):
            return WebUser(account.username)
        return None

    auth = Blueprint("loadlab_webauth", __name__, url_prefix=base or None)

    @auth.route("/login_submit", methods=["POST"])
    def login_submit() -> ResponseReturnValue:
        if account.matches(request.form.get("username"), request.form.get("password")):
            login_user(WebUser(account.username))
            return redirect(url_for("locust.index"))
        session["auth_error"] = "Invalid username or password"
        return redirect(url_for("locust.login"))

    web_ui.app.register_blueprint(auth)
    web_ui.auth_args = {**web_ui.auth_args, "username_password_callback": f"{base}/login_submit"}


@events.init.add_listener
def _on_init(environment: Environment, web_ui: Any = None, **_: Any) -> None:
    options = environment.parsed_options
    if web_ui is None or options is None or not getattr(options, "web_login", False):
        return
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        logger.error("--web-login: set %s to the password the web UI should ask for (and %s, default %r, "
                     "to its username)", PASSWORD_ENV, USERNAME_ENV, DEFAULT_USERNAME)
        sys.exit(1)
    username = os.environ.get(USERNAME_ENV) or DEFAULT_USERNAME
    configure(web_ui, Account(username, password), getattr(options, "web_base_path", None) or "")
    logger.info("web login: one account, %r (from %s and %s); HTTP Basic works too", username, USERNAME_ENV,
                PASSWORD_ENV)
