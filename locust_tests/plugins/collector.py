"""A prometheus-client Collector that turns Locust's own stats into metric families at scrape time.

Nothing is counted twice: every value is read from the runner's RequestStats when Prometheus
scrapes, so on a master it covers all workers, and the totals equal Locust's CSV and HTML
reports. Metric names (a contract read by dashboards, recording rules and alerts):

    locust_users                                    gauge    simulated users now
    locust_running                                  gauge    1 while spawning or running, else 0
    locust_workers                                  gauge    connected workers (0 when standalone)
    locust_stats_timestamp_seconds                  gauge    Unix time the counts were current at (when
                                                             the exporter gives its `stats_time`)
    locust_step                                     gauge    current step of the step hunt (only then)
    locust_hunt_phase{phase}                        gauge    1 for the step hunt's phase, 0 for the others
                                                             (fixed|grow|refine|confirm|drain|done; only then)
    locust_requests_total{method,name}              counter  all requests, failures included
    locust_request_failures_total{method,name}      counter  failed requests
    locust_request_duration_seconds{method,name}    histogram of response times
    locust_errors_total{method,name,error}          counter  failures by (shortened) error text

and in open-model (arrival-rate) runs only (`arrivals.py`; names in `loadlab.contract.openmodel`):

    locust_arrival_rate                             gauge    arrivals per second offered now
    locust_arrivals_scheduled_total                 counter  arrivals issued at their scheduled time
    locust_arrivals_late_total                      counter  arrivals that found every request slot busy
    locust_arrivals_dropped_total{reason}           counter  arrivals never sent (waited_too_long, test_ended)
    locust_request_corrected_duration_seconds{method,name}  histogram of latency from the scheduled start

Labels carry Locust's request *name* (which a locustfile sets to the route, e.g. name="login"),
never a raw URL or a user. A new test start clears Locust's stats, so the counters restart from
zero: Prometheus' rate()/increase() treat that as an ordinary counter reset.

This module does not import Locust (the runner is duck-typed), so it can be tested and reused
without gevent's monkey patching.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from loadlab.contract.histograms import LATENCY_BUCKETS_SECONDS, GroupedBuckets
from loadlab.contract.names import LOCUST_STATS_TIMESTAMP
from loadlab.contract.openmodel import (
    ARRIVAL_RATE,
    ARRIVALS_DROPPED,
    ARRIVALS_LATE,
    ARRIVALS_SCHEDULED,
    CORRECTED_DURATION,
)

from .presets import PHASES as HUNT_PHASES

# Error texts can carry anything (exception reprs, server messages). Shorten them, and cap how
# many distinct ones become label values: beyond the cap they are counted as error="other".
ERROR_TEXT_MAX = 80
MAX_DISTINCT_ERRORS = 20
OTHER_ERROR = "other"

_ACTIVE_STATES = ("spawning", "running")  # locust.runners.STATE_SPAWNING / STATE_RUNNING
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]+\b")
_SPACE = re.compile(r"\s+")


def short_error(text: Any) -> str:
    """An error as a short, single-line label value (addresses masked, at most ERROR_TEXT_MAX)."""
    value = _SPACE.sub(" ", _ADDRESS.sub("0x...", str(text))).strip() or "unknown"
    if len(value) > ERROR_TEXT_MAX:
        value = value[: ERROR_TEXT_MAX - 3].rstrip() + "..."
    return value


class ErrorLabels:
    """Maps error texts to label values, admitting the first `limit` distinct texts.

    The admitted set only grows until `reset()` (a new test), so each series stays a proper
    counter: "other" sums the errors whose text came after the cap, and sums only grow. Series
    are then bounded by (request names) x (limit + 1)."""

    def __init__(self, limit: int = MAX_DISTINCT_ERRORS) -> None:
        self.limit = limit
        self._admitted: set[str] = set()

    def reset(self) -> None:
        self._admitted.clear()

    def label(self, error: str) -> str:
        if error in self._admitted:
            return error
        if len(self._admitted) < self.limit:
            self._admitted.add(error)
            return error
        return OTHER_ERROR


_BOUNDS = [floatToGoString(b) for b in LATENCY_BUCKETS_SECONDS] + ["+Inf"]
# Request names kept between collections (each RequestSeries holds a few small lists); far above
# any sane number of names, it only bounds what names of earlier tests leave behind.
MAX_KEPT_SERIES = 10_000


def _request_families() -> tuple[CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily]:
    return (CounterMetricFamily("locust_requests", "Requests made, failures included.", labels=["method", "name"]),
            CounterMetricFamily("locust_request_failures", "Requests that failed.", labels=["method", "name"]),
            HistogramMetricFamily("locust_request_duration_seconds", "Response times recorded by Locust.",
                                  labels=["method", "name"]))


class RequestSeries:
    """One request name's samples of the three request families, kept from one collection to the
    next. The exporter collects 50 names every scrape inside Locust's busy loop, and building
    each sample through add_metric (label dicts copied per sample) and bucketing every response
    time key cost most of it. Here the samples' names and label dicts are made once, by
    add_metric itself (so they are exactly its own); a collection reuses the samples of a name
    whose stats have not changed, and otherwise sums each bucket over keys grouped once."""

    def __init__(self, method: str, name: str) -> None:
        families = _request_families()
        families[0].add_metric([method, name], 0)
        families[1].add_metric([method, name], 0)
        families[2].add_metric([method, name], buckets=[(bound, 0) for bound in _BOUNDS], sum_value=0)
        # (sample name, labels) of: requests, failures, the buckets, _count, _sum
        self._shapes = [(sample.name, sample.labels) for family in families for sample in family.samples]
        self._buckets = GroupedBuckets()
        self._state: tuple[int, int, float, int] | None = None
        self._times: Any = None
        self._samples: tuple[Sample, Sample, list[Sample]] | None = None

    def samples(self, entry: Any) -> tuple[Sample, Sample, list[Sample]]:
        """(requests sample, failures sample, histogram samples) of a Locust StatsEntry."""
        times = entry.response_times
        state = (entry.num_requests, entry.num_failures, entry.total_response_time, len(times))
        if self._samples is None or state != self._state or times is not self._times:
            counts = self._buckets.counts(times)
            values = [entry.num_requests, entry.num_failures, *counts, counts[-1], entry.total_response_time / 1000.0]
            made = [Sample(name, labels, value) for (name, labels), value in zip(self._shapes, values)]
            self._samples = (made[0], made[1], made[2:])
            self._state, self._times = state, times
        return self._samples


class StatsTime:
    """When the runner's counts were current, for the exporter's LOCUST_STATS_TIMESTAMP. A standalone
    runner counts each request as it ends: now, at the render. A master's totals are the sum of its
    workers' last reports, so with even load they were current at the mean time of those reports.
    Never earlier than a value given before (a worker that leaves takes its report time with it)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.reported: dict[str, float] = {}  # worker id: when its last stats report arrived
        self.latest = 0.0

    def report(self, worker_id: str) -> None:
        self.reported[worker_id] = time.time()

    def __call__(self) -> float:
        now = time.time()
        workers = getattr(self.runner, "clients", None)
        times = [self.reported[w] for w in list(workers or ()) if w in self.reported]
        value = sum(times) / len(times) if workers is not None and times else now
        self.latest = max(self.latest, value)
        return self.latest


