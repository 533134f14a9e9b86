"""The adaptive step hunt: coarse-to-fine steps whose number grows with the logarithm of the knee.

Like the fixed hunt (presets.StepHunt) it holds each step for --step-time and judges the step's
steady part with the contract's one SLO judge. What differs is how it picks the next step:

1. grow: x2 users while the step is clearly linear (its throughput per user holds, by
   `loadlab.contract.knee.is_linear`) and meets the SLO;
2. refine: once a step flattened or breached, settle the plateau (two counted steps, 15 % or more
   apart, between which the knee rule `collapse` fires: adding users stopped adding throughput),
   take up to `plateau_steps` steps on it within the SLO (the capacity, and so the estimate, is
   their median), then bracket the knee estimate N* = X / g0 (`knee_users`, the analysis' own
   formula) with two steps within a few percent of each other;
3. confirm: the break, the lowest breaching level, confirmed by a second breaching step up to 15 %
   above it (or by a bad breach).

Steps the others contradict (a closed loop's throughput does not drop, nor its latency fall, as
users are added) are hiccups of the host or the target and do not steer the hunt.

A bad breach (requests failing beyond the SLO, none completing, or p95 past twice the SLO) makes
the hunt back off: 0 users for about one cycle N / X (every request still queued at the target
completes within it), then on below that level; no later step goes as high again.

`next_move` is the decision, a pure function of the judged steps; `AdaptiveHunt` runs it on the
clock of Locust's shape ticks. Nothing here imports Locust.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from loadlab.contract.knee import collapse, find_knee, is_linear, knee_users, light_load_per_user, linear_share
from loadlab.contract.scenarios import (
    ADAPTIVE,
    BAD_BREACH_P95_FACTOR,
    DEFAULT_MAX_USERS,
    DEFAULT_START_USERS,
    DEFAULT_STEP_TIME_S,
    FIXED,
    HUNT_BRACKET,
    HUNT_CONFIRM_GROWTH,
    HUNT_GROWTH,
    HUNT_MAX_REFINE,
    HUNT_MAX_STEPS,
    HUNT_PLATEAU_STEPS,
    HUNTS,
    Tick,
)
from loadlab.contract.slo import judge as judge_slo
from loadlab.contract.slo import refuted
from loadlab.contract.thresholds import Thresholds

from .presets import CONFIRM, DONE, DRAIN, GROW, REFINE, Snapshot, StepResult, judge

SPAWN_RATE_CAP = 100.0  # users/s; Locust warns above it, so larger jumps ramp within the transient
# Plateau steps aim below this fraction of the SLO's p95, so that noise does not push them over it.
PLATEAU_P95_HEADROOM = 0.9


@dataclass(frozen=True)
class AdaptivePlan:
    start_users: int = DEFAULT_START_USERS
    step_time_s: float = DEFAULT_STEP_TIME_S
    max_users: int = DEFAULT_MAX_USERS
    growth: float = HUNT_GROWTH
    bracket: float = HUNT_BRACKET
    confirm_growth: float = HUNT_CONFIRM_GROWTH
    plateau_steps: int = HUNT_PLATEAU_STEPS
    max_refine: int = HUNT_MAX_REFINE
    max_steps: int = HUNT_MAX_STEPS

    def __post_init__(self) -> None:
        if self.start_users < 1:
            raise ValueError(f"--start-users must be at least 1 (got {self.start_users})")
        if self.step_time_s <= 0:
            raise ValueError(f"--step-time must be positive (got {self.step_time_s})")
        if self.max_users < self.start_users:
            raise ValueError(f"--max-users ({self.max_users}) must be at least --start-users ({self.start_users})")
        if self.growth <= 1 or self.confirm_growth <= 1:
            raise ValueError("the hunt's growth factors must be above 1")


@dataclass(frozen=True)
class Move:
    """The hunt's next step: `users` in `phase`, and why; users None ends the hunt. A positive
    `drain_s` first holds 0 users that long (the back-off after a bad breach)."""

    phase: str
    users: int | None
    why: str
    drain_s: float = 0.0


def failed(r: StepResult, th: Thresholds) -> bool:
    """Requests failed beyond the SLO, or none completed: the step's throughput counts nothing."""
    return r.requests <= 0 or r.error_ratio > th.error_ratio


