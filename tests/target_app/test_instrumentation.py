"""instrument(app) in one process: the metric contract, bounded labels, and use on any Flask app."""

from __future__ import annotations

import time

from flask import Flask, abort
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from loadlab.instrument import UNMATCHED, instrument

from .conftest import sample


def families(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))}


def test_metrics_endpoint_has_the_contract_names_and_types(client):
    client.get("/healthz")
    found = families(client)
    assert found["http_requests"].type == "counter"
    assert found["http_request_duration_seconds"].type == "histogram"
    assert "http_requests_in_progress" not in found  # in flight = rate of the duration sum (Little's law)
    assert found["app_registrations"].type == "counter"
    assert found["app_logins"].type == "counter"
    buckets = {s.labels["le"] for s in found["http_request_duration_seconds"].samples if "le" in s.labels}
    assert {"0.1", "0.25", "0.5", "1.0", "2.5"} <= buckets


def test_requests_are_counted_by_method_matched_rule_and_status(app, api):
    api.register("alice")
    api.register("alice", email="x@example.com")
    api.login("alice")
    api.login("alice", password="nope nope")
    assert sample(app, "http_requests_total", method="POST", endpoint="/client_registeration", status="201") == 1
    assert sample(app, "http_requests_total", method="POST", endpoint="/client_registeration", status="409") == 1
    assert sample(app, "http_requests_total", method="POST", endpoint="/client_login", status="200") == 1
    assert sample(app, "http_requests_total", method="POST", endpoint="/client_login", status="401") == 1
    assert sample(app, "http_request_duration_seconds_count", method="POST", endpoint="/client_login") == 2


def test_outcomes_are_counted(app, api):
    api.register("alice")
    api.register("alice")
    api.register("al")
    api.login("alice")
    api.login("alice", password="wrong one")
    api.login("nobody")
    api.login("")
    assert [sample(app, "app_registrations_total", outcome=o) for o in ("created", "duplicate", "invalid")] == [1, 1, 1]
    assert [sample(app, "app_logins_total", outcome=o) for o in ("success", "failure", "invalid")] == [1, 2, 1]


def test_every_outcome_series_exists_before_the_first_event(client):
    found = families(client)
    assert {s.labels["outcome"] for s in found["app_registrations"].samples if s.name.endswith("_total")} == {
        "created", "duplicate", "invalid"}
    assert {s.labels["outcome"] for s in found["app_logins"].samples if s.name.endswith("_total")} == {
        "success", "failure", "invalid"}


def test_unknown_paths_share_one_endpoint_label(app, client):
    for i in range(20):
        client.get(f"/scan/{i}/wp-login.php")
    client.post("/healthz")  # 405 matched no rule either
    assert sample(app, "http_requests_total", method="GET", endpoint=UNMATCHED, status="404") == 20
    assert sample(app, "http_requests_total", method="POST", endpoint=UNMATCHED, status="405") == 1
    endpoints = {s.labels["endpoint"] for s in families(client)["http_requests"].samples}
    assert endpoints == {UNMATCHED}


def test_unusual_methods_are_labelled_other(app, client):
    client.open("/healthz", method="BREW")
    assert sample(app, "http_requests_total", method="other", endpoint=UNMATCHED, status="405") == 1


def test_no_personal_data_in_labels(client, api):
    api.register("alice_secret", email="alice.secret@example.com")
    api.login("alice_secret")
    text = client.get("/metrics").get_data(as_text=True)
    assert "alice" not in text and "example.com" not in text


def test_metrics_scrapes_are_not_counted(app, client):
    for _ in range(3):
        client.get("/metrics")
    client.get("/healthz")
    total = sum(s.value for s in families(client)["http_requests"].samples if s.name == "http_requests_total")
    assert total == 1


def test_a_request_is_timed_from_start_to_response(app, client):
    # The duration sum is what "requests in flight" is read from (its rate), so it must hold the
    # time the app spent, not a fraction of it.
    @app.get("/slow")
    def slow():
        time.sleep(0.05)
        return "ok"

    client.get("/slow")
    seconds = sample(app, "http_request_duration_seconds_sum", method="GET", endpoint="/slow")
    assert 0.05 <= seconds < 1.0


def test_instrument_works_on_any_flask_app_with_a_given_registry():
    registry = CollectorRegistry()
    app = Flask("users_own_app")
    instrument(app, registry)

    @app.get("/items/<int:item_id>")
    def item(item_id):
        if item_id == 0:
            abort(404)
        if item_id == 13:
            raise RuntimeError("boom")
        return {"id": item_id}

    client = app.test_client()
    for i in range(5):
        client.get(f"/items/{i}")
    assert client.get("/items/13").status_code == 500
    value = lambda status: registry.get_sample_value(  # noqa: E731
        "http_requests_total", {"method": "GET", "endpoint": "/items/<int:item_id>", "status": status})
    assert value("200") == 4 and value("404") == 1 and value("500") == 1
    assert registry.get_sample_value("http_request_duration_seconds_count",
                                      {"method": "GET", "endpoint": "/items/<int:item_id>"}) == 6  # the exception too
    assert b"http_requests_total" in client.get("/metrics").data


def test_instrument_uses_the_default_registry_when_none_is_given():
    app = Flask("default_registry_app")
    instrument(app)
    app.add_url_rule("/ping", "ping", lambda: "pong")
    before = REGISTRY.get_sample_value("http_requests_total", {"method": "GET", "endpoint": "/ping", "status": "200"}) or 0
    app.test_client().get("/ping")
    after = REGISTRY.get_sample_value("http_requests_total", {"method": "GET", "endpoint": "/ping", "status": "200"})
    assert after == before + 1
    assert b"process_cpu_seconds_total" in app.test_client().get("/metrics").data


def test_two_apps_on_one_registry_share_the_metrics_instead_of_failing():
    registry = CollectorRegistry()
    first, second = Flask("first"), Flask("second")
    assert instrument(first, registry) is instrument(second, registry)
    for app in (first, second):
        app.add_url_rule("/x", "x", lambda: "x")
        app.test_client().get("/x")
    assert registry.get_sample_value("http_requests_total", {"method": "GET", "endpoint": "/x", "status": "200"}) == 2


def test_the_rule_is_labelled_even_if_the_request_class_is_replaced_after_instrument():
    registry = CollectorRegistry()
    app = Flask("replaced_request_class")
    instrument(app, registry)

    class MyRequest(app.request_class):  # type: ignore[name-defined,misc]
        pass

    app.request_class = MyRequest
    app.add_url_rule("/users/<name>", "user", lambda name: name)

    @app.before_request
    def hide_private():  # as the target's admin endpoint does for a wrong token
        from flask import request
        if request.path == "/users/private":
            request.url_rule = None
            abort(404)

    client = app.test_client()
    client.get("/users/ann")
    client.get("/users/private")
    value = lambda endpoint, status: registry.get_sample_value(  # noqa: E731
        "http_requests_total", {"method": "GET", "endpoint": endpoint, "status": status})
    assert value("/users/<name>", "200") == 1 and value(UNMATCHED, "404") == 1
    assert issubclass(app.request_class, MyRequest)  # the app's own class, still in use
