"""Prometheus HTTP metrics for any Flask app, in one call: `instrument(app)`.

    from loadlab.instrument import instrument
    app = Flask(__name__)
    instrument(app)

Adds `http_requests_total` (by method, matched URL rule, status) and `http_request_duration_seconds`
(by method, matched URL rule), labelled by the URL rule, never the raw path, and serves them at
/metrics with prometheus_client's own WSGI exposition app. Works in one process (dev server, test
client, threads) with the default or a given registry, and under gunicorn with several workers
when PROMETHEUS_MULTIPROC_DIR is set: `gunicorn -c python:loadlab.gunicorn_conf myapi:app` sets it
up, and then /metrics from any worker reports the exact totals of all workers.

Every write costs a multiprocess file write under gunicorn, so a request makes three: the counter,
the histogram's bucket and its sum. Requests in flight need no gauge of their own (two more writes):
by Little's law their mean over an interval is `rate(http_request_duration_seconds_sum[...])`.
This is the library the bundled target (target_app) uses, as your app would. It needs Flask and
prometheus-client only.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from time import perf_counter
from typing import Any, TypeVar

from flask import Flask, Request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.multiprocess import MultiProcessCollector

from loadlab.contract.histograms import LATENCY_BUCKETS_SECONDS

# The `endpoint` label of requests that matched no URL rule (404, 405): one value, so a scanner
# probing random paths cannot create new series.
UNMATCHED = "<unmatched>"
# Methods outside this set are labelled "other", for the same reason.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
EXTENSION_KEY = "prometheus_http_metrics"
_RULE = "loadlab.instrument.rule"  # environ key: the matched URL rule

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


def _rule_noting(base: type[Request]) -> type[Request]:
    """A subclass of the app's request class whose `url_rule`, as Flask sets it after routing (or an
    app clears it), is also noted in the WSGI environ, where the middleware reads it after the
    request. A property setter costs less than an after_request hook, which Flask calls through
    `ensure_sync` and which needs the `request` proxy twice (measured: ~0.3 vs ~9 us a request)."""

    def get(self: Request) -> Any:
        return self.__dict__.get(_RULE)

    def set_rule(self: Request, rule: Any) -> None:
        self.__dict__[_RULE] = rule
        self.environ[_RULE] = UNMATCHED if rule is None else rule.rule

    return type(base.__name__, (base,), {"url_rule": property(get, set_rule), "__module__": base.__module__,
                                         "__doc__": base.__doc__})


class InstrumentedWsgi:
    """WSGI middleware around a Flask app's wsgi_app: times every request, records the status the
    app answered with, and hands `metrics_path` to the metrics app.

    It is WSGI rather than Flask hooks because it runs on every request: one wrapper call costs
    less than hooks, and it also sees requests whose hooks never ran. The matched URL rule, which
    only Flask knows, comes from the app's request class (`_rule_noting`)."""

    def __init__(self, app: Callable, metrics: HttpMetrics, metrics_path: str | None,
                 metrics_app: Callable | None, flask_app: Flask | None = None) -> None:
        self.app, self.metrics_path, self.metrics_app = app, metrics_path, metrics_app
        self.record = metrics.record
        self.flask_app = flask_app
        self.request_class: Any = None

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        if self.metrics_app is not None and environ.get("PATH_INFO") == self.metrics_path:
            return self.metrics_app(environ, start_response)  # scrapes are not traffic: not counted
        flask_app = self.flask_app
        if flask_app is not None and flask_app.request_class is not self.request_class:
            # First request, or the app's request_class was replaced after instrument(): note rules again.
            self.request_class = flask_app.request_class = _rule_noting(flask_app.request_class)
        status = 500  # if the app raises instead of answering

        def capture_status(status_line: str, headers: list, exc_info: Any = None) -> Callable:
            nonlocal status
            status = int(status_line[:3])
            return start_response(status_line, headers, exc_info)

        start = perf_counter()
        try:
            return self.app(environ, capture_status)
        finally:
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
    # prometheus_client's own exposition app: content negotiation, gzip, name[] filters.
    metrics_app = make_wsgi_app(exposition_registry(registry)) if metrics_path else None
    app.wsgi_app = InstrumentedWsgi(app.wsgi_app, metrics, metrics_path, metrics_app, app)  # type: ignore[method-assign]
    return metrics