def bad_breach(r: StepResult, th: Thresholds) -> bool:
    """A breach the target may not shrug off: failures, silence, or p95 far past the SLO."""
    if not r.breached:
        return False
    return failed(r, th) or (r.p95_ms is not None and r.p95_ms > BAD_BREACH_P95_FACTOR * th.latency_p95_ms)


def _reasons(r: StepResult, th: Thresholds) -> tuple[str, ...]:
    return judge_slo(r.requests, r.failures, r.p95_ms, th).reasons


def drain_seconds(r: StepResult, plan: AdaptivePlan, th: Thresholds) -> float:
    """How long to hold 0 users after the bad step `r`: one cycle N / X = R + Z (response time
    law), within which every request it left queued completes; at least the transient, at most a hold."""
    low, high = th.step_transient_fraction * plan.step_time_s, plan.step_time_s
    cycle = r.users / r.rps if r.rps > 0 else high
    return min(high, max(low, cycle))


@dataclass
class _State:
    """What the judged steps say so far, by the contract's knee rule."""

    results: Sequence[StepResult]
    phases: Sequence[str]
    plan: AdaptivePlan
    th: Thresholds
    g0: float
    measured: set[int] = field(init=False)
    ceiling: float = field(init=False)  # the lowest bad level: no step goes this high again
    flattened: list[StepResult] = field(init=False)  # throughput per user no longer holds
    breached: list[StepResult] = field(init=False)  # over the SLO
    past: list[StepResult] = field(init=False)  # flattened or breached
    counted: list[StepResult] = field(init=False)  # by users; their throughput counts (no failures, no stall)
    plateau_from: int | None = field(init=False)  # users of the first step seen on the plateau
    n_est: float | None = field(init=False)  # the knee estimate N* = X / g0

    def __post_init__(self) -> None:
        rs, th = self.results, self.th
        self.measured = {r.users for r in rs}
        self.ceiling = min((r.users for r in rs if bad_breach(r, th)), default=math.inf)
        # A closed loop cannot flatten and then be linear again with more users, nor lose much of
        # the throughput fewer users drove, nor breach on latency and then meet the SLO with more
        # users (`refuted`, as the verdict's break): a step the others contradict so was a hiccup
        # (a warming target, a stalled host), and the hunt goes on as if it had not happened.
        linear = [r for r in rs if is_linear(r, self.g0, th)]
        met_at = [r.users for r in rs if not r.breached]
        stalled = [r for r in rs if any(q.users < r.users and r.rps < th.linear_fraction * q.rps for q in rs)]
        self.flattened = [r for r in rs if r not in linear and r not in stalled
                          and not any(q.users > r.users for q in linear)]
        self.breached = [r for r in rs if r.breached and not refuted(_reasons(r, th), r.users, met_at)]
        self.past = [r for r in rs if r in self.flattened or r in self.breached]
        self.counted = sorted((r for r in rs if not failed(r, th) and r not in stalled), key=lambda r: r.users)
        self.plateau_from = self._plateau_from()
        if self.plateau_from is not None:
            # The median throughput from the plateau's first step on. Unlike the verdict's capacity
            # it keeps the steps past the SLO's p95: a closed loop's throughput there is still the
            # plateau's, and with a handful of steps every one of them steadies the estimate.
            on = [r.rps for r in self.counted if r.users >= self.plateau_from]
            self.n_est = knee_users(statistics.median(on), self.g0)
            # Once the knee rule finds a knee in these steps, bracket the very estimate the verdict
            # will make of them (the same rule, on every step in order of users, as the analysis).
            found = find_knee(sorted(rs, key=lambda r: (r.users, r.step)), lambda r: r.breached, th)
            if found is not None:
                self.n_est = found.users
        else:  # not yet settled: the best throughput so far, a lower bound of the capacity
            self.n_est = knee_users(max(r.rps for r in self.counted), self.g0) if self.counted else None

    def allowed(self, users: int) -> bool:
        return 1 <= users <= self.plan.max_users and users < self.ceiling and users not in self.measured

    def _plateau_from(self) -> int | None:
        """The plateau is seen once, between two counted steps at least `confirm_growth` apart, the
        upper one flattened and adding users stopped adding throughput (the analysis' knee rule,
        `collapse`); its users, the lowest such upper step. None until then."""
        for b_index, b in enumerate(self.counted):
            if b not in self.flattened:
                continue
            best = max(r.rps / r.users for r in self.counted[: b_index + 1])
            if any(collapse(a, b, self.g0, best, self.th) for a in self.counted[:b_index]
                   if b.users >= a.users * self.plan.confirm_growth):
                return b.users
        return None

    def settled(self) -> bool:
        return self.plateau_from is not None

    def tolerance(self, n: float) -> float:
        return max(self.plan.bracket * n, 2.0)

    def bracket(self, n: float) -> tuple[int | None, int | None]:
        """The measured levels next to n: (highest below, lowest at or above). Strictly below: the
        knee rule clamps its estimate to the step that confirmed it, so an estimate on a measured
        level is no bracket by itself."""
        return (max((u for u in self.measured if u < n), default=None),
                min((u for u in self.measured if u >= n), default=None))

    def knee_said(self) -> str:
        """The knee as the hunt leaves it, for its last log line ("" before the plateau is seen)."""
        n = self.n_est
        if n is None or not self.settled():
            return ""
        lo, hi = self.bracket(n)
        where = f", between {lo} and {hi} users" if lo is not None and hi is not None else ""
        return f"; knee ~{n:.1f} users{where}"

    def bracketed(self, n: float) -> bool:
        lo, hi = self.bracket(n)
        return lo is not None and hi is not None and hi - lo <= self.tolerance(n)


