"""Property-based fuzzing of both endpoints: whatever arrives, the answer is never a 5xx, and
every error answer has the JSON shape {"error", "message", "field"}."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import ERROR_KEYS, make_app

ENDPOINTS = ["/client_registeration", "/client_login"]
FIELDS = ["username", "email", "password"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
# Objects shaped like real requests (the interesting part is the values), plus the odd extra key.
field_values = st.one_of(
    st.text(max_size=300),
    st.from_regex(r"[A-Za-z0-9_.\-]{0,70}", fullmatch=True),
    st.emails().map(str),
    json_values,
)
request_objects = st.dictionaries(st.sampled_from(FIELDS + ["extra"]), field_values, max_size=4)
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                 "application/x-www-form-urlencoded", "", "application/json; charset=latin-1"])

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("fuzz"), MAX_CONTENT_LENGTH=4096).test_client()


def check(response) -> None:
    assert response.status_code < 500, response.data[:300]
    body = response.get_json(silent=True)
    assert isinstance(body, dict), response.data[:300]
    if response.status_code >= 400:
        assert set(body) == ERROR_KEYS, body
        assert isinstance(body["error"], str) and isinstance(body["message"], str)
        assert body["field"] is None or body["field"] in FIELDS, body


@pytest.mark.parametrize("path", ENDPOINTS)
@FUZZ
@given(body=request_objects)
def test_fuzzed_json_objects_never_cause_5xx(fuzz_client, path, body):
    response = fuzz_client.post(path, json=body)
    check(response)
    if response.status_code in (200, 201):
        assert path == "/client_login" or set(response.get_json()) == {"id", "username"}


@pytest.mark.parametrize("path", ENDPOINTS)
@FUZZ
@given(body=json_values)
def test_fuzzed_json_documents_never_cause_5xx(fuzz_client, path, body):
    check(fuzz_client.post(path, data=json.dumps(body), content_type="application/json"))


@pytest.mark.parametrize("path", ENDPOINTS)
@FUZZ
@given(data=st.binary(max_size=6000), content_type=content_types)
def test_fuzzed_raw_bytes_never_cause_5xx(fuzz_client, path, data, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    check(fuzz_client.post(path, data=data, headers=headers))
