"""The adaptive rate hunt: the open model's steps of arrival rate, coarse to fine (issue 17 for issue 12's hunt).

It is the user hunt's design (adaptive.py) on the open model's own step judgement (`judge_rate`,
which goes through the contract's one SLO judge), and it runs on the same clock (`SteppedClock`):

1. grow: x2 arrivals/s from --start-rate while each step is sustained;
2. refine: between the highest sustained rate and the lowest unsustained one until they lie within
   HUNT_BRACKET (4 %) of each other. The first probe goes just below the capacity the overloaded
   steps measured (an open model's throughput while overloaded *is* the ceiling, so one step past
   it says where to look); then the far end of the bracket from the side that held, else the
   geometric middle;
3. confirm: the break, the lowest unsustained rate, confirmed by a second unsustained step up to
   15 % above it (or by a bad breach). A break on latency alone (throughput kept up) is confirmed
   before the hunt refines below it: if the step above is sustained, the break was a hiccup.

An unsustained step on latency alone below a sustained step is a hiccup (`refuted_rate`, as the
verdict judges it) and steers nothing. A bad breach (failures beyond the SLO, nothing completed,
5 % of the arrivals dropped, or corrected p95 past twice the SLO) makes the hunt back off: it offers
0 arrivals until the queue it left has drained (the backlog at the rate it was served, at least
the transient; longer while the load processes still hold queued or in-flight arrivals, up to
--arrival-timeout, after which every queued arrival has been served or dropped); no later step
goes as high again.

`next_rate_move` is the decision, a pure function of the judged steps; `AdaptiveRateHunt` runs
it. Nothing here imports Locust.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from loadlab.contract.openmodel import ARRIVALS_WERE_DROPPED, LATENCY_GROWING, THROUGHPUT_BELOW_OFFERED, refuted_rate
from loadlab.contract.scenarios import (
    BAD_BREACH_DROPPED_FRACTION,
    BAD_BREACH_P95_FACTOR,
    DEFAULT_ARRIVAL_TIMEOUT_S,
    DEFAULT_MAX_RATE,
    DEFAULT_START_RATE,
    DEFAULT_STEP_TIME_S,
    HUNT_BRACKET,
    HUNT_CONFIRM_GROWTH,
    HUNT_GROWTH,
    HUNT_MAX_REFINE,
    HUNT_MAX_STEPS,
)
from loadlab.contract.slo import LATENCY_P95
from loadlab.contract.thresholds import Thresholds

from .adaptive import SteppedClock, choose_hunt
from .openmodel import RateSnapshot, RateStepResult, judge_rate
from .presets import CONFIRM, DONE, GROW, REFINE

SAME_RATE = 0.005  # two rates this close (relative) are the same level
LATENCY_ONLY = {LATENCY_GROWING, LATENCY_P95}


@dataclass(frozen=True)
class RateAdaptivePlan:
    start_rate: float = DEFAULT_START_RATE
    step_time_s: float = DEFAULT_STEP_TIME_S
    max_rate: float = DEFAULT_MAX_RATE
    arrival_timeout_s: float = DEFAULT_ARRIVAL_TIMEOUT_S  # the longest a drain waits for the queue
    growth: float = HUNT_GROWTH
    bracket: float = HUNT_BRACKET
    confirm_growth: float = HUNT_CONFIRM_GROWTH
    max_refine: int = HUNT_MAX_REFINE
    max_steps: int = HUNT_MAX_STEPS

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start_rate) and self.start_rate > 0):
            raise ValueError(f"--start-rate must be a positive number of arrivals per second (got {self.start_rate})")
        if not (math.isfinite(self.step_time_s) and self.step_time_s > 0):
            raise ValueError(f"--step-time must be positive (got {self.step_time_s})")
        if not (math.isfinite(self.max_rate) and self.max_rate >= self.start_rate):
            raise ValueError(f"--max-rate ({self.max_rate:g}) must be at least --start-rate ({self.start_rate:g})")
        if self.growth <= 1 or self.confirm_growth <= 1:
            raise ValueError("the hunt's growth factors must be above 1")


@dataclass(frozen=True)
class RateMove:
    """The hunt's next step: `rate` arrivals/s in `phase`, and why; rate None ends the hunt. A
    positive `drain_s` first offers 0 arrivals at least that long (the back-off after a bad breach)."""

    phase: str
    rate: float | None
    why: str
    drain_s: float = 0.0


def tidy(rate: float, up: bool = False) -> float:
    """`rate` to three significant figures, rounded down (or up): a rate a person can read and type."""
    unit = 10.0 ** (math.floor(math.log10(rate)) - 2)
    scaled = rate / unit
    return round((math.ceil(scaled - 1e-6) if up else math.floor(scaled + 1e-6)) * unit, 10)


def error_ratio(r: RateStepResult) -> float:
    return r.failures / r.requests if r.requests else 0.0


def failed(r: RateStepResult, th: Thresholds) -> bool:
    """Requests failed beyond the SLO, or none completed: the step's throughput counts nothing."""
    return r.requests <= 0 or error_ratio(r) > th.error_ratio


