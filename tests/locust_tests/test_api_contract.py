"""The API's request/response contract as settings: body templates, success statuses, the token path,
each validated with one clear error, and applied the same way by the load's checks and the preflight."""

from __future__ import annotations

import importlib
import json
import subprocess

import pytest

import locust_tests.config.test_config as test_config
from locust_tests.config.api_contract import (
    ContractError,
    field_value,
    parse_body,
    parse_field,
    parse_statuses,
    settings_problem,
)
from locust_tests.plugins.checks import expect_registered, expect_token, login_problem, registration_problem
from locust_tests.plugins.testdata import display_name, request_fields
from tests.helpers import PYTHON, REPO_ROOT

NAMES = ["REGISTRATION_BODY", "LOGIN_BODY", "REGISTRATION_OK_STATUS", "REGISTRATION_EXISTS_STATUS", "LOGIN_OK_STATUS",
         "LOGIN_TOKEN_FIELD"]
USER = {"username": "lt_data_00001_x", "email": "lt_data_00001_x@example.com", "password": 'p"w{d}\\', "name": "Ann Lee"}


@pytest.fixture
def reload_config(monkeypatch):
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)

    def _reload(**env: str):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return importlib.reload(test_config)

    yield _reload
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    importlib.reload(test_config)


def test_defaults_are_todays_bodies_and_statuses(reload_config):
    cfg = reload_config()
    assert cfg.REGISTRATION_BODY.render(request_fields(USER)) == {
        "username": USER["username"], "email": USER["email"], "password": USER["password"]}
    assert cfg.LOGIN_BODY.render(request_fields(USER)) == {"username": USER["username"], "password": USER["password"]}
    assert (cfg.REGISTRATION_OK_STATUS, cfg.LOGIN_OK_STATUS, cfg.LOGIN_TOKEN_FIELD) == ({201}, {200}, "token")
    assert cfg.REGISTRATION_EXISTS_STATUS == {409}


def test_another_apis_contract_is_only_settings(reload_config):
    cfg = reload_config(
        REGISTRATION_BODY='{"account": {"login": "{username}", "mail": "{email}", "secret": "{password}", '
                          '"display_name": "Dr. {name}", "tags": ["load", "{username}"], "age": 30}}',
        LOGIN_BODY='{"login": "{username}", "secret": "{password}"}',
        REGISTRATION_OK_STATUS="200, 201", LOGIN_OK_STATUS="200", LOGIN_TOKEN_FIELD="data.access_token",
        REGISTRATION_EXISTS_STATUS="400,422")
    body = cfg.REGISTRATION_BODY.render(request_fields(USER))
    # Filled in after parsing: a password with a quote, braces and a backslash stays one exact string.
    assert body == {"account": {"login": USER["username"], "mail": USER["email"], "secret": USER["password"],
                                "display_name": "Dr. Ann Lee", "tags": ["load", USER["username"]], "age": 30}}
    assert json.loads(json.dumps(body)) == body
    assert (cfg.REGISTRATION_OK_STATUS, cfg.REGISTRATION_EXISTS_STATUS) == ({200, 201}, {400, 422})
    assert login_problem(200, {"data": {"access_token": "abc"}}, cfg.LOGIN_OK_STATUS, cfg.LOGIN_TOKEN_FIELD) is None
    assert login_problem(200, {"access_token": "abc"}, cfg.LOGIN_OK_STATUS, cfg.LOGIN_TOKEN_FIELD) == \
        "HTTP 200 without a token at data.access_token"


def test_an_empty_token_field_turns_the_token_check_off(reload_config):
    cfg = reload_config(LOGIN_TOKEN_FIELD="")
    assert cfg.LOGIN_TOKEN_FIELD == ""
    assert login_problem(200, None, cfg.LOGIN_OK_STATUS, cfg.LOGIN_TOKEN_FIELD) is None
    assert login_problem(401, None, cfg.LOGIN_OK_STATUS, cfg.LOGIN_TOKEN_FIELD) == "expected 200"


