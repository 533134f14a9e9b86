"""Runs against an API of your own that the suite cannot clean up: it answers the registration of an
existing user with 400 (not 409) and has no admin endpoint. A re-run finds the accounts the first
run left once REGISTRATION_EXISTS_STATUS says how the API answers them, and cleanup with a token set
ends in a note naming the accounts' prefix, never a failure."""

from __future__ import annotations

import logging
import secrets
import threading

import pytest
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from locust_tests.plugins.cleanup import after_run
from locust_tests.plugins.seeding import exists_hint, register_users
from locust_tests.plugins.testdata import DATA_PREFIX, load_users
from tests.helpers import REPO_ROOT
from tests.locust_tests.conftest import locust_args, run_locust

USERS = load_users(REPO_ROOT / "locust_tests" / "data" / "test_users.json", limit=3)  # what LOGIN_USERS=3 seeds


def duplicate_400_api() -> Flask:
    """The bundled target's paths and bodies, but a taken username is 400, and no /admin/users."""
    app = Flask("duplicate_400_api")
    accounts: dict[str, str] = {}
    lock = threading.Lock()

    @app.post("/client_registeration")
    def register():
        body = request.get_json(silent=True) or {}
        with lock:
            if body.get("username") in accounts:
                return jsonify(error="username_taken"), 400
            accounts[body["username"]] = body["password"]
        return jsonify(id=len(accounts)), 201

    @app.post("/client_login")
    def login():
        body = request.get_json(silent=True) or {}
        if accounts.get(body.get("username")) != body.get("password"):
            return jsonify(error="invalid_credentials"), 401
        return jsonify(token=secrets.token_hex(8))

    return app


@pytest.fixture
def api():
    """A fresh API per test on a free port, served from a thread; shut down when the test ends."""
    server = make_server("127.0.0.1", 0, duplicate_400_api(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


def test_seeding_counts_the_apis_own_exists_status_as_there(api):
    assert (register_users(api, USERS).created, register_users(api, USERS, exists={400}).existing) == (3, 3)
    again = register_users(api, USERS)  # the default, 409: the 400s are failures, and the log says what to set
    assert (again.created, again.existing, again.failed, again.first_status) == (0, 0, 3, 400)
    assert exists_hint(400, {409}) == (" (if 400 is how your API answers a user that already exists, add it to "
                                       "REGISTRATION_EXISTS_STATUS=409)")
    assert exists_hint(400, {400, 409}) == exists_hint(500, {409}) == exists_hint(0, {409}) == ""


def test_cleanup_with_a_token_but_no_admin_endpoint_is_a_note_naming_the_prefix(api):
    outcome = after_run(api, DATA_PREFIX, token="a-token")  # DELETE /admin/users answers 404 here
    assert outcome.level == logging.INFO and outcome.note, outcome  # not a warning: cleanup is optional
    assert outcome.line == (f"cleanup: note: the test accounts stay on {api} (it has no admin endpoint: DELETE "
                            f"/admin/users answered 404; set ADMIN_USERS_ENDPOINT if yours lives elsewhere); their "
                            f"usernames start with {DATA_PREFIX}, so you can remove them by that prefix")
    without_token = after_run(api, DATA_PREFIX, token="")
    assert without_token.note and "LAB_ADMIN_TOKEN is not set" in without_token.line
    assert f"their usernames start with {DATA_PREFIX}," in without_token.line


@pytest.mark.timeout(120)
def test_a_rerun_of_the_login_scenario_finds_the_accounts_the_first_left(api, launch):
    def login_run(name: str, **env: str):
        proc = launch(locust_args("login_test", "--headless", "--host", api, "--users", "2", "--spawn-rate", "2",
                                  "--run-time", "2s", "--exporter-port", "0", "--only-summary"), name,
                      env={"LOGIN_USERS": "3", "MIN_WAIT_TIME": "100", "MAX_WAIT_TIME": "200",
                           "LAB_ADMIN_TOKEN": "a-token", **env})
        return run_locust(proc, timeout=60)

    first = login_run("first", REGISTRATION_EXISTS_STATUS="400")
    assert first.returncode == 0, first.log[-3000:]
    assert "seeding: 3 test users ready" in first.log
    second = login_run("second", REGISTRATION_EXISTS_STATUS="400")
    assert second.returncode == 0, second.log[-3000:]
    assert "(0 created, 3 already there)" in second.log and "could not be created" not in second.log
    # The token is set, but the API has no admin endpoint: one note, with the prefix, at INFO.
    notes = [line for line in second.log.splitlines() if "cleanup:" in line]
    assert len(notes) == 1 and "/INFO/" in notes[0], notes
    assert "the test accounts stay on" in notes[0] and f"their usernames start with {DATA_PREFIX}" in notes[0]

    # Without the setting the preflight's own seeding meets the 400 and says which setting to check.
    third = login_run("third")
    assert third.returncode == 3, third.log[-3000:]
    assert ("answered HTTP 400 (username_taken), expected 201 (or 409 for a user that exists: "
            "REGISTRATION_EXISTS_STATUS)") in third.log