def _up(users: float, factor: float) -> int:
    return max(int(users) + 1, math.ceil(users * factor))


def next_move(results: Sequence[StepResult], phases: Sequence[str], plan: AdaptivePlan, th: Thresholds,
              stop_on_break: bool = True) -> Move:
    """The step after `results` (the judged steps in the order they ran; `phases`: the phase each ran in)."""
    last = results[-1]
    drain = drain_seconds(last, plan, th) if bad_breach(last, th) else 0.0

    def go(phase: str, users: int, why: str) -> Move:
        return Move(phase, users, why, drain)

    g0 = light_load_per_user(results)
    if not g0:
        return Move(DONE, None, f"no request completed at {last.users} users: nothing to measure")
    s = _State(results, phases, plan, th, g0)

    def stop(why: str) -> Move:
        return Move(DONE, None, why + s.knee_said())

    if len(results) >= plan.max_steps:
        return stop(f"the hunt's step limit ({plan.max_steps}) is reached")
    top = max(s.measured)

    # 1. grow: every step so far linear and within the SLO.
    if not s.past:
        if top >= plan.max_users:
            return stop(f"--max-users ({plan.max_users}) reached, still linear and within the SLO")
        share = linear_share(last, g0)
        return go(GROW, min(plan.max_users, _up(top, plan.growth)),
                  f"{last.users} users linear ({share:.2f} of the light-load rate per user) and within the SLO")

    # 2. refine: find the plateau, measure it, then bracket the knee.
    breaches = sorted(r.users for r in s.breached)
    lowest_breach = breaches[0] if breaches else math.inf
    # (With nothing flattened but a bad breach above the linear steps, the knee may still lie
    # between them: the bad step may have been a stall, or the knee sharp; refine finds out.)
    if (s.flattened or s.ceiling < math.inf) and phases.count(REFINE) < plan.max_refine:
        move = _refine(s, lowest_breach)
        if move is not None:
            return go(REFINE, move[0], move[1])

    # 3. confirm the break.
    if not breaches:
        if top >= plan.max_users:
            return stop(f"--max-users ({plan.max_users}) reached without breaching the SLO")
        return go(CONFIRM, min(plan.max_users, _up(top, plan.confirm_growth)), "climbing to the break")
    # Confirmed: the break itself breached badly, or so did a step up to 15 % above it (as the fixed
    # hunt runs one step more), or one more step could only go where a bad breach already went.
    bad = [r.users for r in results if bad_breach(r, th)]
    confirm_at = min(plan.max_users, _up(lowest_breach, plan.confirm_growth))
    confirming = [u for u in breaches if lowest_breach < u <= confirm_at]
    if lowest_breach not in bad and not confirming:
        if s.allowed(confirm_at) and confirm_at > lowest_breach:
            return go(CONFIRM, confirm_at, f"confirming the break at {lowest_breach} users")
        if not bad:
            return stop(f"the SLO broke at {lowest_breach} users (unconfirmed: --max-users reached)")
    if stop_on_break:
        how = ("breaching badly" if lowest_breach in bad else f"{min(confirming)} users breaching too" if confirming
               else f"a bad breach at {min(bad)} users")
        return stop(f"the SLO broke at {lowest_breach} users, confirmed by {how}")
    if bad:
        return stop(f"--no-stop-on-break, but {min(bad)} users breached badly: the hunt loads the target no further")
    if top >= plan.max_users:
        return stop(f"--max-users ({plan.max_users}) reached (--no-stop-on-break)")
    return go(CONFIRM, min(plan.max_users, _up(top, plan.growth)), "--no-stop-on-break: on to --max-users")


