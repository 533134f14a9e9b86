"""Prometheus HTTP metrics for any Flask app, in one call: `instrument(app)`.

Adds `http_requests_total`, `http_request_duration_seconds` and `http_requests_in_progress`
(labelled by the matched URL rule, never the raw path) and serves them at /metrics with
prometheus_client's own WSGI exposition app. Works in one process (dev server, test client,
threads) with the default or a given registry, and under gunicorn with several workers when
PROMETHEUS_MULTIPROC_DIR is set (see target_app.server, which sets it up): then /metrics from any
worker reports the totals of all workers.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from time import perf_counter
from typing import Any, TypeVar

from flask import Flask, Response, request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.multiprocess import MultiProcessCollector

from loadlab.contract.histograms import LATENCY_BUCKETS_SECONDS

# The `endpoint` label of requests that matched no URL rule (404, 405): one value, so a scanner
# probing random paths cannot create new series.
UNMATCHED = "<unmatched>"
# Methods outside this set are labelled "other", for the same reason.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
EXTENSION_KEY = "prometheus_http_metrics"
_RULE = "target_app.instrumentation.rule"  # environ key: the matched URL rule

M = TypeVar("M")
_metric_sets: weakref.WeakKeyDictionary[CollectorRegistry, dict[Any, Any]] = weakref.WeakKeyDictionary()


def shared_metrics(cls: Callable[[CollectorRegistry], M], registry: CollectorRegistry) -> M:
    """One instance of the metric set `cls` per registry, so instrumenting a second app in the
    same process (tests, app factories called twice) reuses the metrics instead of failing
    with "Duplicated timeseries"."""
    per_registry = _metric_sets.setdefault(registry, {})
    if cls not in per_registry:
        per_registry[cls] = cls(registry)
    return per_registry[cls]


def multiprocess_enabled() -> bool:
    """True when prometheus_client writes values to PROMETHEUS_MULTIPROC_DIR (gunicorn workers)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class HttpMetrics:
    """The HTTP metric families; `record` caches label children because labels() is the most
    expensive part of an update and the label set is small and bounded."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "http_requests_total", "HTTP requests answered, by method, matched URL rule and status.",
            ["method", "endpoint", "status"], registry=registry,
        )
        self.duration = Histogram(
            "http_request_duration_seconds", "Time from request start to response, by method and URL rule.",
            ["method", "endpoint"], buckets=LATENCY_BUCKETS_SECONDS, registry=registry,
        )
        # livesum: the sum over live workers; a dead worker's requests in flight stop counting.
        self.in_progress = Gauge(
            "http_requests_in_progress", "HTTP requests being handled right now.",
            multiprocess_mode="livesum", registry=registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def record(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        key = (method, endpoint, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(method, endpoint, str(status)), self.duration.labels(method, endpoint))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


def exposition_registry(registry: CollectorRegistry) -> CollectorRegistry:
    """What /metrics serves: in multiprocess mode the merged files of all processes, else `registry`."""
    if not multiprocess_enabled():
        return registry
    merged = CollectorRegistry()
    MultiProcessCollector(merged)
    return merged


class InstrumentedWsgi:
    """WSGI middleware around a Flask app's wsgi_app: times every request, keeps the in-progress
    gauge, records the status the app answered with, and hands `metrics_path` to the metrics app.

    It is WSGI rather than Flask hooks because it runs on every request: one wrapper call costs
    less than three hooks, and it also sees requests whose hooks never ran. The matched URL rule,
    which only Flask knows, comes from one after_request hook (see `instrument`)."""

    def __init__(self, app: Callable, metrics: HttpMetrics, metrics_path: str | None,
                 metrics_app: Callable | None) -> None:
        self.app, self.metrics_path, self.metrics_app = app, metrics_path, metrics_app
        self.gauge_inc, self.gauge_dec = metrics.in_progress.inc, metrics.in_progress.dec
        self.record = metrics.record

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        if self.metrics_app is not None and environ.get("PATH_INFO") == self.metrics_path:
            return self.metrics_app(environ, start_response)  # scrapes are not traffic: not counted
        status = 500  # if the app raises instead of answering

        def capture_status(status_line: str, headers: list, exc_info: Any = None) -> Callable:
            nonlocal status
            status = int(status_line[:3])
            return start_response(status_line, headers, exc_info)

        start = perf_counter()
        self.gauge_inc()
        try:
            return self.app(environ, capture_status)
        finally:
            self.gauge_dec()
            method = environ.get("REQUEST_METHOD", "")
            self.record(method if method in KNOWN_METHODS else "other", environ.get(_RULE, UNMATCHED),
                        status, perf_counter() - start)


def instrument(app: Flask, registry: CollectorRegistry | None = None, *, metrics_path: str | None = "/metrics") -> HttpMetrics:
    """Record HTTP metrics for every request `app` handles and serve them at `metrics_path`
    (None: do not serve; expose them yourself). Call it once, before or after registering routes.
    Scrapes of `metrics_path` are not counted, so the request rate is the rate of your traffic,
    not of Prometheus."""
    registry = REGISTRY if registry is None else registry
    metrics = shared_metrics(HttpMetrics, registry)
    app.extensions[EXTENSION_KEY] = metrics

    def remember_rule(response: Response) -> Response:
        rule = request.url_rule
        if rule is not None:  # None: no rule matched (404, 405); the label is then UNMATCHED
            request.environ[_RULE] = rule.rule
        return response

    # Last after-request hook (Flask runs them in reverse order of registration).
    app.after_request_funcs.setdefault(None, []).insert(0, remember_rule)
    # prometheus_client's own exposition app: content negotiation, gzip, name[] filters.
    metrics_app = make_wsgi_app(exposition_registry(registry)) if metrics_path else None
    app.wsgi_app = InstrumentedWsgi(app.wsgi_app, metrics, metrics_path, metrics_app)  # type: ignore[method-assign]
    return metrics
