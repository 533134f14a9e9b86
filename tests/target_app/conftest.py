"""Fixtures for the target API tests: a fresh app (temporary SQLite file, cheap `lab` hash,
its own metrics registry) and a test client wrapped in small helpers."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry

from target_app import create_app

ERROR_KEYS = {"error", "message", "field"}
ADMIN_TOKEN = "s3cret-admin-token"


def make_app(tmp_path, **overrides: Any) -> Flask:
    config = {
        "DATABASE": str(tmp_path / "users.db"),
        "HASH_PROFILE": "lab",
        "METRICS_REGISTRY": CollectorRegistry(),
        "ADMIN_TOKEN": None,
    }
    config.update(overrides)
    return create_app(config)


@pytest.fixture
def app(tmp_path) -> Flask:
    return make_app(tmp_path)


@pytest.fixture
def admin_app(tmp_path) -> Flask:
    return make_app(tmp_path, ADMIN_TOKEN=ADMIN_TOKEN)


@pytest.fixture
def client(app) -> FlaskClient:
    return app.test_client()


class Api:
    """The actions tests repeat, so tests read like sentences."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def register(self, username: str = "alice", email: str | None = None, password: str = "correct horse"):
        email = email if email is not None else f"{username}@example.com"
        return self.client.post("/client_registeration",
                                json={"username": username, "email": email, "password": password})

    def login(self, username: str = "alice", password: str = "correct horse"):
        return self.client.post("/client_login", json={"username": username, "password": password})


@pytest.fixture
def api(client) -> Api:
    return Api(client)


def registry_of(app: Flask) -> CollectorRegistry:
    return app.config["METRICS_REGISTRY"]


def sample(app: Flask, name: str, **labels: str) -> float:
    """Current value of one sample in the app's registry (0 if the series does not exist yet)."""
    return registry_of(app).get_sample_value(name, labels) or 0.0


def assert_error_shape(response, status: int | None = None, error: str | None = None,
                       field: Any = ...) -> dict[str, Any]:
    """The response is a JSON error {"error", "message", "field"} (with the given values)."""
    body = response.get_json(silent=True)
    assert response.mimetype == "application/json", response.data[:200]
    assert isinstance(body, dict) and set(body) == ERROR_KEYS, body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and body["message"]
    assert body["field"] is None or isinstance(body["field"], str)
    if status is not None:
        assert response.status_code == status, body
    if error is not None:
        assert body["error"] == error, body
    if field is not ...:
        assert body["field"] == field, body
    return body