def _refine(s: _State, lowest_breach: float) -> tuple[int, str] | None:
    """The refinement step, or None when the knee is bracketed (or cannot be refined further).

    In this order: settle the plateau; measure it with `plateau_steps` steps within the SLO (the
    capacity, and so the estimate N* = X / g0, is their median); bracket that estimate last, when
    it no longer moves."""
    plan = s.plan
    n = s.n_est
    if n is None:
        return None
    if not s.settled():
        # The throughput may still rise: a counted step well above the highest (x1.15), or, when a
        # bad breach above bounds the hunt, the geometric middle up to it; when the highest counted
        # step is itself that bound, the geometric middle between it and the last linear step below.
        top_counted = s.counted[-1].users
        last_good = max((r.users for r in s.results if r.users < top_counted and r not in s.past), default=0)
        cands = [_up(top_counted, plan.confirm_growth), round(math.sqrt(last_good * top_counted))]
        if s.ceiling < math.inf:
            cands.insert(0, round(math.sqrt(top_counted * s.ceiling)))
        for cand in cands:
            if cand > last_good and s.allowed(cand):
                return cand, f"throughput may still rise above {top_counted} users (knee >= {n:.0f}): finding the plateau"
        return None
    # Plateau steps: past the bracket (a tolerance above the knee), so their throughput is the
    # capacity's and not the bend's.
    # At most `plateau_steps` tries: the SLO may break soon after the knee, leaving little room. Past
    # the knee every added user adds 1/X to the response time (N = X (R + Z)), so p95 is predicted
    # to grow by 1000/X ms per user from the highest step within the SLO; a try goes no higher than
    # where that reaches PLATEAU_P95_HEADROOM of the SLO, else between the knee and that step.
    plateau_start = n + s.tolerance(n)
    healthy = [r for r in s.results if not r.breached]
    tries = sum(1 for r, phase in zip(s.results, s.phases) if phase == REFINE and r.users >= plateau_start)
    if len([r for r in healthy if r.users >= plateau_start]) < plan.plateau_steps and tries < plan.plateau_steps \
            and healthy:
        top = max(healthy, key=lambda r: r.users)
        base = max(top.users, n)
        room = base + (PLATEAU_P95_HEADROOM * s.th.latency_p95_ms - (top.p95_ms or 0.0)) * n * s.g0 / 1000
        for cand in (min(_up(base, plan.confirm_growth), math.floor(room)),
                     round(math.sqrt(plateau_start * top.users))):
            if plateau_start <= cand < lowest_breach and s.allowed(cand):
                return cand, f"a step on the plateau (knee ~{n:.0f} users) within the SLO, for the capacity"
    if s.bracketed(n):
        return None
    # Keep a measured side that is near enough and probe the far end of the tolerance from it, so
    # the bracket survives the estimate moving a little with the next step; else probe half a
    # tolerance either side of the estimate.
    tol = s.tolerance(n)
    lo, hi = s.bracket(n)
    cands = []
    if lo is not None and lo + tol >= n:
        cands.append(math.floor(lo + tol))
    if hi is not None and hi - tol <= n:
        cands.append(math.ceil(hi - tol))
    cands += [max(1, math.floor(n - tol / 2)), math.ceil(n + tol / 2)]
    for cand in cands:
        if (lo is None or cand > lo) and (hi is None or cand < hi) and s.allowed(cand):
            return cand, f"bracketing the knee estimate {n:.1f} users (X/g0) to {tol:.0f} users"
    return None


