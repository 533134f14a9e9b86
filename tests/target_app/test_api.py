"""The API's answers for well-formed requests: registration, login, tokens, health, admin cleanup."""

from __future__ import annotations

import sqlite3
import time

import itsdangerous
import pytest

from target_app import auth, create_app
from target_app.config import ConfigError

from .conftest import ADMIN_TOKEN, assert_error_shape, make_app


def test_registration_is_201_with_id_and_username(api):
    response = api.register("alice")
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"id", "username"}
    assert body["username"] == "alice" and isinstance(body["id"], int)


def test_password_is_stored_only_as_a_salted_hash(app, api):
    api.register("alice", password="correct horse")
    api.register("bob", password="correct horse")
    with sqlite3.connect(app.config["DATABASE"]) as conn:
        hashes = [row[0] for row in conn.execute("SELECT password_hash FROM users")]
    assert all(h.startswith("scrypt:1024:8:1$") and "correct horse" not in h for h in hashes)
    assert hashes[0] != hashes[1]  # same password, different salt


def test_default_hash_profile_is_the_slow_one(tmp_path):
    app = make_app(tmp_path, HASH_PROFILE="default")
    assert app.config["PASSWORD_HASH_METHOD"] == "scrypt:16384:8:1"


def test_unknown_hash_profile_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown hash profile 'fast'"):
        make_app(tmp_path, HASH_PROFILE="fast")


def test_duplicate_registration_is_409(api):
    assert api.register("alice").status_code == 201
    assert_error_shape(api.register("alice", email="other@example.com"), 409, "duplicate", "username")


def test_duplicate_username_differing_only_in_case_is_409(api):
    api.register("alice")
    assert_error_shape(api.register("ALICE", email="other@example.com"), 409, "duplicate", "username")


def test_duplicate_email_is_409(api):
    api.register("alice", email="shared@example.com")
    assert_error_shape(api.register("bob", email="Shared@Example.com"), 409, "duplicate", "email")


def test_login_is_200_with_signed_expiring_token(app, api):
    user_id = api.register("alice").get_json()["id"]
    response = api.login("alice")
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"token", "expires_in"} and body["expires_in"] == 3600
    with app.app_context():
        assert auth.user_id_from_token(body["token"]) == user_id
        # One signature character changed, well inside it (the last one carries padding bits, and a
        # fixed "xx" ending matched the real one by chance in a CI run: 1 in 1024 or so).
        token = body["token"]
        tampered = token[:-5] + ("A" if token[-5] != "A" else "B") + token[-4:]
        assert auth.user_id_from_token(tampered) is None


def test_login_token_expires(app, api, monkeypatch):
    api.register("alice")
    real_time = time.time
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: real_time() - 3601)
    token = api.login("alice").get_json()["token"]  # issued an hour and a second ago
    monkeypatch.setattr(itsdangerous.timed.time, "time", real_time)
    with app.app_context():
        assert auth.user_id_from_token(token) is None


def test_login_accepts_email_in_place_of_username(api):
    api.register("alice", email="alice@example.org")
    assert api.login("alice@example.org").status_code == 200


def test_wrong_password_and_unknown_user_get_the_same_401(api):
    api.register("alice")
    wrong_password = api.login("alice", password="wrong password")
    unknown_user = api.login("nobody", password="wrong password")
    assert_error_shape(wrong_password, 401, "invalid_credentials", None)
    assert wrong_password.status_code == unknown_user.status_code
    assert wrong_password.data == unknown_user.data


def test_unknown_user_login_still_checks_a_hash(api, monkeypatch):
    # The dummy check is what keeps response time from revealing which usernames exist.
    checked = []
    real_check = auth.check_password_hash
    monkeypatch.setattr(auth, "check_password_hash", lambda h, p: checked.append(h) or real_check(h, p))
    api.login("nobody", password="whatever pw")
    assert len(checked) == 1 and checked[0].startswith("scrypt:1024:8:1$")


def test_healthz_reports_database_reachable(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["database"] == "ok"


def test_healthz_reports_unreachable_database_as_503(app, client):
    class BrokenStorage:
        def __init__(self, dsn):
            raise sqlite3.OperationalError("disk I/O error")

    app.config["STORAGE_CLASS"] = BrokenStorage
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["database"] == "unreachable"


def test_openapi_document_is_served(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.get_json()["openapi"].startswith("3.")


def test_openapi_document_describes_every_route(admin_app):
    documented = admin_app.test_client().get("/openapi.json").get_json()["paths"]
    routes = {rule.rule for rule in admin_app.url_map.iter_rules() if rule.endpoint != "static"}
    assert routes | {"/metrics"} == set(documented)


def test_admin_endpoint_is_404_when_no_token_is_configured(api, client):
    api.register("lt_1")
    response = client.delete("/admin/users?prefix=lt_", headers={"X-Admin-Token": ""})
    assert_error_shape(response, 404, "not_found")
    assert api.login("lt_1").status_code == 200


@pytest.mark.parametrize("headers", [{}, {"X-Admin-Token": "wrong"}, {"X-Admin-Token": ADMIN_TOKEN + "x"}])
def test_admin_endpoint_without_the_right_token_looks_like_an_unknown_path(admin_app, headers):
    client = admin_app.test_client()
    response = client.delete("/admin/users?prefix=lt_", headers=headers)
    assert response.status_code == 404
    assert response.data == client.delete("/no/such/path").data


def test_admin_deletes_only_users_with_the_prefix(admin_app):
    client = admin_app.test_client()
    for name in ("lt_a_1", "lt_a_2", "ltxa_3", "alice"):  # "_" must not act as a wildcard
        client.post("/client_registeration", json={"username": name, "email": f"{name}@example.com",
                                                   "password": "correct horse"})
    response = client.delete("/admin/users?prefix=lt_a_", headers={"X-Admin-Token": ADMIN_TOKEN})
    assert response.status_code == 200
    assert response.get_json() == {"deleted": 2, "prefix": "lt_a_"}
    with sqlite3.connect(admin_app.config["DATABASE"]) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT username FROM users")) == ["alice", "ltxa_3"]


@pytest.mark.parametrize("query", ["", "?prefix=", "?prefix=a%20b"])
def test_admin_refuses_a_missing_or_invalid_prefix(admin_app, query):
    response = admin_app.test_client().delete(f"/admin/users{query}", headers={"X-Admin-Token": ADMIN_TOKEN})
    assert_error_shape(response, 400, field="prefix")


def test_admin_token_comes_from_lab_admin_token_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_ADMIN_TOKEN", "from-env")
    app = create_app({"DATABASE": str(tmp_path / "u.db"), "HASH_PROFILE": "lab", "METRICS": False})
    response = app.test_client().delete("/admin/users?prefix=x", headers={"X-Admin-Token": "from-env"})
    assert response.status_code == 200


def test_app_without_metrics_has_no_metrics_endpoint(tmp_path):
    app = make_app(tmp_path, METRICS=False)
    client = app.test_client()
    assert client.post("/client_registeration", json={"username": "alice", "email": "a@example.com",
                                                      "password": "correct horse"}).status_code == 201
    assert client.get("/metrics").status_code == 404
