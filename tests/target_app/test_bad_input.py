"""Every class of bad input gets a 4xx JSON error {"error", "message", "field"}, never a 500."""

from __future__ import annotations

import pytest

from .conftest import assert_error_shape, make_app, sample

ENDPOINTS = ["/client_registeration", "/client_login"]
VALID = {
    "/client_registeration": {"username": "alice", "email": "alice@example.com", "password": "correct horse"},
    "/client_login": {"username": "alice", "password": "correct horse"},
}


def post_raw(client, path, data, content_type="application/json"):
    return client.post(path, data=data, headers={"Content-Type": content_type} if content_type else {})


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("body", [b"{", b'{"username": "alice",}', b"not json", b"", b"[" * 5000 + b"]" * 5000])
def test_malformed_json_is_400(client, path, body):
    assert_error_shape(post_raw(client, path, body), 400, "malformed_json", None)


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("body", [b"[]", b'"alice"', b"42", b"null"])
def test_json_that_is_not_an_object_is_400(client, path, body):
    assert_error_shape(post_raw(client, path, body), 400, "invalid_body", None)


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None])
def test_wrong_content_type_is_415(client, path, content_type):
    assert_error_shape(post_raw(client, path, b'{"username": "alice"}', content_type), 415, "unsupported_media_type")


def test_json_with_charset_parameter_is_accepted(client):
    response = post_raw(client, "/client_registeration",
                        b'{"username": "alice", "email": "a@example.com", "password": "correct horse"}',
                        "application/json; charset=utf-8")
    assert response.status_code == 201


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("body", [b'{"username": "al\xffice", "password": "x"}', b"\xfe\xff\x00{", b"\xc3\x28"])
def test_non_utf8_body_is_400(client, path, body):
    assert_error_shape(post_raw(client, path, body), 400, "invalid_encoding")


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("field", ["username", "password"])
def test_missing_field_is_400_naming_it(client, path, field):
    body = {k: v for k, v in VALID[path].items() if k != field}
    assert_error_shape(client.post(path, json=body), 400, "missing_field", field)


def test_missing_email_is_400_naming_it(client):
    body = {"username": "alice", "password": "correct horse"}
    assert_error_shape(client.post("/client_registeration", json=body), 400, "missing_field", "email")


@pytest.mark.parametrize("path", ENDPOINTS)
def test_null_field_counts_as_missing(client, path):
    body = {**VALID[path], "username": None}
    assert_error_shape(client.post(path, json=body), 400, "missing_field", "username")


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("value", [42, 4.2, True, ["alice"], {"name": "alice"}])
@pytest.mark.parametrize("field", ["username", "password"])
def test_wrong_typed_field_is_400(client, path, field, value):
    body = {**VALID[path], field: value}
    assert_error_shape(client.post(path, json=body), 400, "invalid_type", field)


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("field", ["username", "password"])
def test_empty_string_is_400(client, path, field):
    body = {**VALID[path], field: ""}
    assert_error_shape(client.post(path, json=body), 400, "empty_field", field)


@pytest.mark.parametrize(("field", "value"), [
    ("username", "a" * 65),
    ("email", "a" * 245 + "@example.com"),  # 257 characters
    ("password", "p" * 129),
])
def test_over_long_registration_field_is_400(client, field, value):
    body = {**VALID["/client_registeration"], field: value}
    assert_error_shape(client.post("/client_registeration", json=body), 400, "too_long", field)


@pytest.mark.parametrize(("field", "value"), [("username", "u" * 255), ("password", "p" * 129)])
def test_over_long_login_field_is_400(client, field, value):
    body = {**VALID["/client_login"], field: value}
    assert_error_shape(client.post("/client_login", json=body), 400, "too_long", field)


@pytest.mark.parametrize(("field", "value"), [("username", "ab"), ("password", "short")])
def test_too_short_registration_field_is_400(client, field, value):
    body = {**VALID["/client_registeration"], field: value}
    assert_error_shape(client.post("/client_registeration", json=body), 400, "too_short", field)


@pytest.mark.parametrize("username", ["alice smith", "alice@home", "ålice", "a/b", "al\x00ice", "<script>"])
def test_username_with_disallowed_characters_is_400(client, username):
    body = {**VALID["/client_registeration"], "username": username}
    assert_error_shape(client.post("/client_registeration", json=body), 400, "invalid_username", "username")


@pytest.mark.parametrize("username", ["lt_20250101T1200_w3_000123", "john.smith", "a-b_c.d", "X" * 64, "abc"])
def test_username_rules_accept_generated_names(client, username):
    body = {**VALID["/client_registeration"], "username": username}
    assert client.post("/client_registeration", json=body).status_code == 201


@pytest.mark.parametrize("email", ["alice", "alice@", "@example.com", "alice@example", "al ice@example.com",
                                   "alice@@example.com", "alice@exa_mple.com", "alice@-example.com",
                                   "a" * 65 + "@example.com", "alice@example.com\n", "älice@example.com"])
def test_invalid_email_is_400(client, email):
    body = {**VALID["/client_registeration"], "email": email}
    assert_error_shape(client.post("/client_registeration", json=body), 400, "invalid_email", "email")


@pytest.mark.parametrize("email", ["alice@example.com", "a.b+tag@mail.example.co.uk", "x_y-z@sub-domain.example.org"])
def test_valid_email_is_accepted(client, email):
    body = {**VALID["/client_registeration"], "email": email}
    assert client.post("/client_registeration", json=body).status_code == 201


@pytest.mark.parametrize("path", ENDPOINTS)
def test_lone_surrogate_in_password_is_400(client, path):
    body = b'{"username": "alice", "email": "alice@example.com", "password": "abc\\ud800defgh"}'
    assert_error_shape(post_raw(client, path, body), 400, "invalid_encoding", "password")


@pytest.mark.parametrize("path", ENDPOINTS)
def test_body_over_the_limit_is_413(tmp_path, path):
    client = make_app(tmp_path, MAX_CONTENT_LENGTH=1024).test_client()
    body = {**VALID[path], "padding": "x" * 2000}
    assert_error_shape(client.post(path, json=body), 413, "payload_too_large")


def test_unknown_path_is_404_json(client):
    assert_error_shape(client.get("/client_registration"), 404, "not_found", None)  # the "correct" spelling


@pytest.mark.parametrize(("method", "path"), [("get", "/client_registeration"), ("put", "/client_login"),
                                              ("post", "/healthz"), ("delete", "/openapi.json")])
def test_wrong_method_is_405_json_with_allow_header(client, method, path):
    response = getattr(client, method)(path)
    assert_error_shape(response, 405, "method_not_allowed", None)
    assert response.headers["Allow"]


def test_invalid_inputs_are_counted_as_invalid_outcomes(app, client):
    client.post("/client_registeration", data=b"{", content_type="application/json")
    client.post("/client_registeration", json={"username": 1})
    client.post("/client_login", data=b"x", content_type="text/plain")
    assert sample(app, "app_registrations_total", outcome="invalid") == 2
    assert sample(app, "app_logins_total", outcome="invalid") == 1
    assert sample(app, "app_logins_total", outcome="failure") == 0
