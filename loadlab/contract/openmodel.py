"""The open model (arrival-rate load): its metric names and the one judge of a rate step.

In an open model requests *arrive* at scheduled times, whatever the API does; a closed model's
users wait for each answer before they send the next request, so a slow API slows its own load
down and hides the latency real traffic would see (coordinated omission). The Locust suite
(`locust_tests/plugins/arrivals.py`) exports the names below; the recording rules, alerts and
dashboards (`monitoring/`) and the verdict (`loadlab/openmodel.py`) read them.

`judge_step` is the one judge of whether a step of offered rate was *sustained*; the live rate
hunt in Locust and the verdict both ask it, with the same corrected p95 estimate (the contract's
buckets, `histograms.histogram_quantile`), so the hunt stops on the step the verdict calls the break.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .slo import LATENCY_P95
from .slo import judge as judge_slo
from .thresholds import Thresholds

# Exported by Locust's exporter (the master's, covering every worker) in arrival-rate runs only.
ARRIVAL_RATE = "locust_arrival_rate"  # gauge: arrivals per second offered now (the target rate)
ARRIVALS_SCHEDULED = "locust_arrivals_scheduled_total"  # counter: arrivals issued at their scheduled time
ARRIVALS_LATE = "locust_arrivals_late_total"  # counter: arrivals that found every request slot busy and waited
ARRIVALS_DROPPED = "locust_arrivals_dropped_total"  # counter{reason}: arrivals never sent
CORRECTED_DURATION = "locust_request_corrected_duration_seconds"  # histogram{method,name}: from the scheduled start
# Why an arrival was dropped (the `reason` label): it waited for a free slot longer than
# --arrival-timeout, or it was still waiting when the test ended. Either way it is counted.
DROPPED_WAITED_TOO_LONG = "waited_too_long"
DROPPED_TEST_ENDED = "test_ended"

# Reasons a step was not sustained, besides the SLO's own (slo.LATENCY_P95, slo.ERROR_RATIO,
# which the SLO judge decides on the *corrected* p95).
THROUGHPUT_BELOW_OFFERED = "throughput_below_offered"
ARRIVALS_WERE_DROPPED = "arrivals_dropped"
LATENCY_GROWING = "latency_growing"
# The growth must also be at least this fraction of the p95 SLO: a few milliseconds more on a
# fast API is noise, a tenth of the SLO in half a step is a queue that will reach it.
LATENCY_GROWTH_FLOOR_OF_SLO = 0.1


# A window's edges cut requests in flight: arrivals scheduled just before its end complete after
# it, and some completed at its start arrived before it. By Little's law lambda * R0 requests are in
# flight at light load (R0: the light-load response time); the count in flight at each edge varies
# like a Poisson count of that mean, so the completions of a window that keeps up may fall short of
# its arrivals by up to EDGE_SIGMAS standard deviations of the difference of two such counts.
EDGE_SIGMAS = 3.0


def edge_allowance(scheduled: int, seconds: float, light_load_ms: float | None) -> float:
    """Arrivals a window that keeps up may still have in flight at its end (see EDGE_SIGMAS)."""
    if not light_load_ms or seconds <= 0:
        return 0.0
    in_flight = scheduled / seconds * light_load_ms / 1000.0
    return EDGE_SIGMAS * math.sqrt(2.0 * in_flight)


@dataclass(frozen=True)
class StepJudgement:
    reasons: tuple[str, ...]  # empty: the step was sustained
    detail: str  # the same in words, with the figures ("" when sustained)

    @property
    def sustained(self) -> bool:
        return not self.reasons


def judge_step(scheduled: int, requests: int, failures: int, dropped: int, corrected_p95_ms: float | None,
               first_half_mean_ms: float | None, second_half_mean_ms: float | None,
               th: Thresholds, seconds: float = 0.0, light_load_ms: float | None = None) -> StepJudgement:
    """One window of a step of offered rate: `scheduled` arrivals issued in it, `requests` completed
    (failures included), `failures`, `dropped` arrivals, the corrected p95 (ms) of the requests, the
    mean corrected latency of the window's first and second half (None when unknown), the window's
    length and the run's light-load response time (ms; for the requests in flight at its edges)."""
    reasons: list[str] = []
    details: list[str] = []
    allowed = th.throughput_shortfall_fraction * scheduled + edge_allowance(scheduled, seconds, light_load_ms)
    if scheduled > 0 and scheduled - requests > allowed:
        reasons.append(THROUGHPUT_BELOW_OFFERED)
        details.append(f"completed {requests} of {scheduled} arrivals ({requests / scheduled:.0%}; at most "
                       f"{allowed:.0f} short is in flight or within {th.throughput_shortfall_fraction:.0%})")
    if dropped > 0:
        reasons.append(ARRIVALS_WERE_DROPPED)
        details.append(f"{dropped} arrivals dropped")
    first, second = first_half_mean_ms, second_half_mean_ms
    if first is not None and second is not None and second > (1.0 + th.latency_growth_fraction) * first \
            and second - first >= LATENCY_GROWTH_FLOOR_OF_SLO * th.latency_p95_ms:
        reasons.append(LATENCY_GROWING)
        details.append(f"corrected latency grew from {first:.0f} to {second:.0f} ms (mean) within the hold")
    slo = judge_slo(requests, failures, corrected_p95_ms, th)
    for reason in slo.reasons:
        if reason not in reasons:
            reasons.append(reason)
    if slo.detail:
        details.append(("corrected " if corrected_p95_ms is not None and requests else "") + slo.detail)
    return StepJudgement(tuple(reasons), "; ".join(details))


def refuted_rate(reasons: Sequence[str], rate: float, sustained_at: Iterable[float]) -> bool:
    """Is an unsustained step at `rate` contradicted by the run? Yes when it failed on latency alone
    (growing or past the SLO's p95) and a step offered more arrivals per second was sustained: in an
    open model more arrivals only queue more, so that was a hiccup (a busy host, a warming target),
    as `slo.refuted` says of a closed loop. Throughput shortfalls, drops and failures are never refuted."""
    return bool(reasons) and set(reasons) <= {LATENCY_GROWING, LATENCY_P95} and any(u > rate for u in sustained_at)