R = TypeVar("R")
M = TypeVar("M", bound="Stepping")


class Stepping(Protocol):
    """What the clock reads of a hunt's move: its phase and the back-off it asks for first."""

    @property
    def phase(self) -> str: ...

    @property
    def drain_s(self) -> float: ...


class SteppedClock(Generic[R, M]):
    """The clock both adaptive hunts run on (this module's of users; `rateadaptive.AdaptiveRateHunt`
    of arrival rate): hold each step for the plan's step time, judge its steady part (after the
    transient; with a snapshot halfway through it too), ask the hunt's decision for the next move,
    and back off for a move's `drain_s` (longer while `_drained` says the target is still busy).

    A subclass says what a step offers (`_hold`), what a drain offers (`_idle`), how a step is
    judged (`_judge`) and how the next move is decided (`_decide`). `_start_clock` gives it fresh state.
    """

    thresholds: Thresholds
    on_result: Callable[[R], None] | None
    on_move: Callable[[R, M], None] | None

    def _start_clock(self) -> None:
        self.results: list[R] = []
        self.phases: list[str] = []  # the phase each result ran in
        self.phase = GROW
        self.step = -1  # 0-based index of the running step
        self.started = 0.0  # run time the running step began
        self.drain_from = self.drain_until = 0.0
        self.done = False
        self.last_move: M | None = None
        self._step_phase = GROW
        self._pending: M | None = None
        self._window: tuple[float, Any] | None = None
        self._mid: Any = None
        self._opening: tuple[float, Any] | None = None

    # What a subclass provides.
    def _step_time(self) -> float:
        raise NotImplementedError

    def _first(self) -> M:
        raise NotImplementedError

    def _ends(self, move: M) -> bool:
        raise NotImplementedError

    def _enter(self, move: M) -> None:
        """Take up the move's level (the step about to begin)."""
        raise NotImplementedError

    def _enter_drain(self) -> None:
        raise NotImplementedError

    def _hold(self) -> Any:
        raise NotImplementedError

    def _idle(self) -> Any:
        raise NotImplementedError

    def _judge(self, before: Any, mid: Any, after: Any, seconds: float) -> R:
        raise NotImplementedError

    def _decide(self) -> M:
        raise NotImplementedError

    def _drained(self, run_time: float) -> bool:
        """Whether the drain may end (its minimum, `drain_until`, has passed)."""
        return True

    @property
    def current_step(self) -> int:
        """1-based index of the running (or last) step; 0 before the first tick."""
        return self.step + 1

    def tick(self, run_time: float, snapshot: Callable[[], Any]) -> Any:
        if self.done:
            return None
        if self.step < 0:
            self._begin(self._first(), run_time, snapshot)
        elif self.phase == DRAIN:
            if run_time < self.drain_until or not self._drained(run_time):
                return self._idle()
            assert self._pending is not None
            self._begin(self._pending, run_time, snapshot)
        elif run_time >= self.started + self._step_time():
            result = self._close(run_time, snapshot)
            move = self._decide()
            self.last_move = move
            if self.on_move is not None:
                self.on_move(result, move)
            if self._ends(move):
                self.done, self.phase = True, DONE
                return None
            if move.drain_s > 0:
                self.phase, self._pending = DRAIN, move
                self.drain_from, self.drain_until = run_time, run_time + move.drain_s
                self._enter_drain()
                return self._idle()
            self._begin(move, run_time, snapshot)
        transient = self.thresholds.step_transient_fraction * self._step_time()
        steady_from = self.started + transient
        halfway = steady_from + (self._step_time() - transient) / 2
        if self._window is None and run_time >= steady_from:
            self._window = (run_time, snapshot())
        elif self._window is not None and self._mid is None and run_time >= halfway:
            self._mid = snapshot()
        return self._hold()

    def _begin(self, move: M, run_time: float, snapshot: Callable[[], Any]) -> None:
        self._enter(move)
        self.step += 1
        self.phase = self._step_phase = move.phase
        self.started = run_time
        self._window, self._mid = None, None
        self._opening = (run_time, snapshot())

    def _close(self, run_time: float, snapshot: Callable[[], Any]) -> R:
        # The steady part; a step whose ticks came too late for one is judged whole (never skipped:
        # the next move needs a result).
        started, before = self._window or self._opening or (run_time, snapshot())
        result = self._judge(before, self._mid, snapshot(), run_time - started)
        self.results.append(result)
        self.phases.append(self._step_phase)
        if self.on_result is not None:
            self.on_result(result)
        return result


