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
from bisect import bisect_left
from collections.abc import Callable
from threading import Lock
from time import perf_counter
from typing import Any, TypeVar

from flask import Flask, Request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

from loadlab.contract.histograms import LATENCY_BUCKETS_SECONDS

# The `endpoint` label of requests that matched no URL rule (404, 405): one value, so a scanner
# probing random paths cannot create new series.
UNMATCHED = "<unmatched>"
# Methods outside this set are labelled "other", for the same reason.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
EXTENSION_KEY = "prometheus_http_metrics"
_RULE = "loadlab.instrument.rule"  # environ key: the matched URL rule
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

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
    return bool(os.environ.get(MULTIPROC_ENV))


class HttpMetrics:
    """The HTTP metric families; `record` caches label children because labels() is the most
    expensive part of an update and the label set is small and bounded. In multiprocess mode
    `record` is a `ProcessFileRecorder`'s, which writes the same series to this process's file."""

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
        if multiprocess_enabled():
            self.record = ProcessFileRecorder(self.requests, self.duration).record  # type: ignore[method-assign]

    def record(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        key = (method, endpoint, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(method, endpoint, str(status)), self.duration.labels(method, endpoint))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class ProcessFileRecorder:
    """Multiprocess mode: one request's counter, histogram bucket and sum, written to this
    process's own prometheus_client file under one lock.

    prometheus_client writes each value separately (`Counter.inc`, then `Histogram.observe`'s sum
    and bucket), and each write takes its lock, calls getpid() (a system call) to notice a fork and
    goes through two or three Python frames: ~10 us a request in a tight loop, most of it
    bookkeeping around three 16-byte writes. Here the request's values are plain floats, the
    bucket is a bisect, and the writes go to `counter_<pid>_http.db` and `histogram_<pid>_http.db`
    with prometheus_client's own MmapedDict and keys (`mmap_key`), so MultiProcessCollector merges
    them with every other process's files as it does its own: each request is in the file before
    its response is sent, and any worker's scrape sees exact totals. A fork (gunicorn --preload)
    starts the child on files of its own, like prometheus_client's pid check, via os.register_at_fork."""

    def __init__(self, requests: Counter, duration: Histogram) -> None:
        # Names, help and bounds from the prometheus_client metrics themselves, so keys match theirs.
        self._requests = (requests._name, requests._name + "_total", list(requests._labelnames), requests._documentation)
        self._duration = (duration._name, list(duration._labelnames), duration._documentation)
        self._bounds = list(duration._upper_bounds)
        self._lock = Lock()
        self._open()
        ref = weakref.ref(self)

        def reopen() -> None:  # in a forked child: the parent's files and counts stay the parent's
            recorder = ref()
            if recorder is not None:
                recorder._lock = Lock()
                recorder._open()
        os.register_at_fork(after_in_child=reopen)

    def _open(self) -> None:
        directory, pid = os.environ[MULTIPROC_ENV], os.getpid()
        self._counter_file = MmapedDict(os.path.join(directory, f"counter_{pid}_http.db"))
        self._histogram_file = MmapedDict(os.path.join(directory, f"histogram_{pid}_http.db"))
        # (method, endpoint, status) -> (its request count, its (method, endpoint)'s sum and buckets)
        self._series: dict[tuple[str, str, int], tuple[_FileValue, _FileValue, list[_FileValue]]] = {}
        self._histograms: dict[tuple[str, str], tuple[_FileValue, list[_FileValue]]] = {}

    def _new_series(self, method: str, endpoint: str, status: int) -> tuple[_FileValue, _FileValue, list[_FileValue]]:
        name, total_name, labelnames, documentation = self._requests
        count = _FileValue(self._counter_file, mmap_key(name, total_name, labelnames, [method, endpoint, str(status)],
                                                        documentation))
        histogram = self._histograms.get((method, endpoint))
        if histogram is None:
            name, labelnames, documentation = self._duration
            file, labels = self._histogram_file, [method, endpoint]
            histogram = (_FileValue(file, mmap_key(name, name + "_sum", labelnames, labels, documentation)),
                         [_FileValue(file, mmap_key(name, name + "_bucket", [*labelnames, "le"],
                                                    [*labels, floatToGoString(bound)], documentation))
                          for bound in self._bounds])
            self._histograms[(method, endpoint)] = histogram
        series = self._series[(method, endpoint, status)] = (count, *histogram)
        return series

    def record(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            count, total, buckets = self._series.get((method, endpoint, status)) or self._new_series(method, endpoint, status)
            count.value += 1.0
            count.file.write_value(count.key, count.value, 0.0)
            total.value += seconds
            total.file.write_value(total.key, total.value, 0.0)
            bucket = buckets[bisect_left(self._bounds, seconds)]  # the first bound >= seconds, as Histogram.observe
            bucket.value += 1.0
            bucket.file.write_value(bucket.key, bucket.value, 0.0)


class _FileValue:
    """One value of a ProcessFileRecorder: its key in a multiprocess file, and what it holds there."""

    __slots__ = ("file", "key", "value")

    def __init__(self, file: MmapedDict, key: str) -> None:
        self.file, self.key = file, key
        self.value = file.read_value(key)[0]  # creates the entry at 0, as prometheus_client's children do


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
