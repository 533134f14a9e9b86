"""The named load presets and the step hunt's schedule and judgement, as plain data and logic.

Nothing here imports Locust: `shapes.py` wraps these in LoadTestShape classes, and tests and
other tools (the runner, the analysis) can read the same tables without gevent's monkey patching.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from loadlab.contract.histograms import buckets_of_response_times, histogram_quantile
from loadlab.contract.scenarios import (
    DEFAULT_MAX_USERS,
    DEFAULT_STEP_TIME_S,
    DEFAULT_STEP_USERS,
    KINDS,
    STEP,
    Preset,
    Tick,
)
from loadlab.contract.slo import judge as judge_slo
from loadlab.contract.slo import refuted
from loadlab.contract.thresholds import Thresholds

# The phases a step hunt reports (locust_hunt_phase): the fixed hunt steps, the adaptive one
# grows, refines, confirms and drains (adaptive.py); both end done.
FIXED_PHASE, GROW, REFINE, CONFIRM, DRAIN, DONE = "fixed", "grow", "refine", "confirm", "drain", "done"
PHASES = (FIXED_PHASE, GROW, REFINE, CONFIRM, DRAIN, DONE)

REGISTRATION: dict[str, Preset] = KINDS["registration"]
LOGIN: dict[str, Preset] = KINDS["login"]
__all__ = ["CONFIRM", "DEFAULT_MAX_USERS", "DEFAULT_STEP_TIME_S", "DEFAULT_STEP_USERS", "DONE", "DRAIN", "FIXED_PHASE",
           "GROW", "KINDS", "LOGIN", "PHASES", "REFINE", "REGISTRATION", "STEP", "Preset", "Snapshot", "StepHunt",
           "StepPlan", "StepResult", "Tick", "judge", "p95_ms"]


@dataclass(frozen=True)
class StepPlan:
    """Equal steps: step i (0-based) runs (i+1)*step_users users, capped at max_users."""

    step_users: int = DEFAULT_STEP_USERS
    step_time_s: float = DEFAULT_STEP_TIME_S
    max_users: int = DEFAULT_MAX_USERS

    def __post_init__(self) -> None:
        if self.step_users < 1:
            raise ValueError(f"--step-users must be at least 1 (got {self.step_users})")
        if self.step_time_s <= 0:
            raise ValueError(f"--step-time must be positive (got {self.step_time_s})")
        if self.max_users < self.step_users:
            raise ValueError(f"--max-users ({self.max_users}) must be at least --step-users ({self.step_users})")

    @property
    def steps(self) -> int:
        return math.ceil(self.max_users / self.step_users)

    @property
    def spawn_rate(self) -> float:
        # Add a whole step within about a second, so nearly all of the hold is at the new level.
        return float(self.step_users)

    def users(self, step: int) -> int:
        return min((step + 1) * self.step_users, self.max_users)

    def step_at(self, run_time: float) -> int:
        return int(run_time // self.step_time_s)


@dataclass(frozen=True)
class Snapshot:
    """Locust's cumulative totals at one moment (the Aggregated entry of its stats)."""

    num_requests: int
    num_failures: int
    response_times: dict[int, int]
    total_response_ms: float = 0.0  # sum of every response time (Locust's total_response_time)


def window_times(before: Snapshot, after: Snapshot) -> dict[int, int]:
    diff = {k: v - before.response_times.get(k, 0) for k, v in after.response_times.items()}
    return {k: v for k, v in diff.items() if v > 0}


def p95_ms(response_times: Mapping[int, int]) -> float | None:
    """p95 of a {rounded ms: count} dict exactly as the verdict computes it: Locust's exporter
    buckets these times with the contract's bounds and the analysis interpolates between them,
    so the hunt does the same to get the same number."""
    q = histogram_quantile(0.95, buckets_of_response_times(response_times))
    return None if q is None else q * 1000.0