@dataclass
class AdaptiveHunt(SteppedClock[StepResult, Move]):
    """The adaptive hunt of users on the shared clock (`SteppedClock`).

    At each tick it returns (users, spawn rate) for the running step, or (0, rate) while the
    target drains after a bad breach, or None once the hunt is over (which stops the test).
    """

    plan: AdaptivePlan
    thresholds: Thresholds
    stop_on_break: bool = True
    on_result: Callable[[StepResult], None] | None = None
    on_move: Callable[[StepResult, Move], None] | None = None

    def __post_init__(self) -> None:
        self._start_clock()
        self.users = 0
        self.spawn_rate = 1.0

    def _step_time(self) -> float:
        return self.plan.step_time_s

    def _first(self) -> Move:
        return Move(GROW, self.plan.start_users, "the first step")

    def _ends(self, move: Move) -> bool:
        return move.users is None

    def _enter(self, move: Move) -> None:
        assert move.users is not None
        self.spawn_rate = self._rate(move.users - self.users)
        self.users = move.users

    def _enter_drain(self) -> None:
        self.spawn_rate = self._rate(self.users)
        self.users = 0

    def _hold(self) -> Tick:
        return self.users, self.spawn_rate

    _idle = _hold  # 0 users while draining

    def _judge(self, before: Snapshot, mid: Snapshot | None, after: Snapshot, seconds: float) -> StepResult:
        return judge(self.step, self.users, before, after, seconds, self.thresholds)

    def _decide(self) -> Move:
        return next_move(self.results, self.phases, self.plan, self.thresholds, self.stop_on_break)

    def _rate(self, jump: int) -> float:
        # The whole jump within about a second, as the fixed hunt adds a step; beyond 100 users at
        # 100/s unless that would not fit in half the transient.
        transient = self.thresholds.step_transient_fraction * self.plan.step_time_s
        return float(max(1, min(abs(jump), max(SPAWN_RATE_CAP, abs(jump) / max(1.0, transient / 2)))))


def choose_hunt(hunt: str, step: object, start: object, step_flag: str, start_flag: str, what: str = "hunt") -> str:
    """adaptive or fixed: `hunt` (--hunt) when given, else fixed exactly when the fixed hunt's step
    (`step_flag`) is given; ValueError naming both flags when they contradict each other. Shared by
    the user hunt (--step-users/--start-users) and the rate hunt (--step-rate/--start-rate)."""
    if hunt and hunt not in HUNTS:
        raise ValueError(f"--hunt {hunt!r} is not a hunt: use {' or '.join(HUNTS)}")
    if hunt == ADAPTIVE and step is not None:
        raise ValueError(f"{step_flag} sets the fixed {what}'s equal steps: drop it for --hunt adaptive "
                         f"(whose first step is {start_flag}), or use --hunt fixed")
    if start is not None and (hunt == FIXED or (not hunt and step is not None)):
        raise ValueError(f"{start_flag} is the adaptive {what}'s first step: the fixed hunt (--hunt fixed or "
                         f"{step_flag}) steps by {step_flag}; give one of the two")
    if hunt:
        return str(hunt)
    return FIXED if step is not None else ADAPTIVE


def hunt_kind(options: Any) -> str:
    """adaptive or fixed for the user hunt (see `choose_hunt`)."""
    return choose_hunt(getattr(options, "hunt", None) or "", getattr(options, "step_users", None),
                       getattr(options, "start_users", None), "--step-users", "--start-users")


__all__ = ["AdaptiveHunt", "AdaptivePlan", "Move", "SteppedClock", "Stepping", "bad_breach", "choose_hunt", "drain_seconds",
           "failed", "hunt_kind", "next_move"]
