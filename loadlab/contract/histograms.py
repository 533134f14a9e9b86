"""Latency buckets and the arithmetic over counters and histograms that every part shares.

The target's request histogram, Locust's exporter and the step hunt all bucket latencies with
`LATENCY_BUCKETS_SECONDS`, and every quantile (the live hunt, the live progress line, the
verdict) is `histogram_quantile`, Prometheus' own interpolation, so a p95 means the same
number in an alert, on a dashboard, in the hunt's log and in `verdict.json`.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping, Sequence

# prometheus-client's default buckets. 0.5 s (the default SLO) is a boundary, so interpolation
# is exact at the SLO; client- and server-side histograms share them so quantiles line up.
LATENCY_BUCKETS_SECONDS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

_BOUNDS_MS = [b * 1000.0 for b in LATENCY_BUCKETS_SECONDS]
# Locust's rounded response times form a small set (~300 keys below 100 s), so the bucket of each
# key is looked up once and remembered: a scrape then costs one dict lookup per key.
_bucket_of: dict[int, int] = {}
_BUCKET_CACHE_MAX = 4096


def cumulative_buckets(response_times_ms: Mapping[int, int]) -> list[int]:
    """Cumulative counts per bound of LATENCY_BUCKETS_SECONDS (le, inclusive) of a Locust
    {ms: count} dict, followed by the +Inf count. Locust keeps response times rounded (1 ms below
    100 ms, then 2 significant digits), so a bound counts every recorded value that rounds to at
    most it."""
    counts = [0] * (len(_BOUNDS_MS) + 1)
    for ms, count in response_times_ms.items():
        counts[_bucket_index(ms)] += count
    return list(itertools.accumulate(counts))


def _bucket_index(ms: int) -> int:
    """Index in LATENCY_BUCKETS_SECONDS (+Inf last) of the bucket that counts `ms`."""
    index = _bucket_of.get(ms)
    if index is None:
        index = bisect.bisect_left(_BOUNDS_MS, ms)
        if len(_bucket_of) < _BUCKET_CACHE_MAX:
            _bucket_of[ms] = index
    return index


class GroupedBuckets:
    """`cumulative_buckets` of one Locust {ms: count} dict that is read again and again (the
    exporter's renders): its keys are grouped by bucket as they appear, so a reading sums each
    bucket's counts in C rather than walking every key in Python. Locust only adds keys to the
    dict (a dict keeps them in that order, so the new ones are those past the last reading's
    count), and a stats reset makes a new dict, which is grouped afresh."""

    def __init__(self) -> None:
        self._times: Mapping[int, int] | None = None
        self._size = 0
        self._groups: list[list[int]] = []

    def counts(self, response_times_ms: Mapping[int, int]) -> list[int]:
        size = len(response_times_ms)
        if response_times_ms is not self._times or size < self._size:
            self._times, self._size = response_times_ms, 0
            self._groups = [[] for _ in range(len(_BOUNDS_MS) + 1)]
        if size > self._size:
            new = list(itertools.islice(response_times_ms, self._size, None))
            for ms in new:
                self._groups[_bucket_index(ms)].append(ms)
            self._size += len(new)
        get = response_times_ms.__getitem__
        return list(itertools.accumulate(sum(map(get, keys)) for keys in self._groups))


def buckets_of_response_times(response_times_ms: Mapping[int, int]) -> dict[float, float]:
    """A Locust {ms: count} dict as cumulative buckets {le seconds: count}, +Inf included."""
    bounds = [*LATENCY_BUCKETS_SECONDS, float("inf")]
    return dict(zip(bounds, map(float, cumulative_buckets(response_times_ms))))


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets {le: count}: linear interpolation
    inside the bucket holding rank q. None when the histogram counted nothing."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return prev_bound  # as Prometheus does: the highest finite bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def bucket_deltas(before: Mapping[float, float], after: Mapping[float, float]) -> dict[float, float] | None:
    """Cumulative buckets of what was counted between two readings of one histogram.

    None when a bucket went down: the histogram was reset in between (Locust resets its stats
    when a new test starts), and deltas across a reset are not counts of anything.
    """
    if any(after.get(le, 0.0) < count for le, count in before.items()):
        return None
    return {le: after[le] - before.get(le, 0.0) for le in after}


Point = tuple[float, float]


def counter_increase(points: Sequence[Point], start: float, end: float) -> tuple[float, float] | None:
    """(increase, seconds) of a counter between its samples inside [start, end]; a drop is a
    reset, after which the counter counts again from zero (as Prometheus' increase() treats it).
    None with fewer than two samples inside."""
    inside = [(t, v) for t, v in points if start <= t <= end]
    if len(inside) < 2:
        return None
    increase = 0.0
    for (_, v0), (_, v1) in zip(inside, inside[1:]):
        increase += v1 - v0 if v1 >= v0 else v1
    return increase, inside[-1][0] - inside[0][0]


def rate_series(points: Sequence[Point]) -> list[Point]:
    """Per-interval rate of a counter, with the same reset rule as `counter_increase`."""
    out = []
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        dt = t1 - t0
        if dt <= 0:
            continue
        out.append((t1, (v1 - v0 if v1 >= v0 else v1) / dt))
    return out
