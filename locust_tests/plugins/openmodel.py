"""The open model's logic as plain data: arrival times, the counters and corrected-latency
histogram every load process keeps, and the rate hunt's schedule and judgement.

Nothing here imports Locust (`arrivals.py` is the plugin that runs it inside Locust), so tests and
other tools can use it without gevent's monkey patching, as `presets.py` is for the user hunt.

Corrected latency: an arrival scheduled at time s that found every request slot busy starts late,
at time a > s. Each request it makes is then recorded twice: by Locust, from when it was sent
(its response time r, as Locust always measures), and here from the scheduled start, r + (a - s).
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loadlab.contract.histograms import LATENCY_BUCKETS_SECONDS, buckets_of_response_times, histogram_quantile
from loadlab.contract.openmodel import DROPPED_TEST_ENDED, DROPPED_WAITED_TOO_LONG, StepJudgement, judge_step
from loadlab.contract.scenarios import (
    ARRIVALS,
    DEFAULT_ARRIVAL_TIMEOUT_S,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RATE,
    DEFAULT_STEP_RATE,
    DEFAULT_STEP_TIME_S,
)
from loadlab.contract.thresholds import Thresholds

from .presets import DONE, FIXED_PHASE

__all__ = ["ARRIVALS", "DEFAULT_ARRIVAL_TIMEOUT_S", "DEFAULT_MAX_CONCURRENCY", "DEFAULT_MAX_RATE", "DEFAULT_STEP_RATE",
           "ArrivalClock", "LatencyHistogram", "OpenStats", "RateHunt", "RatePlan", "RateSnapshot", "RateStepResult",
           "judge_rate", "shares"]

BOUNDS = [*LATENCY_BUCKETS_SECONDS, math.inf]


class ArrivalClock:
    """Scheduled times of one load process's arrivals at `rate` per second: Poisson (exponential
    gaps, the default: independent visitors) or uniform (evenly spaced)."""

    def __init__(self, arrivals: str = "poisson", rng: random.Random | None = None) -> None:
        if arrivals not in ARRIVALS:
            raise ValueError(f"--arrivals {arrivals!r}: choose {' or '.join(ARRIVALS)}")
        self.arrivals = arrivals
        self.rng = rng or random.Random()

    def first(self, now: float, rate: float, phase: float = 0.0) -> float:
        """The first arrival after a (new) rate starts at `now`. `phase` in [0, 1) offsets uniform
        arrivals so that n processes at rate/n each interleave into one even stream; Poisson
        arrivals need no offset (the sum of independent Poisson streams is a Poisson stream)."""
        if self.arrivals == "uniform":
            return now + phase / rate
        return now + self.rng.expovariate(rate)

    def after(self, previous: float, rate: float) -> float:
        if self.arrivals == "uniform":
            return previous + 1.0 / rate
        return previous + self.rng.expovariate(rate)


def shares(total_rate: float, slots: Sequence[int]) -> list[tuple[float, float]]:
    """(rate, phase) of each load process when they split `total_rate` in proportion to their
    request slots (evenly when none has reported any). Rates add up to `total_rate`; phases are
    each process's start within the even stream, for uniform arrivals."""
    if not slots:
        return []
    weights = list(slots) if sum(slots) > 0 else [1] * len(slots)
    total = sum(weights)
    out, before = [], 0
    for weight in weights:
        out.append((total_rate * weight / total, before / total))
        before += weight
    return out


class LatencyHistogram:
    """Counts per bucket of the contract's bounds (not cumulative; the last is +Inf) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self, counts: list[int] | None = None, total: float = 0.0) -> None:
        self.counts = list(counts) if counts is not None else [0] * len(BOUNDS)
        self.total = total

    def observe(self, seconds: float) -> None:
        # le is inclusive: a value equal to a bound belongs to that bound's bucket.
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_SECONDS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[int]:
        return list(itertools.accumulate(self.counts))


@dataclass(frozen=True)
class RateSnapshot:
    """One process's (or the master's merged) cumulative totals at one moment: Locust's own
    (requests, failures, response times in rounded ms) and the open model's."""

    requests: int = 0
    failures: int = 0
    response_times: Mapping[int, int] = field(default_factory=dict)
    response_time_sum: float = 0.0  # ms, Locust's own (uncorrected) total
    scheduled: int = 0
    late: int = 0
    dropped: int = 0
    corrected: tuple[int, ...] = (0,) * len(BOUNDS)  # cumulative counts per bound of BOUNDS, summed over names
    corrected_sum: float = 0.0