@dataclass(frozen=True)
class StepResult:
    """How one step's steady part (its hold minus the transient) measured against the SLO."""

    step: int  # 1-based, as logged and exported
    users: int
    seconds: float
    requests: int
    failures: int
    p95_ms: float | None
    breached: bool
    reason: str
    mean_response_ms: float | None = None  # Little's law and the knee rule need means

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def judge(step: int, users: int, before: Snapshot, after: Snapshot, seconds: float, th: Thresholds) -> StepResult:
    """One step's steady part, judged by the contract's SLO judge (the verdict's own)."""
    requests = after.num_requests - before.num_requests
    failures = after.num_failures - before.num_failures
    p95 = p95_ms(window_times(before, after))
    verdict = judge_slo(requests, failures, p95, th)
    total_ms = after.total_response_ms - before.total_response_ms
    mean = total_ms / requests if requests > 0 and total_ms > 0 else None
    return StepResult(step + 1, users, seconds, requests, failures, p95, verdict.breached, verdict.detail, mean)


@dataclass
class StepHunt:
    """The step hunt as a state machine driven by a clock and Locust's stats.

    At each tick it returns the users for the current step. When a step ends it judges that
    step's steady part; once a whole step breaches the SLO (the break), it runs one more step
    (users beyond the break, for the analysis) and then returns None, which stops the test. When
    that step meets the SLO after a breach on latency alone, the breach was a hiccup and the hunt
    goes on.
    """

    plan: StepPlan
    thresholds: Thresholds
    stop_on_break: bool = True
    on_result: Callable[[StepResult], None] | None = None

    step: int = field(default=-1, init=False)
    results: list[StepResult] = field(default_factory=list, init=False)
    break_step: int | None = field(default=None, init=False)  # 0-based
    done: bool = field(default=False, init=False)
    _window: tuple[float, Snapshot] | None = field(default=None, init=False)

    @property
    def current_step(self) -> int:
        """1-based index of the running step (0 before the first tick)."""
        return self.step + 1

    @property
    def phase(self) -> str:
        """What the hunt is doing (exported as locust_hunt_phase): equal steps, or done."""
        return DONE if self.done else FIXED_PHASE

    def tick(self, run_time: float, snapshot: Callable[[], Snapshot]) -> Tick:
        if self.done:
            return None
        step = self.plan.step_at(run_time)
        if step != self.step:
            if self.step >= 0:
                self._close(run_time, snapshot)
            if self._finished(step):
                self.done = True  # current_step stays at the last step that ran
                return None
            self.step = step
            self._window = None
        steady_from = (step + self.thresholds.step_transient_fraction) * self.plan.step_time_s
        if self._window is None and run_time >= steady_from:
            self._window = (run_time, snapshot())
        return self.plan.users(step), self.plan.spawn_rate

    def _finished(self, step: int) -> bool:
        if step >= self.plan.steps:
            return True
        return self.stop_on_break and self.break_step is not None and step > self.break_step + 1

    def _close(self, run_time: float, snapshot: Callable[[], Snapshot]) -> None:
        if self._window is None:  # the step ended before its steady part began (a very late tick)
            return
        started, before = self._window
        result = judge(self.step, self.plan.users(self.step), before, snapshot(), run_time - started, self.thresholds)
        self.results.append(result)
        if result.breached and self.break_step is None:
            self.break_step = self.step
        elif not result.breached and self.break_step is not None and self.step > self.break_step:
            # More users met the SLO: a latency-only breach below was a hiccup, not the break, as
            # the verdict judges it (loadlab.contract.slo.refuted); the hunt goes on.
            broke = next(r for r in self.results if r.step == self.break_step + 1)
            if refuted(judge_slo(broke.requests, broke.failures, broke.p95_ms, self.thresholds).reasons, broke.users,
                       [result.users]):
                self.break_step = None
        if self.on_result is not None:
            self.on_result(result)
