"""Per-step summaries of an open-model (arrival-rate) run, from the lab's samples.

A step is a plateau of the offered arrival rate (`locust_arrival_rate`, the master's gauge, which
the sampler scrapes every second): the rate hunt holds each rate for a step, a constant-rate run
holds one. As for the user steps (`steps.py`), the first part of each step is a transient and every
figure is taken over the rest of it, the *hold*, from counter increases and histogram bucket
deltas between the hold's first and last scrape: arrivals scheduled, requests completed (the
achieved throughput), late and dropped arrivals, and the latency quantiles both from the scheduled
start (corrected) and from the send (uncorrected, as Locust measures). Each step is judged by the
contract's open-model judge (`loadlab.contract.openmodel.judge_step`), the live hunt's own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from loadlab.contract.histograms import counter_increase
from loadlab.contract.openmodel import (
    ARRIVAL_RATE,
    ARRIVALS_DROPPED,
    ARRIVALS_LATE,
    ARRIVALS_SCHEDULED,
    CORRECTED_DURATION,
    judge_step,
)
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS, Thresholds
from loadlab.history import Samples, Scrape, quantile_between, scrape_value, series

LOCUST_HISTOGRAM = "locust_request_duration_seconds"
REQUESTS = "locust_requests_total"
FAILURES = "locust_request_failures_total"


@dataclass
class RateStep:
    """One step of offered rate, over its hold."""

    index: int
    offered_rps: float  # the rate the generator was asked to offer (the gauge)
    start: float  # epoch seconds of the first scrape at this rate
    hold_start: float
    end: float
    slots: int | None  # request slots (--max-concurrency), Locust's user count
    scheduled: int  # arrivals issued over the hold
    scheduled_rps: float  # ... per second: the offered rate as it really happened (Poisson varies)
    requests: int  # completed over the hold, failures included
    achieved_rps: float  # the throughput the API achieved
    failures: int
    error_ratio: float
    late: int  # arrivals that found every slot busy and waited
    dropped: int  # arrivals never sent
    corrected_p50_ms: float | None
    corrected_p95_ms: float | None
    corrected_p99_ms: float | None
    p50_ms: float | None  # uncorrected (from the send, as Locust measures)
    p95_ms: float | None
    p99_ms: float | None
    mean_response_ms: float | None  # uncorrected mean (what the API took)
    first_half_mean_ms: float | None  # corrected mean latency of the hold's first half ...
    second_half_mean_ms: float | None  # ... and second half: a queue that does not drain grows
    sustained: bool = True
    reasons: list[str] = field(default_factory=list)
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def detect_rate_plateaus(scrapes: list[Scrape], min_scrapes: int = 3) -> list[list[Scrape]]:
    """Runs of consecutive scrapes with the same offered rate above 0, at least `min_scrapes` long."""
    plateaus: list[list[Scrape]] = []
    current: list[Scrape] = []
    rate_of_current = None
    for scrape in scrapes:
        rate = scrape_value(scrape, ARRIVAL_RATE)
        if current and rate == rate_of_current:
            current.append(scrape)
            continue
        if len(current) >= min_scrapes and rate_of_current:
            plateaus.append(current)
        current, rate_of_current = ([scrape], rate) if rate else ([], None)
    if len(current) >= min_scrapes and rate_of_current:
        plateaus.append(current)
    return plateaus


def hold_scrapes(plateau: list[Scrape], transient_fraction: float) -> list[Scrape]:
    """The scrapes after the step's first `transient_fraction` of time (never its very first); at least two."""
    start, end = plateau[0].t, plateau[-1].t
    kept = [s for s in plateau[1:] if s.t >= start + transient_fraction * (end - start)]
    return kept if len(kept) >= 2 else plateau[-2:]


def _increase(scrapes: list[Scrape], name: str) -> float | None:
    found = counter_increase(series(scrapes, name), scrapes[0].t, scrapes[-1].t)
    return None if found is None else found[0]


def _quantile_ms(q: float, first: Scrape, last: Scrape, name: str) -> float | None:
    value = quantile_between(q, first, last, name)
    return None if value is None else value * 1000.0