class OpenStats:
    """The open model's counters and corrected-latency histograms of one test.

    A worker ships what it counted since its last report (`take`) to the master with Locust's own
    stats report, and the master adds it up (`merge`), so the master's totals are exact in the same
    way Locust's are. Readers on another thread (a scrape) copy lists and dicts before use."""

    def __init__(self) -> None:
        self.scheduled = 0
        self.late = 0
        self.dropped: dict[str, int] = {DROPPED_WAITED_TOO_LONG: 0, DROPPED_TEST_ENDED: 0}
        self.latency: dict[tuple[str, str], LatencyHistogram] = {}

    def record(self, method: str, name: str, seconds: float) -> None:
        key = (method, name)
        histogram = self.latency.get(key)
        if histogram is None:
            histogram = self.latency[key] = LatencyHistogram()
        histogram.observe(seconds)

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def take(self) -> dict[str, Any]:
        """Everything counted since the last take, as plain data for Locust's report to the master;
        the counts start again from zero."""
        data = {"scheduled": self.scheduled, "late": self.late, "dropped": dict(self.dropped),
                "latency": [[method, name, h.counts, h.total] for (method, name), h in self.latency.items()]}
        self.scheduled = self.late = 0
        self.dropped = {reason: 0 for reason in self.dropped}
        self.latency = {}
        return data

    def merge(self, data: Mapping[str, Any]) -> None:
        """Add a worker's `take()`."""
        self.scheduled += int(data.get("scheduled", 0))
        self.late += int(data.get("late", 0))
        for reason, count in dict(data.get("dropped", {})).items():
            self.drop(str(reason), int(count))
        for method, name, counts, total in data.get("latency", []):
            key = (str(method), str(name))
            histogram = self.latency.get(key)
            if histogram is None:
                self.latency[key] = LatencyHistogram(counts, float(total))
            else:
                histogram.counts = [a + int(b) for a, b in zip(histogram.counts, counts)]
                histogram.total += float(total)

    def snapshot(self, requests: int = 0, failures: int = 0, response_times: Mapping[int, int] | None = None,
                 response_time_sum: float = 0.0) -> RateSnapshot:
        """These totals with Locust's own at the same moment (its total entry's counts, rounded
        response times and their sum in ms)."""
        counts = [0] * len(BOUNDS)
        total = 0.0
        for histogram in list(self.latency.values()):
            counts = [a + b for a, b in zip(counts, histogram.counts)]
            total += histogram.total
        return RateSnapshot(requests, failures, dict(response_times or {}), response_time_sum, self.scheduled,
                            self.late, self.dropped_total, tuple(itertools.accumulate(counts)), total)


# ---------------------------------------------------------------- the rate hunt