class LocustCollector(Collector):
    """Yields the metric families above from `environment.runner` at each scrape. `stats_time`:
    when the counts were current (Unix time), for LOCUST_STATS_TIMESTAMP; none without it."""

    def __init__(self, environment: Any, error_limit: int = MAX_DISTINCT_ERRORS,
                 stats_time: Callable[[], float] | None = None) -> None:
        self.environment = environment
        self.errors = ErrorLabels(error_limit)
        self.stats_time = stats_time
        self._series: dict[tuple[str, str], RequestSeries] = {}

    def describe(self) -> list[Metric]:
        return []  # scrape-time values: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        runner = self.environment.runner
        if runner is None:
            return
        stats = runner.stats
        # Take the entries first: the scrape must not see a dict that grows under it.
        entries = [e for e in list(stats.entries.values()) if e.num_requests or e.num_failures]
        errors = list(stats.errors.values())

        yield GaugeMetricFamily("locust_users", "Simulated users currently running.", value=runner.user_count)
        yield GaugeMetricFamily("locust_running", "1 while Locust is spawning or running users, else 0.",
                                value=1 if runner.state in _ACTIVE_STATES else 0)
        # Only a master has worker clients; a standalone runner reports 0.
        workers = runner.worker_count if hasattr(runner, "clients") else 0
        yield GaugeMetricFamily("locust_workers", "Locust workers connected to this master.", value=workers)
        if self.stats_time is not None:
            yield GaugeMetricFamily(LOCUST_STATS_TIMESTAMP, "Unix time at which the counts here were current: "
                                    "their render, or on a master its workers' last reports (mean).",
                                    value=self.stats_time())
        step = getattr(self.environment.shape_class, "current_step", None)
        if step is not None:
            yield GaugeMetricFamily("locust_step", "Current step of the step hunt (1-based; 0 before it starts).",
                                    value=step)
        phase = getattr(self.environment.shape_class, "hunt_phase", None)
        if phase is not None:
            # An enum as Prometheus exposes one (as prometheus_client's Enum does): one series per
            # phase, 1 for the current; a fixed label set, so phase changes never add series.
            phases = GaugeMetricFamily("locust_hunt_phase", "Phase of the step hunt: 1 for the current one.",
                                       labels=["phase"])
            for name in HUNT_PHASES:
                phases.add_metric([name], 1 if name == phase else 0)
            yield phases

        requests, failures, durations = _request_families()
        series = self._series
        if len(series) > MAX_KEPT_SERIES:  # names of earlier tests: start again
            series.clear()
        for entry in entries:
            labels = (entry.method or "", entry.name)
            one = series.get(labels)
            if one is None:
                one = series[labels] = RequestSeries(*labels)
            counted, failed, histogram = one.samples(entry)
            requests.samples.append(counted)
            failures.samples.append(failed)
            durations.samples.extend(histogram)
        yield requests
        yield failures
        yield durations

        by_label: dict[tuple[str, str, str], int] = {}
        for err in errors:
            method, name = err.method or "", err.name
            label = self.errors.label(short_error(err.error))
            key = (method, name, label)
            by_label[key] = by_label.get(key, 0) + err.occurrences
        family = CounterMetricFamily("locust_errors", "Failures by error (text shortened, distinct values capped).",
                                     labels=["method", "name", "error"])
        for error_labels, value in by_label.items():
            family.add_metric(list(error_labels), value)
        yield family
        yield from self.open_model()

    def open_model(self) -> Iterator[Metric]:
        """The open model's families, from the coordinator's `arrivals.OpenLoad` (duck-typed: `active`,
        `offered`, `stats`), in runs that used it; a closed-model run exports none of them."""
        model = getattr(self.environment, "open_model", None)
        if model is None or not model.active:
            return
        stats = model.stats  # one reference: a new test swaps in a fresh one
        yield GaugeMetricFamily(ARRIVAL_RATE, "Arrivals per second offered now (open model; 0 when not offering).",
                                value=model.offered)
        yield CounterMetricFamily(ARRIVALS_SCHEDULED, "Arrivals issued at their scheduled time.", value=stats.scheduled)
        yield CounterMetricFamily(ARRIVALS_LATE, "Arrivals that found every request slot busy and waited for one.",
                                  value=stats.late)
        dropped = CounterMetricFamily(ARRIVALS_DROPPED, "Arrivals never sent: they waited longer than "
                                      "--arrival-timeout, or were still waiting when the test ended.", labels=["reason"])
        for reason, count in sorted(dict(stats.dropped).items()):
            dropped.add_metric([reason], count)
        yield dropped
        corrected = HistogramMetricFamily(CORRECTED_DURATION, "Latency from each arrival's scheduled start "
                                          "(corrected for coordinated omission).", labels=["method", "name"])
        for (method, name), histogram in list(stats.latency.items()):
            counts = list(itertools.accumulate(list(histogram.counts)))
            corrected.add_metric([method, name], buckets=list(zip(_BOUNDS, counts)), sum_value=histogram.total)
        yield corrected