def bad_breach(r: RateStepResult, th: Thresholds) -> bool:
    """An unsustained step the target may not shrug off: failures, silence, many dropped arrivals,
    or corrected p95 far past the SLO (a queue that will take a while to drain)."""
    if r.sustained:
        return False
    return (failed(r, th) or r.dropped > BAD_BREACH_DROPPED_FRACTION * max(1, r.scheduled)
            or (r.corrected_p95_ms is not None and r.corrected_p95_ms > BAD_BREACH_P95_FACTOR * th.latency_p95_ms))


def overloaded(r: RateStepResult, th: Thresholds) -> bool:
    """Completed fewer than it was offered (or dropped some), without failing: its throughput is the ceiling."""
    reasons = r.judgement.reasons
    return (THROUGHPUT_BELOW_OFFERED in reasons or ARRIVALS_WERE_DROPPED in reasons) and not failed(r, th)


def drain_seconds(r: RateStepResult, plan: RateAdaptivePlan, th: Thresholds) -> float:
    """The least time to offer 0 arrivals after the bad step `r`: the backlog it left (its shortfall
    over the whole step) served at the rate it was served, plus one response; at least the transient,
    at most a hold (the shape waits longer while arrivals are still queued or in flight)."""
    low, high = th.step_transient_fraction * plan.step_time_s, plan.step_time_s
    if r.seconds <= 0 or r.achieved_rps <= 0:
        return high
    backlog = max(0, r.scheduled - r.requests - r.dropped) * plan.step_time_s / r.seconds
    return min(high, max(low, backlog / r.achieved_rps + (r.mean_response_ms or 0.0) / 1000.0))