@dataclass(frozen=True)
class RatePlan:
    """Equal steps of offered rate: step i (0-based) offers (i+1)*step_rate arrivals/s, capped at max_rate."""

    step_rate: float = DEFAULT_STEP_RATE
    step_time_s: float = DEFAULT_STEP_TIME_S
    max_rate: float = DEFAULT_MAX_RATE

    def __post_init__(self) -> None:
        if not (math.isfinite(self.step_rate) and self.step_rate > 0):
            raise ValueError(f"--step-rate must be a positive number of arrivals per second (got {self.step_rate})")
        if not (math.isfinite(self.step_time_s) and self.step_time_s > 0):
            raise ValueError(f"--step-time must be positive (got {self.step_time_s})")
        if not (math.isfinite(self.max_rate) and self.max_rate >= self.step_rate):
            raise ValueError(f"--max-rate ({self.max_rate:g}) must be at least --step-rate ({self.step_rate:g})")

    @property
    def steps(self) -> int:
        return math.ceil(self.max_rate / self.step_rate - 1e-9)

    def rate(self, step: int) -> float:
        return min((step + 1) * self.step_rate, self.max_rate)

    def step_at(self, run_time: float) -> int:
        return int(run_time // self.step_time_s)


def _quantile_ms(q: float, before: tuple[int, ...], after: tuple[int, ...]) -> float | None:
    value = histogram_quantile(q, {le: float(b - a) for le, a, b in zip(BOUNDS, before, after)})
    return None if value is None else value * 1000.0


def _mean_ms(before: RateSnapshot, after: RateSnapshot) -> float | None:
    count = after.corrected[-1] - before.corrected[-1]
    return 1000.0 * (after.corrected_sum - before.corrected_sum) / count if count > 0 else None


@dataclass(frozen=True)
class RateStepResult:
    """How one step's steady part (its hold minus the transient) measured."""

    step: int  # 1-based, as logged and exported
    rate: float  # offered arrivals/s
    seconds: float
    scheduled: int
    requests: int
    failures: int
    late: int
    dropped: int
    corrected_p95_ms: float | None
    p95_ms: float | None  # uncorrected, as Locust measures
    mean_response_ms: float | None  # uncorrected
    first_half_mean_ms: float | None
    second_half_mean_ms: float | None
    judgement: StepJudgement

    @property
    def sustained(self) -> bool:
        return self.judgement.sustained

    @property
    def achieved_rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def scheduled_rps(self) -> float:
        return self.scheduled / self.seconds if self.seconds > 0 else 0.0


def mean_response_ms(before: RateSnapshot, after: RateSnapshot) -> float | None:
    """Locust's own (uncorrected) mean response time between two snapshots."""
    requests = after.requests - before.requests
    return (after.response_time_sum - before.response_time_sum) / requests if requests > 0 else None


def judge_rate(step: int, rate: float, before: RateSnapshot, mid: RateSnapshot | None, after: RateSnapshot,
               seconds: float, th: Thresholds, light_load_ms: float | None = None) -> RateStepResult:
    """One step's steady part, judged by the contract's open-model judge (the verdict's own);
    `light_load_ms`: the lowest mean response time of the run so far (for the requests in flight)."""
    requests = after.requests - before.requests
    failures = after.failures - before.failures
    scheduled = after.scheduled - before.scheduled
    dropped = after.dropped - before.dropped
    corrected_p95 = _quantile_ms(0.95, before.corrected, after.corrected)
    uncorrected = {k: v - before.response_times.get(k, 0) for k, v in after.response_times.items()}
    uncorrected_p95 = histogram_quantile(0.95, buckets_of_response_times({k: v for k, v in uncorrected.items() if v > 0}))
    first = second = None
    if mid is not None:
        first, second = _mean_ms(before, mid), _mean_ms(mid, after)
    mean = mean_response_ms(before, after)
    light = min((v for v in (light_load_ms, mean) if v), default=None)
    judgement = judge_step(scheduled, requests, failures, dropped, corrected_p95, first, second, th, seconds, light)
    return RateStepResult(step + 1, rate, seconds, scheduled, requests, failures, after.late - before.late, dropped,
                          corrected_p95, None if uncorrected_p95 is None else uncorrected_p95 * 1000.0, mean, first,
                          second, judgement)


@dataclass
class RateHunt:
    """The rate hunt as a state machine driven by a clock and the run's totals.

    At each tick it returns the offered rate of the current step. When a step ends it judges the
    step's steady part; once a whole step is not sustained (the break) it runs one more step (load
    beyond the break, for the analysis) and then returns None, which stops the test, exactly as the
    user hunt (`presets.StepHunt`) does.
    """

    plan: RatePlan
    thresholds: Thresholds
    stop_on_break: bool = True
    on_result: Callable[[RateStepResult], None] | None = None

    step: int = field(default=-1, init=False)
    results: list[RateStepResult] = field(default_factory=list, init=False)
    break_step: int | None = field(default=None, init=False)  # 0-based
    done: bool = field(default=False, init=False)
    _window: tuple[float, RateSnapshot] | None = field(default=None, init=False)
    _mid: RateSnapshot | None = field(default=None, init=False)

    @property
    def current_step(self) -> int:
        """1-based index of the running step (0 before the first tick)."""
        return self.step + 1

    @property
    def phase(self) -> str:
        """What the hunt is doing (exported as locust_hunt_phase): equal steps, or done."""
        return DONE if self.done else FIXED_PHASE

    def tick(self, run_time: float, snapshot: Callable[[], RateSnapshot]) -> float | None:
        if self.done:
            return None
        step = self.plan.step_at(run_time)
        if step != self.step:
            if self.step >= 0:
                self._close(run_time, snapshot)
            if self._finished(step):
                self.done = True
                return None
            self.step, self._window, self._mid = step, None, None
        transient = self.thresholds.step_transient_fraction
        steady_from = (step + transient) * self.plan.step_time_s
        halfway = steady_from + (1.0 - transient) * self.plan.step_time_s / 2
        if self._window is None and run_time >= steady_from:
            self._window = (run_time, snapshot())
        elif self._window is not None and self._mid is None and run_time >= halfway:
            self._mid = snapshot()
        return self.plan.rate(step)

    def _finished(self, step: int) -> bool:
        if step >= self.plan.steps:
            return True
        return self.stop_on_break and self.break_step is not None and step > self.break_step + 1

    def _close(self, run_time: float, snapshot: Callable[[], RateSnapshot]) -> None:
        if self._window is None:  # the step ended before its steady part began (a very late tick)
            return
        started, before = self._window
        light = min((r.mean_response_ms for r in self.results if r.mean_response_ms), default=None)
        result = judge_rate(self.step, self.plan.rate(self.step), before, self._mid, snapshot(), run_time - started,
                            self.thresholds, light)
        self.results.append(result)
        if not result.sustained and self.break_step is None:
            self.break_step = self.step
        if self.on_result is not None:
            self.on_result(result)