def _mean_ms(first: Scrape, last: Scrape, name: str) -> float | None:
    sums = [scrape_value(s, name + "_sum") for s in (first, last)]
    counts = [scrape_value(s, name + "_count") for s in (first, last)]
    if None in sums or None in counts:
        return None
    count = counts[1] - counts[0]  # type: ignore[operator]
    total = sums[1] - sums[0]  # type: ignore[operator]
    return 1000.0 * total / count if count > 0 and total >= 0 else None


def is_open_run(samples: Samples) -> bool:
    """Whether the run offered an arrival rate at some point (an open-model run)."""
    return any((scrape_value(s, ARRIVAL_RATE) or 0) > 0 for s in samples.scrapes("locust"))


def summarize_rate_steps(samples: Samples, th: Thresholds = DEFAULT_THRESHOLDS,
                         until: float | None = None) -> list[RateStep]:
    """The run's steps of offered rate, each judged; `until`: ignore scrapes after it (a partial run)."""
    scrapes = [s for s in samples.scrapes("locust") if until is None or s.t <= until]
    steps = []
    for index, plateau in enumerate(detect_rate_plateaus(scrapes)):
        hold = hold_scrapes(plateau, th.step_transient_fraction)
        first, last = hold[0], hold[-1]
        seconds = last.t - first.t
        mid = min(hold, key=lambda s: abs(s.t - (first.t + seconds / 2)))
        scheduled = int(_increase(hold, ARRIVALS_SCHEDULED) or 0)
        requests = int(_increase(hold, REQUESTS) or 0)
        failures = int(_increase(hold, FAILURES) or 0)
        dropped = int(_increase(hold, ARRIVALS_DROPPED) or 0)
        halves: tuple[float | None, float | None] = (None, None)
        if first is not mid and mid is not last:
            halves = (_mean_ms(first, mid, CORRECTED_DURATION), _mean_ms(mid, last, CORRECTED_DURATION))
        slots = scrape_value(last, "locust_users")
        step = RateStep(
            index=index,
            offered_rps=scrape_value(plateau[0], ARRIVAL_RATE) or 0.0,
            start=plateau[0].t,
            hold_start=first.t,
            end=last.t,
            slots=None if slots is None else int(slots),
            scheduled=scheduled,
            scheduled_rps=scheduled / seconds if seconds > 0 else 0.0,
            requests=requests,
            achieved_rps=requests / seconds if seconds > 0 else 0.0,
            failures=failures,
            error_ratio=failures / requests if requests else 0.0,
            late=int(_increase(hold, ARRIVALS_LATE) or 0),
            dropped=dropped,
            corrected_p50_ms=_quantile_ms(0.50, first, last, CORRECTED_DURATION),
            corrected_p95_ms=_quantile_ms(0.95, first, last, CORRECTED_DURATION),
            corrected_p99_ms=_quantile_ms(0.99, first, last, CORRECTED_DURATION),
            p50_ms=_quantile_ms(0.50, first, last, LOCUST_HISTOGRAM),
            p95_ms=_quantile_ms(0.95, first, last, LOCUST_HISTOGRAM),
            p99_ms=_quantile_ms(0.99, first, last, LOCUST_HISTOGRAM),
            mean_response_ms=_mean_ms(first, last, LOCUST_HISTOGRAM),
            first_half_mean_ms=halves[0],
            second_half_mean_ms=halves[1],
        )
        steps.append(step)
    # The requests a window's edges may cut in flight are judged at the run's light load (its lowest mean).
    light = min((s.mean_response_ms for s in steps if s.mean_response_ms), default=None)
    for step in steps:
        judgement = judge_step(step.scheduled, step.requests, step.failures, step.dropped, step.corrected_p95_ms,
                               step.first_half_mean_ms, step.second_half_mean_ms, th, step.end - step.hold_start, light)
        step.sustained, step.reasons, step.detail = judgement.sustained, list(judgement.reasons), judgement.detail
    return steps


__all__ = ["RateStep", "detect_rate_plateaus", "hold_scrapes", "is_open_run", "summarize_rate_steps"]