@pytest.mark.parametrize(("name", "value", "says"), [
    ("REGISTRATION_BODY", '{"username": {username}}', "not JSON"),
    ("REGISTRATION_BODY", '["{username}", "{password}"]', "a JSON object, not a JSON list"),
    ("LOGIN_BODY", '{"login": "{user}", "secret": "{password}"}', "unknown: {user}"),
    ("LOGIN_BODY", '{"login": "{username}"}', "uses {password}"),
    ("REGISTRATION_BODY", '{"secret": "{password}", "name": "{name}"}', "{username} or {email}"),
    ("REGISTRATION_OK_STATUS", "2OO", "'2OO' is not one"),
    ("LOGIN_OK_STATUS", "200,700", "'700' is not one"),
    ("LOGIN_OK_STATUS", " , ", "at least one status code"),
    ("LOGIN_TOKEN_FIELD", "data..token", "dotted JSON path"),
    ("REGISTRATION_EXISTS_STATUS", "duplicate", "'duplicate' is not one"),
    ("REGISTRATION_EXISTS_STATUS", "409,", "'' is not one"),
])
def test_a_bad_setting_is_one_clear_error_naming_the_variable(reload_config, name, value, says):
    with pytest.raises(SystemExit) as exc:
        reload_config(**{name: value})
    message = str(exc.value)
    assert message.startswith(f"environment variable {name}=") and "is not valid: expected" in message
    assert says in message and "\n" not in message
    # The lab checks the same settings before it starts anything, and says the same line.
    assert settings_problem({name: value}) == message


def test_the_lab_finds_no_problem_in_good_or_unset_settings():
    assert settings_problem({}) is None
    assert settings_problem({"LOGIN_TOKEN_FIELD": "", "REGISTRATION_OK_STATUS": "", "REGISTRATION_EXISTS_STATUS": "400, 409"}) is None


def test_the_contract_module_imports_no_locust():
    # The lab imports it in its own process: Locust would gevent-patch it.
    code = ("import sys, locust_tests.config.api_contract; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('locust', 'gevent')))")
    done = subprocess.run([PYTHON, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_parsers_directly():
    assert parse_statuses("204") == {204}
    assert parse_field(" tokens.0.value ") == "tokens.0.value"
    assert field_value({"tokens": [{"value": "t"}]}, "tokens.0.value") == "t"
    assert field_value({"tokens": []}, "tokens.0.value") is None
    with pytest.raises(ContractError):
        parse_body('{"email": "{email}"}')  # no {password}
    assert parse_body('{"email": "{email}", "pw": "{password}"}').placeholders == {"email", "password"}


class FakeResponse:
    """What a catch_response block hands the checks: a status, a JSON body, success()/failure()."""

    def __init__(self, status: int, body: object = None) -> None:
        self.status_code, self.body, self.outcome = status, body, None

    def json(self) -> object:
        if self.body is None:
            raise ValueError("no JSON")
        return self.body

    def success(self) -> None:
        self.outcome = "success"

    def failure(self, text: str) -> None:
        self.outcome = text


@pytest.mark.parametrize(("status", "body", "ok", "field", "outcome"), [
    (200, {"token": "t"}, {200}, "token", "success"),
    (200, {"token": ""}, {200}, "token", "login: HTTP 200 without a token in the body"),
    (201, {"access_token": "t"}, {200, 201}, "access_token", "success"),
    (200, {"token": "t"}, {200}, "access_token", "login: HTTP 200 without a token at access_token"),
    (401, {"error": "invalid_credentials"}, {200}, "token", "login: expected 200 with a token, got HTTP 401 (invalid_credentials)"),
    (302, None, {200, 201}, "", "login: expected 200 or 201, got HTTP 302"),
])
def test_the_login_check_applies_the_contract(status, body, ok, field, outcome):
    response = FakeResponse(status, body)
    expect_token(response, ok, field)
    assert response.outcome == outcome


def test_the_registration_check_applies_the_contract():
    ok = FakeResponse(200, {"user": {"id": 3}})
    expect_registered(ok, {200})
    assert ok.outcome == "success"
    taken = FakeResponse(409, {"error": "duplicate"})
    expect_registered(taken, {200, 201})
    assert taken.outcome == "registration: expected 200 or 201, got HTTP 409 (duplicate)"
    assert registration_problem(201, None, {201}) is None


def test_data_set_users_get_a_stable_display_name():
    fields = request_fields({k: USER[k] for k in ("username", "email", "password")})
    assert fields["name"] == display_name(USER["username"]) == request_fields({**USER, "name": ""})["name"]
    assert fields["name"] and fields["name"] != display_name("lt_data_00002_y")
    assert request_fields(USER)["name"] == "Ann Lee"
