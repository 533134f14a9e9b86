"""The named load presets and the step hunt's schedule and judgement, as plain data and logic.

Nothing here imports Locust: `shapes.py` wraps these in LoadTestShape classes, and tests and
other tools (the runner, the analysis) can read the same tables without gevent's monkey patching.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

# A shape tick as Locust expects it: (total users, spawn rate per second), or None to stop.
Tick = tuple[int, float] | None


@dataclass(frozen=True)
class Preset:
    """A constant load: ramp to `users` at `spawn_rate`/s, hold until `duration_s`, stop."""

    name: str
    users: int
    spawn_rate: float
    duration_s: float

    def tick(self, run_time: float, time_scale: float = 1.0) -> Tick:
        if run_time >= self.duration_s * time_scale:
            return None
        return self.users, self.spawn_rate


REGISTRATION: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("normal", users=50, spawn_rate=10, duration_s=5 * 60),
        Preset("heavy", users=100, spawn_rate=20, duration_s=10 * 60),
        Preset("spike", users=200, spawn_rate=50, duration_s=15 * 60),
    )
}
LOGIN: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("baseline", users=100, spawn_rate=10, duration_s=5 * 60),
        Preset("stress", users=500, spawn_rate=50, duration_s=10 * 60),
        Preset("breaking-point", users=1000, spawn_rate=100, duration_s=15 * 60),
    )
}
# Scenario kind (what a locustfile does) -> its presets; "step" is available for every kind.
KINDS: dict[str, dict[str, Preset]] = {"registration": REGISTRATION, "login": LOGIN}
STEP = "step"

# Step hunt defaults. +10 users per step resolves a knee that the bundled target (2 workers,
# ~50 ms password hash, 1-3 s think time) shows at roughly 50-120 users into 5-12 steps; 150 s per
# step is long enough for a closed loop to settle and leave ~100 s of steady state to judge, and at
# `--time-scale 0.1` (15 s steps) the demo reaches the break and stops within about 3 minutes.
DEFAULT_STEP_USERS = 10
DEFAULT_STEP_TIME_S = 150.0
DEFAULT_MAX_USERS = 1000


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
class Slo:
    p95_ms: float
    error_ratio: float


@dataclass(frozen=True)
class Snapshot:
    """Locust's cumulative totals at one moment (the Aggregated entry of its stats)."""

    num_requests: int
    num_failures: int
    response_times: dict[int, int]


def percentile_ms(response_times: dict[int, int], q: float) -> int:
    """The q-quantile of a {rounded ms: count} dict, computed exactly as Locust's
    `locust.stats.calculate_response_time_percentile` does, so a step's p95 means what Locust's
    own p95 columns mean (reimplemented only to keep this module free of Locust imports)."""
    total = sum(response_times.values())
    at_or_below = int(total * q)
    seen = 0
    for value in sorted(response_times, reverse=True):
        seen += response_times[value]
        if total - seen <= at_or_below:
            return value
    return 0


def window_times(before: Snapshot, after: Snapshot) -> dict[int, int]:
    diff = {k: v - before.response_times.get(k, 0) for k, v in after.response_times.items()}
    return {k: v for k, v in diff.items() if v > 0}


@dataclass(frozen=True)
class StepResult:
    """How one step's steady part (its hold minus the transient) measured against the SLO."""

    step: int  # 1-based, as logged and exported
    users: int
    seconds: float
    requests: int
    failures: int
    p95_ms: int
    breached: bool
    reason: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def judge(step: int, users: int, before: Snapshot, after: Snapshot, seconds: float, slo: Slo) -> StepResult:
    requests = after.num_requests - before.num_requests
    failures = after.num_failures - before.num_failures
    p95 = percentile_ms(window_times(before, after), 0.95)
    reasons = []
    if requests == 0:
        reasons.append("no request completed")
    elif failures / requests > slo.error_ratio:
        reasons.append(f"error ratio {failures / requests:.1%} > {slo.error_ratio:.1%}")
    if p95 > slo.p95_ms:
        reasons.append(f"p95 {p95} ms > {slo.p95_ms:g} ms")
    return StepResult(step + 1, users, seconds, requests, failures, p95, bool(reasons), "; ".join(reasons))


@dataclass
class StepHunt:
    """The step hunt as a state machine driven by a clock and Locust's stats.

    At each tick it returns the users for the current step. When a step ends it judges that
    step's steady part; once a whole step breaches the SLO (the break), it runs one more step
    (users beyond the break, for the analysis) and then returns None, which stops the test.
    """

    plan: StepPlan
    slo: Slo
    transient_fraction: float = 0.3
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
        steady_from = (step + self.transient_fraction) * self.plan.step_time_s
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
        result = judge(self.step, self.plan.users(self.step), before, snapshot(), run_time - started, self.slo)
        self.results.append(result)
        if result.breached and self.break_step is None:
            self.break_step = self.step
        if self.on_result is not None:
            self.on_result(result)