@dataclass
class _RateState:
    """What the judged steps say so far: the bracket around the break, and the capacity."""

    results: Sequence[RateStepResult]
    plan: RateAdaptivePlan
    th: Thresholds

    def __post_init__(self) -> None:
        rs, th = self.results, self.th
        self.measured = [r.rate for r in rs]
        self.ceiling = min((r.rate for r in rs if bad_breach(r, th)), default=math.inf)
        held = [r.rate for r in rs if r.sustained]
        self.unsustained = sorted(r.rate for r in rs if not r.sustained
                                  and not refuted_rate(r.judgement.reasons, r.rate, held))
        self.hi = self.unsustained[0] if self.unsustained else None  # the break so far
        self.lo = max((u for u in held if self.hi is None or u < self.hi), default=None)
        ceiling = [r.achieved_rps for r in rs if overloaded(r, th)]
        self.capacity = statistics.median(ceiling) if ceiling else None

    def allowed(self, rate: float) -> bool:
        return (0 < rate <= self.plan.max_rate and rate < self.ceiling
                and not any(abs(rate - m) <= SAME_RATE * m for m in self.measured))

    def bracketed(self) -> bool:
        return self.lo is not None and self.hi is not None and self.hi - self.lo <= self.plan.bracket * self.hi + 1e-9

    def said(self) -> str:
        """The finding as the hunt leaves it, for its last log line."""
        parts = []
        if self.capacity is not None:
            parts.append(f"capacity ~{self.capacity:.1f} req/s (achieved while overloaded)")
        if self.lo is not None and self.hi is not None:
            parts.append(f"sustained {self.lo:g}/s, not {self.hi:g}/s")
        return "; " + ", ".join(parts) if parts else ""

    def refine(self) -> tuple[float, str] | None:
        """The next probe between the highest sustained rate and the break, or None."""
        lo, hi, b, c = self.lo, self.hi, self.plan.bracket, self.capacity
        assert hi is not None
        if lo is None:  # the first step already failed: go down until one is sustained
            cand = tidy(hi / self.plan.growth)
            return (cand, f"not sustained at {hi:g}/s, the lowest rate so far: going down") if self.allowed(cand) else None
        low, high = tidy(lo * (1 + b), up=False), tidy(hi * (1 - b), up=True)  # each brackets from one side
        # Clamped into the bracket's ends: a capacity a little below a sustained rate (the judge's
        # tolerances) probes just above that rate; one above the break probes just below it.
        if c is not None and c >= lo * (1 - b):
            guess, basis = c * (1 - b / 2), f"just below the capacity measured while overloaded ({c:.1f} req/s)"
        else:
            guess, basis = math.sqrt(lo * hi), "the geometric middle"
        cand = tidy(min(max(guess, low), high)) if low <= high else tidy((lo + hi) / 2)
        if not (lo < cand < hi) or not self.allowed(cand):
            cand = tidy((lo + hi) / 2)
        if lo < cand < hi and self.allowed(cand):
            return cand, f"bracketing the break between {lo:g}/s (sustained) and {hi:g}/s (not) to {b:.0%}: {basis}"
        return None


def next_rate_move(results: Sequence[RateStepResult], phases: Sequence[str], plan: RateAdaptivePlan, th: Thresholds,
                   stop_on_break: bool = True) -> RateMove:
    """The step after `results` (the judged steps in the order they ran; `phases`: the phase each ran in)."""
    last = results[-1]
    drain = drain_seconds(last, plan, th) if bad_breach(last, th) else 0.0

    def go(phase: str, rate: float, why: str) -> RateMove:
        return RateMove(phase, rate, why, drain)

    s = _RateState(results, plan, th)

    def stop(why: str) -> RateMove:
        return RateMove(DONE, None, why + s.said())

    if len(results) >= plan.max_steps:
        return stop(f"the hunt's step limit ({plan.max_steps}) is reached")
    top = max(s.measured)
    hi = s.hi
    # 1. grow while every step is sustained.
    if hi is None:
        if top >= plan.max_rate:
            return stop(f"--max-rate ({plan.max_rate:g}) reached, every step sustained")
        return go(GROW, min(plan.max_rate, tidy(top * plan.growth)),
                  f"{last.rate:g}/s sustained ({last.achieved_rps:.1f} req/s achieved)")
    bad = [r.rate for r in results if bad_breach(r, th)]
    confirm_at = min(plan.max_rate, tidy(hi * plan.confirm_growth))
    confirming = [u for u in s.unsustained if hi < u <= confirm_at * (1 + SAME_RATE)]
    # A break on latency alone that kept up with its arrivals may be a hiccup (refuted once a higher
    # rate is sustained): look above it before refining below it.
    first = next(r for r in results if r.rate == hi and not r.sustained)
    if set(first.judgement.reasons) <= LATENCY_ONLY and hi not in bad and not confirming \
            and confirm_at > hi and s.allowed(confirm_at):
        return go(CONFIRM, confirm_at, f"{hi:g}/s was not sustained on latency alone: confirming above it first")
    # 2. refine between the highest sustained rate and the break.
    if not s.bracketed() and phases.count(REFINE) < plan.max_refine:
        move = s.refine()
        if move is not None:
            return go(REFINE, *move)
    # 3. confirm the break: it breached badly, or so did a step up to 15 % above it, or one did.
    if hi not in bad and not confirming:
        if confirm_at > hi and s.allowed(confirm_at):
            return go(CONFIRM, confirm_at, f"confirming the break at {hi:g}/s")
        if not bad:
            return stop(f"not sustained at {hi:g}/s (unconfirmed: --max-rate reached)")
    if stop_on_break:
        how = ("breaching badly" if hi in bad else f"{min(confirming):g}/s not sustained either" if confirming
               else f"a bad breach at {min(bad):g}/s")
        return stop(f"not sustained from {hi:g}/s, confirmed by {how}")
    if bad:
        return stop(f"--no-stop-on-break, but {min(bad):g}/s breached badly: the hunt loads the target no further")
    if top >= plan.max_rate:
        return stop(f"--max-rate ({plan.max_rate:g}) reached (--no-stop-on-break)")
    return go(CONFIRM, min(plan.max_rate, tidy(top * plan.growth)), "--no-stop-on-break: on to --max-rate")


