"""Settings: defaults from the spec and loadlab/contract/thresholds.py, env overrides, clear errors."""

from __future__ import annotations

import importlib

import pytest

import locust_tests.config.test_config as test_config
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS

NAMES = ["HOST", "MIN_WAIT_TIME", "MAX_WAIT_TIME", "USERS_COUNT", "LOGIN_USERS", "REGISTRATION_ENDPOINT",
         "LOGIN_ENDPOINT", "SLO_P95_MS", "SLO_ERROR_RATIO", "STEP_TRANSIENT_FRACTION",
         "REGISTRATION_BODY", "LOGIN_BODY", "REGISTRATION_OK_STATUS", "REGISTRATION_EXISTS_STATUS",
         "LOGIN_OK_STATUS", "LOGIN_TOKEN_FIELD"]


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


def test_defaults_are_the_specs_and_the_shared_thresholds(reload_config):
    cfg = reload_config()
    assert (cfg.HOST, cfg.MIN_WAIT_TIME, cfg.MAX_WAIT_TIME, cfg.USERS_COUNT) == ("http://localhost:5000", 1000, 3000, 1000)
    assert (cfg.REGISTRATION_ENDPOINT, cfg.LOGIN_ENDPOINT) == ("/client_registeration", "/client_login")
    assert cfg.SLO_P95_MS == DEFAULT_THRESHOLDS.latency_p95_ms
    assert cfg.SLO_ERROR_RATIO == DEFAULT_THRESHOLDS.error_ratio


def test_every_setting_follows_its_environment_variable(reload_config):
    cfg = reload_config(HOST="http://127.0.0.1:8000/", MIN_WAIT_TIME="10", MAX_WAIT_TIME="20", USERS_COUNT="7",
                        LOGIN_ENDPOINT="/v2/login", SLO_P95_MS="250", SLO_ERROR_RATIO="0.05")
    assert (cfg.HOST, cfg.MIN_WAIT_TIME, cfg.MAX_WAIT_TIME, cfg.USERS_COUNT) == ("http://127.0.0.1:8000", 10, 20, 7)
    assert (cfg.LOGIN_ENDPOINT, cfg.SLO_P95_MS, cfg.SLO_ERROR_RATIO) == ("/v2/login", 250.0, 0.05)


@pytest.mark.parametrize(("name", "value"), [
    ("HOST", "localhost:5000"), ("MIN_WAIT_TIME", "1s"), ("MAX_WAIT_TIME", "-1"), ("USERS_COUNT", "0"),
    ("LOGIN_ENDPOINT", "client_login"), ("SLO_ERROR_RATIO", "2"),
])
def test_a_bad_value_is_one_clear_error_naming_the_variable(reload_config, name, value):
    with pytest.raises(SystemExit, match=name):
        reload_config(**{name: value})


def test_max_wait_below_min_wait_is_refused(reload_config):
    with pytest.raises(SystemExit, match="MAX_WAIT_TIME"):
        reload_config(MIN_WAIT_TIME="3000", MAX_WAIT_TIME="1000")
