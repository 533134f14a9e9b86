"""Server-side latency beside Locust's: the target's own `http_request_duration_seconds`.

The target's metrics (the bundled target's metrics port, or `--target-metrics URL` of an API of
your own) count how long the app took from the request reaching it to the answer. Locust counts
from sending to receiving. The gap between the two is the network plus the queue in front of the
app (a full accept backlog, busy workers), so near the knee it is where the time goes.

Per step: p95 and mean over the hold, from the histogram's bucket deltas between the first and
the last scrape inside it (the same `histogram_quantile` as every other p95), health checks left
out as the recording rules leave them out. An API served by a fleet (`--target-metrics` repeated,
`loadlab.targets`) is one histogram: each machine's bucket deltas are added before the quantile,
and each step's `server_rps` is the sum of the machines' request rates.
"""

from __future__ import annotations

from collections.abc import Sequence

from loadlab.contract.histograms import bucket_deltas, histogram_quantile
from loadlab.contract.names import TARGET_JOB
from loadlab.history import Samples, Scrape
from loadlab.steps import StepSummary

HISTOGRAM = "http_request_duration_seconds"
HEALTH_ENDPOINTS = frozenset({"/healthz"})  # as the recording rules' endpoint!="/healthz"
Point = tuple[float, float]


def _histogram(scrape: Scrape) -> tuple[dict[float, float], float, float]:
    """(cumulative buckets by le, sum, count) of the API's requests, health checks left out."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    for name, labels, value in scrape.samples:
        if not name.startswith(HISTOGRAM) or labels.get("endpoint") in HEALTH_ENDPOINTS:
            continue
        if name == HISTOGRAM + "_bucket" and "le" in labels:
            le = float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + value
        elif name == HISTOGRAM + "_sum":
            total += value
        elif name == HISTOGRAM + "_count":
            count += value
    return buckets, total, count


def _deltas(first: Scrape, last: Scrape) -> tuple[dict[float, float], float, float] | None:
    """(bucket deltas, sum delta, count delta) between two scrapes of one machine; None across a
    reset of its counters (a restarted server)."""
    (b0, s0, c0), (b1, s1, c1) = _histogram(first), _histogram(last)
    deltas = bucket_deltas(b0, b1) if b0 and b1 else None
    if deltas is None or c1 < c0 or s1 < s0:
        return None
    return deltas, s1 - s0, c1 - c0


def combined(pairs: list[tuple[Scrape, Scrape]]) -> tuple[float | None, float | None]:
    """(p95 ms, mean ms) of the requests the API's machines answered between each machine's pair of
    scrapes, their histograms added; None, None when they answered none, or one was reset."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    for first, last in pairs:
        got = _deltas(first, last)
        if got is None:
            return None, None
        for le, value in got[0].items():
            buckets[le] = buckets.get(le, 0.0) + value
        total, count = total + got[1], count + got[2]
    if count <= 0:
        return None, None
    p95 = histogram_quantile(0.95, buckets)
    return (None if p95 is None else 1000.0 * p95), 1000.0 * total / count


def between(first: Scrape, last: Scrape) -> tuple[float | None, float | None]:
    """(p95 ms, mean ms) of the requests the API answered between two scrapes; None, None when it
    answered none, or its counters were reset in between (a restarted server)."""
    return combined([(first, last)])


def fill(steps: list[StepSummary], samples: Samples, sources: Sequence[str] = (TARGET_JOB,)) -> None:
    """Set each step's server_p95_ms and server_mean_ms from the target's scrapes over its hold;
    with several machines' metrics (`sources`), over all of them, and their summed `server_rps`
    (unknown for a step that lacks one machine's scrapes: a part of the fleet is no sum)."""
    per_source = [samples.scrapes(source) for source in sources]
    if not any(per_source):
        return
    for step in steps:
        pairs = []
        for scrapes in per_source:
            inside = [sc for sc in scrapes if step.hold_start <= sc.t < step.end + 1]
            if len(inside) >= 2:
                pairs.append((inside[0], inside[-1]))
        if len(pairs) < len(per_source):
            continue
        step.server_p95_ms, step.server_mean_ms = combined(pairs)
        if len(sources) > 1:
            rates = [(_histogram(b)[2] - _histogram(a)[2]) / (b.t - a.t) for a, b in pairs if b.t > a.t]
            step.server_rps = round(sum(rates), 3) if len(rates) == len(pairs) else None


def p95_series(samples: Samples, window: float = 5.0) -> list[Point]:
    """Server-side p95 (ms) over the last `window` seconds at each scrape, for the report's chart."""
    scrapes = samples.scrapes(TARGET_JOB)
    out: list[Point] = []
    start = 0
    for i, last in enumerate(scrapes):
        while last.t - scrapes[start].t > window:
            start += 1
        if start < i:
            p95, _ = between(scrapes[start], last)
            if p95 is not None:
                out.append((last.t, p95))
    return out