@dataclass
class AdaptiveRateHunt(SteppedClock[RateStepResult, RateMove]):
    """The adaptive rate hunt on the user hunt's clock: at each tick the offered rate of the running
    step, 0 while the queue drains after a bad breach, or None once the hunt is over.

    `quiet` (optional) tells whether the load processes hold no queued or in-flight arrival; a
    drain lasts its least time and then until quiet, or `plan.arrival_timeout_s` at most.
    `on_drained(seconds, quiet)` is called when a drain ends."""

    plan: RateAdaptivePlan
    thresholds: Thresholds
    stop_on_break: bool = True
    on_result: Callable[[RateStepResult], None] | None = None
    on_move: Callable[[RateStepResult, RateMove], None] | None = None
    quiet: Callable[[], bool] | None = None
    on_drained: Callable[[float, bool], None] | None = None

    def __post_init__(self) -> None:
        self._start_clock()
        self.rate = 0.0

    @property
    def break_rate(self) -> float | None:
        """The lowest unsustained rate so far (not counting hiccups), or None."""
        return _RateState(self.results, self.plan, self.thresholds).hi if self.results else None

    def _step_time(self) -> float:
        return self.plan.step_time_s

    def _first(self) -> RateMove:
        return RateMove(GROW, self.plan.start_rate, "the first step")

    def _ends(self, move: RateMove) -> bool:
        return move.rate is None

    def _enter(self, move: RateMove) -> None:
        assert move.rate is not None
        self.rate = move.rate

    def _enter_drain(self) -> None:
        self.rate = 0.0

    def _hold(self) -> float:
        return self.rate

    _idle = _hold

    def _drained(self, run_time: float) -> bool:
        quiet = self.quiet() if self.quiet is not None else True
        waited = run_time - self.drain_from
        if quiet or waited >= max(self.drain_until - self.drain_from, self.plan.arrival_timeout_s):
            if self.on_drained is not None:
                self.on_drained(waited, quiet)
            return True
        return False

    def _judge(self, before: RateSnapshot, mid: RateSnapshot | None, after: RateSnapshot,
               seconds: float) -> RateStepResult:
        light = min((r.mean_response_ms for r in self.results if r.mean_response_ms), default=None)
        return judge_rate(self.step, self.rate, before, mid, after, seconds, self.thresholds, light)

    def _decide(self) -> RateMove:
        return next_rate_move(self.results, self.phases, self.plan, self.thresholds, self.stop_on_break)


def rate_hunt_kind(options: Any) -> str:
    """adaptive or fixed for the rate hunt (see `adaptive.choose_hunt`)."""
    return choose_hunt(getattr(options, "hunt", None) or "", getattr(options, "step_rate", None) or None,
                       getattr(options, "start_rate", None), "--step-rate", "--start-rate", "rate hunt")


__all__ = ["AdaptiveRateHunt", "RateAdaptivePlan", "RateMove", "bad_breach", "drain_seconds", "next_rate_move",
           "overloaded", "rate_hunt_kind", "tidy"]
