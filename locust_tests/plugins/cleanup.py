"""Cleanup: delete the users a run created, through the target's admin endpoint.

    DELETE {host}/admin/users?prefix=P   with header X-Admin-Token: $LAB_ADMIN_TOKEN

The endpoint only exists when the target runs with LAB_ADMIN_TOKEN set. In a locustfile,
`cleanup.remove_after_test(prefix)` deletes the run's users when the test stops (and once more
at exit, for requests that were still in flight) if LAB_ADMIN_TOKEN is set in Locust's
environment; `--keep-users` (env LOCUST_KEEP_USERS=true) keeps them. Cleanup is optional: without
the token, or against an API without the admin endpoint (404), one note says that the test
accounts stay and names their prefix; the run is not failed for it. By hand:

    LAB_ADMIN_TOKEN=... python -m locust_tests.plugins.cleanup --host http://127.0.0.1:5000 --prefix lt_

`delete_users`, `after_run` (what the listeners do and say) and the CLI do not import Locust.
"""

from __future__ import annotations

import argparse
import logging
import os
import urllib.parse
from collections.abc import Callable
from typing import Any, NamedTuple

from .httpclient import call
from .testdata import PREFIX, USERNAME_RE

ADMIN_ENDPOINT = "/admin/users"
TOKEN_ENV = "LAB_ADMIN_TOKEN"

logger = logging.getLogger(__name__)


class CleanupError(Exception):
    """Cleanup could not be done; the message says why and what to do."""


class NoAdminEndpoint(CleanupError):
    """The API answered 404 to the admin endpoint: it has none (or hides it from a wrong token)."""


def delete_users(host: str, prefix: str, token: str, endpoint: str = ADMIN_ENDPOINT, timeout: float = 60.0) -> int:
    """Delete the target's users whose username starts with `prefix`; return how many."""
    # A prefix must name a set of users, never "everyone": a valid username (3-64 characters) itself.
    if not USERNAME_RE.fullmatch(prefix):
        raise CleanupError(f"prefix {prefix!r} is not allowed: use 3-64 letters, digits, '_', '.', '-'")
    if not token:
        raise CleanupError(f"no admin token: set {TOKEN_ENV} to the token the target was started with")
    url = f"{host.rstrip('/')}{endpoint}?{urllib.parse.urlencode({'prefix': prefix})}"
    try:
        status, body = call("DELETE", url, headers={"X-Admin-Token": token}, timeout=timeout)
    except OSError as exc:
        raise CleanupError(f"cannot reach {host} ({getattr(exc, 'reason', exc)}): is the target running?") from None
    if status == 200 and isinstance(body, dict) and isinstance(body.get("deleted"), int):
        return body["deleted"]
    if status == 404:
        # The target answers 404 both without the endpoint and for a wrong token (it hides the endpoint).
        raise NoAdminEndpoint(f"{host} answered 404 to DELETE {endpoint}: start the target with {TOKEN_ENV} set, "
                              f"and set the same {TOKEN_ENV} here")
    if status in (401, 403):
        raise CleanupError(f"{host} rejected the admin token: {TOKEN_ENV} must equal the target's")
    raise CleanupError(f"{host} answered {status} to DELETE {endpoint} (expected 200 with a \"deleted\" count)")


class Outcome(NamedTuple):
    level: int  # logging.INFO, or WARNING when cleanup was wanted and failed
    line: str  # "" when there is nothing to say
    note: bool  # the accounts stay by design: said once per run


def _stay(host: str, prefix: str, why: str) -> Outcome:
    # A note, not a failure: cleanup is optional, and an API of your own rarely has the bundled
    # target's admin endpoint.
    return Outcome(logging.INFO, f"cleanup: note: the test accounts stay on {host} ({why}); their usernames start "
                                 f"with {prefix}, so you can remove them by that prefix", True)


def after_run(host: str, prefix: str, token: str, endpoint: str = ADMIN_ENDPOINT) -> Outcome:
    """Delete the run's users (those starting with `prefix`) if `token` is set, and what to log about it."""
    if not token:
        return _stay(host, prefix, f"{TOKEN_ENV} is not set, so they are not deleted")
    try:
        deleted = delete_users(host, prefix, token, endpoint)
    except NoAdminEndpoint:
        return _stay(host, prefix, f"it has no admin endpoint: DELETE {endpoint} answered 404; "
                                   f"set ADMIN_USERS_ENDPOINT if yours lives elsewhere")
    except CleanupError as exc:
        return Outcome(logging.WARNING, f"cleanup: users starting with {prefix} were not deleted: {exc}", False)
    line = f"cleanup: deleted {deleted} users starting with {prefix} (--keep-users keeps them)" if deleted else ""
    return Outcome(logging.INFO, line, False)


_option_added = False


def remove_after_test(prefix: str | Callable[[Any], str]) -> None:
    """Register listeners that delete users starting with `prefix` (or prefix(environment)) when
    the test stops and at exit, on the master/standalone process, unless --keep-users."""
    global _option_added
    from locust import events

    from locust_tests.config import test_config

    from .roles import is_coordinator, target_host

    if not _option_added:  # two locustfiles in one run may both ask for cleanup
        _option_added = True

        @events.init_command_line_parser.add_listener
        def _add_arguments(parser: Any) -> None:
            parser.add_argument("--keep-users", action="store_true", default=False, env_var="LOCUST_KEEP_USERS",
                                include_in_web_ui=False,
                                help=f"Keep the users this run created (by default they are deleted at the end "
                                     f"when {TOKEN_ENV} is set)")

    noted: set[str] = set()

    def _remove(environment: Any, **_: Any) -> None:
        if not is_coordinator(environment):
            return
        options = environment.parsed_options
        if options is not None and getattr(options, "keep_users", False):
            return
        token = os.environ.get(TOKEN_ENV, "")
        host = target_host(environment)
        if host is None:
            return
        wanted = prefix(environment) if callable(prefix) else prefix
        outcome = after_run(host, wanted, token, test_config.ADMIN_USERS_ENDPOINT)
        if outcome.note:  # once per run: this runs at test stop and again at exit
            if outcome.line in noted:
                return
            noted.add(outcome.line)
        if outcome.line:
            logger.log(outcome.level, "%s", outcome.line)

    events.test_stop.add_listener(_remove)
    events.quitting.add_listener(_remove)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m locust_tests.plugins.cleanup",
                                     description="Delete test users from the target through its admin endpoint.")
    parser.add_argument("--host", required=True, help="the target, e.g. http://127.0.0.1:5000")
    parser.add_argument("--prefix", default=PREFIX,
                        help=f"delete users whose username starts with this (default {PREFIX!r}: every user "
                             f"the Locust suite created)")
    parser.add_argument("--endpoint", default=ADMIN_ENDPOINT, help=f"admin path (default {ADMIN_ENDPOINT})")
    args = parser.parse_args(argv)
    token = os.environ.get(TOKEN_ENV, "")
    try:
        deleted = delete_users(args.host, args.prefix, token, args.endpoint)
    except CleanupError as exc:
        print(f"cleanup: {exc}")
        return 1
    print(f"cleanup: deleted {deleted} users starting with {args.prefix!r} from {args.host}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
