"""The adaptive rate hunt's decisions and its clock (Locust-free modules, tested in-process), and the
open-model verdict on steps that ran out of order.

A fluid open-model server stands in for the target: W workers of service time S, so a capacity
X = W / S. A step offered a rate above X completes X per second, and its backlog, and so its
corrected latency, grows through the hold. Each step is judged by the contract's open-model judge
(`judge_step`), exactly as the live hunt judges it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
from dataclasses import dataclass

import pytest

from loadlab.contract.openmodel import judge_step
from loadlab.contract.scenarios import HUNT_BRACKET
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS, Thresholds
from loadlab.openmodel import analyze_samples
from loadlab.steps import resource_series
from locust_tests.plugins.openmodel import LatencyHistogram, RateSnapshot, RateStepResult
from locust_tests.plugins.presets import CONFIRM, DONE, DRAIN, GROW, REFINE
from locust_tests.plugins.rateadaptive import (
    AdaptiveRateHunt,
    RateAdaptivePlan,
    RateMove,
    bad_breach,
    next_rate_move,
    rate_hunt_kind,
    tidy,
)
from tests.helpers import PYTHON, REPO_ROOT
from tests.loadlab.open_synthetic import open_run

HOLD = 10.0
TH = dataclasses.replace(DEFAULT_THRESHOLDS, latency_p95_seconds=1.0)  # the capacity proof's SLO


@dataclass(frozen=True)
class Server:
    workers: int
    service_s: float
    hiccup_at: float | None = None  # the host stalled while this rate ran: its latency grew
    fails_from: float | None = None  # from this rate every request fails

    @property
    def capacity(self) -> float:
        return self.workers / self.service_s

    def step(self, index: int, rate: float, th: Thresholds = TH) -> RateStepResult:
        seconds = HOLD * (1 - th.step_transient_fraction)
        c = self.capacity
        scheduled = round(rate * seconds)
        requests = round(min(rate, c) * seconds)
        failures = requests if self.fails_from is not None and rate >= self.fails_from else 0
        t0 = th.step_transient_fraction * HOLD

        def latency_ms(t: float) -> float:  # S plus the wait behind the backlog built since the step began
            return 1000 * (self.service_s + max(0.0, rate - c) * t / c)

        first, second = latency_ms(t0 + seconds / 4), latency_ms(t0 + 3 * seconds / 4)
        p95 = 1.05 * latency_ms(t0 + 0.95 * seconds)
        if rate == self.hiccup_at:
            second, p95 = 3 * first, 1.5 * th.latency_p95_ms
        judgement = judge_step(scheduled, requests, failures, 0, p95, first, second, th, seconds, 1000 * self.service_s)
        return RateStepResult(index + 1, rate, seconds, scheduled, requests, failures, 0, 0, p95, p95,
                              1000 * self.service_s, first, second, judgement)


PLAN = RateAdaptivePlan(step_time_s=HOLD)


def run(server: Server, plan: RateAdaptivePlan = PLAN, stop_on_break: bool = True,
        th: Thresholds = TH) -> list[tuple[RateStepResult, RateMove]]:
    """Every decision of a whole hunt: [(result, move)]."""
    results: list[RateStepResult] = []
    phases: list[str] = []
    moves = []
    rate, phase = plan.start_rate, GROW
    for _ in range(plan.max_steps + 1):
        results.append(server.step(len(results), rate, th))
        phases.append(phase)
        move = next_rate_move(results, phases, plan, th, stop_on_break)
        moves.append((results[-1], move))
        if move.rate is None:
            return moves
        rate, phase = move.rate, move.phase
    raise AssertionError(f"the hunt did not end within {plan.max_steps} steps: {[r.rate for r, _ in moves]}")


def rates_of(moves) -> list[float]:
    return [r.rate for r, _ in moves]


def bracket(moves) -> tuple[float, float]:
    """(highest sustained rate below the break, the break): the lowest unsustained rate."""
    hi = min(r.rate for r, _ in moves if not r.sustained)
    return max(r.rate for r, _ in moves if r.sustained and r.rate < hi), hi


@pytest.mark.parametrize("server", [Server(16, 0.4), Server(16, 0.08), Server(4, 0.1), Server(2, 0.041),
                                    Server(32, 0.2), Server(8, 0.9)], ids=lambda s: f"X{s.capacity:.0f}")
def test_the_rate_hunt_doubles_then_brackets_the_break_to_a_few_percent_and_confirms_it(server):
    moves = run(server)
    rates = rates_of(moves)
    phases = [m.phase for _, m in moves]
    grown = sum(1 for p in phases if p == GROW)
    assert rates[: grown + 1] == [5 * 2**i for i in range(grown + 1)]  # x2 from --start-rate while sustained
    assert phases[-1] == DONE and moves[-1][1].why.startswith("not sustained from")
    lo, hi = bracket(moves)
    assert hi - lo <= HUNT_BRACKET * hi + 1e-9, rates
    # The break lies just past the capacity: the judge tolerates a 5 % shortfall and the requests in flight.
    assert server.capacity <= hi <= 1.12 * server.capacity, rates
    # Confirmed: a second unsustained step up to 15 % above the break, or a bad breach.
    assert any(not r.sustained and hi < r.rate <= 1.15 * hi * 1.005 for r, _ in moves) \
        or any(bad_breach(r, TH) for r, _ in moves), rates
    # Far fewer steps than equal steps to the same precision would take (to the break, and one more).
    assert len(rates) <= hi / (hi - lo) / 2, rates


def test_the_first_refinement_probes_just_below_the_capacity_an_overloaded_step_measured():
    moves = run(Server(16, 0.4))  # X = 40: 5, 10, 20, 40 (sustained: exactly X), 80 (overloaded)
    assert rates_of(moves)[:5] == [5, 10, 20, 40, 80]
    assert moves[4][1].phase == REFINE and "capacity measured while overloaded (40.0 req/s)" in moves[4][1].why
    assert moves[4][1].rate == tidy(40 * (1 + HUNT_BRACKET))  # just above the sustained 40, where X lies
    assert len(moves) <= 8, rates_of(moves)


def test_a_bad_breach_drains_the_queue_and_no_later_step_goes_that_high():
    moves = run(Server(16, 0.4))
    bad = [(i, r, m) for i, (r, m) in enumerate(moves) if bad_breach(r, TH)]
    assert bad, rates_of(moves)
    i, r, m = bad[0]
    assert r.rate == 80 and m.drain_s > 0  # 2 X: corrected p95 far past the SLO
    # The backlog it left (40/s short over the 10 s step) served at 40/s, plus a response: a whole hold here.
    assert m.drain_s == pytest.approx(min(HOLD, (r.scheduled - r.requests) * HOLD / r.seconds / r.achieved_rps + 0.4))
    assert all(later.rate < 80 for later, _ in moves[i + 1:]), rates_of(moves)
    assert sum(1 for _, m in moves if m.drain_s > 0) == len(bad) - (1 if moves[-1][1].rate is None
                                                                    and bad_breach(moves[-1][0], TH) else 0)


def test_failures_are_a_bad_breach_too():
    moves = run(Server(16, 0.08, fails_from=150))  # X = 200, but everything fails from 150/s
    failing = [(r, m) for r, m in moves if r.failures]
    assert failing and all(bad_breach(r, TH) for r, _ in failing)
    assert failing[0][1].drain_s > 0 or failing[0][1].rate is None
    lo, hi = bracket(moves)
    assert hi <= 160 and hi - lo <= HUNT_BRACKET * hi + 1e-9, rates_of(moves)


def test_a_latency_hiccup_below_a_sustained_rate_does_not_stop_the_growth():
    # At 20/s the host stalled: latency grew and passed the SLO. 40/s is then sustained, so the
    # stall is discounted and the hunt finds the real break.
    server = Server(16, 0.4, hiccup_at=20)
    moves = run(server)
    rates = rates_of(moves)
    assert not moves[2][0].sustained and moves[2][1].phase == CONFIRM and "latency alone" in moves[2][1].why
    assert rates[:4] == [5, 10, 20, 23] and moves[3][0].sustained, rates  # 23/s held: 20/s was a hiccup
    assert moves[3][1].phase == GROW and 46 in rates, rates  # x2 again
    lo, hi = bracket([(r, m) for r, m in moves if r.rate != 20])
    assert server.capacity <= hi <= 1.12 * server.capacity and hi - lo <= HUNT_BRACKET * hi + 1e-9, rates


def test_a_first_step_already_past_the_capacity_goes_down_first():
    moves = run(Server(4, 0.1), RateAdaptivePlan(start_rate=100, step_time_s=HOLD))  # X = 40
    rates = rates_of(moves)
    assert rates[:3] == [100, 50, 25] and moves[0][1].phase == REFINE, rates
    lo, hi = bracket(moves)
    assert hi - lo <= HUNT_BRACKET * hi + 1e-9 and 40 <= hi <= 45, rates


def test_max_rate_ends_a_hunt_that_sustains_everything():
    moves = run(Server(64, 0.01), RateAdaptivePlan(step_time_s=HOLD, max_rate=300))  # X = 6400
    assert rates_of(moves) == [5, 10, 20, 40, 80, 160, 300]
    assert moves[-1][1].why == "--max-rate (300) reached, every step sustained"


def test_no_stop_on_break_runs_on_but_never_past_a_bad_breach():
    moves = run(Server(16, 0.4), RateAdaptivePlan(step_time_s=HOLD, max_rate=60), stop_on_break=False)
    assert "--no-stop-on-break" in moves[-1][1].why and all(r.rate <= 60 for r, _ in moves)


class Clock:
    """The run's cumulative totals against the fluid server, advanced one second per tick."""

    def __init__(self, server: Server) -> None:
        self.server, self.backlog = server, 0.0
        self.scheduled = self.requests = 0
        self.corrected = LatencyHistogram()

    def advance(self, rate: float) -> None:
        c = self.server.capacity
        served = min(rate + self.backlog, c)
        self.backlog += rate - served
        self.scheduled += round(rate)
        self.requests += round(served)
        for _ in range(round(served)):
            self.corrected.observe(self.server.service_s + self.backlog / c)

    def snapshot(self) -> RateSnapshot:
        return RateSnapshot(self.requests, 0, {}, 1000 * self.server.service_s * self.requests, self.scheduled, 0, 0,
                            tuple(self.corrected.cumulative()), self.corrected.total)

    def quiet(self) -> bool:
        return self.backlog < 1


def drive(hunt: AdaptiveRateHunt, clock: Clock, until: float = 2000) -> list[tuple[float, float | None]]:
    ticks, t = [], 0.0
    while t <= until:
        rate = hunt.tick(t, clock.snapshot)
        ticks.append((t, rate))
        if rate is None:
            return ticks
        clock.advance(rate)
        t += 1.0
    raise AssertionError("the hunt did not stop")


def test_the_rate_hunt_runs_on_the_shared_clock_and_drains_until_the_queue_is_empty():
    clock = Clock(Server(16, 0.4))
    moves: list[RateMove] = []
    drained: list[tuple[float, bool]] = []
    phases: list[str] = []
    hunt = AdaptiveRateHunt(RateAdaptivePlan(step_time_s=HOLD, arrival_timeout_s=60), TH,
                            on_move=lambda r, m: moves.append(m), quiet=clock.quiet,
                            on_drained=lambda s, q: drained.append((s, q)))
    ticks, t = [], 0.0
    while (rate := hunt.tick(t, clock.snapshot)) is not None:
        ticks.append((t, rate))
        if not phases or phases[-1] != hunt.phase:
            phases.append(hunt.phase)
        clock.advance(rate)
        t += 1.0
    rates = [r for _, r in ticks]
    assert rates[:10] == [5] * 10 and rates[10:20] == [10] * 10  # one 10 s hold per step
    assert hunt.results[4].rate == 80 and not hunt.results[4].sustained
    # After the overloaded step: 0 arrivals until the backlog (40/s short, 10 s) drained at 40/s.
    zero = [t for t, r in ticks if r == 0.0]
    assert zero and zero[0] == 50 and drained and drained[0][1] is True
    assert len([t for t in zero if t < 50 + HOLD + 5]) >= moves[4].drain_s
    assert all(r < 80 for r in hunt.results[5:] for r in [r.rate])
    assert phases[0] == GROW and DRAIN in phases and REFINE in phases and hunt.phase == DONE
    assert set(phases) <= {GROW, REFINE, CONFIRM, DRAIN}
    assert hunt.current_step == len(hunt.results) and hunt.tick(t + 1, clock.snapshot) is None
    # Judged on the steady part only (the hold minus 30 %), with the halfway snapshot for a growing queue.
    assert hunt.results[4].seconds == pytest.approx(HOLD * (1 - TH.step_transient_fraction), abs=1.0)
    assert hunt.results[4].first_half_mean_ms is not None and hunt.results[4].second_half_mean_ms is not None


def test_a_drain_that_never_quiets_ends_at_the_arrival_timeout():
    hunt = AdaptiveRateHunt(RateAdaptivePlan(step_time_s=HOLD, arrival_timeout_s=15), TH, quiet=lambda: False)
    ticks = drive(hunt, Clock(Server(16, 0.4)))
    zero = [t for t, r in ticks if r == 0.0]
    assert zero and zero[:15] == list(range(50, 65)) and 65 not in zero


def options(**given) -> argparse.Namespace:
    return argparse.Namespace(**{"hunt": None, "step_rate": 0.0, "start_rate": None, **given})


@pytest.mark.parametrize(("given", "kind"), [
    ({}, "adaptive"), ({"step_rate": 5.0}, "fixed"), ({"hunt": "fixed"}, "fixed"), ({"start_rate": 8.0}, "adaptive"),
    ({"hunt": "adaptive", "start_rate": 8.0}, "adaptive"), ({"hunt": "fixed", "step_rate": 5.0}, "fixed"),
])
def test_step_rate_chooses_the_fixed_rate_hunt_and_nothing_the_adaptive_one(given, kind):
    assert rate_hunt_kind(options(**given)) == kind


@pytest.mark.parametrize(("given", "flags"), [
    ({"hunt": "adaptive", "step_rate": 5.0}, ("--step-rate", "--hunt adaptive")),
    ({"hunt": "fixed", "start_rate": 5.0}, ("--start-rate", "--hunt fixed")),
    ({"step_rate": 5.0, "start_rate": 5.0}, ("--start-rate", "--step-rate")),
])
def test_contradicting_rate_hunt_flags_are_refused_naming_both(given, flags):
    with pytest.raises(ValueError) as err:
        rate_hunt_kind(options(**given))
    assert all(flag in str(err.value) for flag in flags) and "\n" not in str(err.value)


@pytest.mark.parametrize("bad", [dict(start_rate=0), dict(step_time_s=0), dict(start_rate=20, max_rate=10),
                                 dict(start_rate=float("nan"))])
def test_rate_adaptive_plan_rejects_nonsense(bad):
    with pytest.raises(ValueError, match="--"):
        RateAdaptivePlan(**bad)


META = {"host_cores": 2, "target_workers": 2, "generator_processes": 1}


def test_the_open_model_verdict_reads_adaptive_steps_in_order_of_rate_and_lists_them_as_they_ran():
    # An adaptive hunt's order (a 0 between steps: the drain after an overloaded one) against the
    # same rates run in order: the same break, capacity and highest sustained rate.
    ran = [10, 20, 40, 0, 0, 0, 30, 36, 0, 0, 0, 33, 31.5]
    adaptive = open_run(ran, capacity=31)
    fixed = open_run(sorted(r for r in ran if r), capacity=31)
    a = analyze_samples(adaptive, META, TH, resource_series(adaptive, META))
    f = analyze_samples(fixed, META, TH, resource_series(fixed, META))
    assert [s.offered_rps for s in a.rate_steps] == [r for r in ran if r]  # as they ran
    # In time order the first unsustained step is 40/s, with 20/s the highest sustained before it.
    assert a.brk is not None and f.brk is not None and a.brk.rate == f.brk.rate == 36, (a.summary(), f.summary())
    assert a.max_sustained_rate == f.max_sustained_rate == 33  # 33/s is within the 5 % tolerance of 31
    assert a.capacity_rps == pytest.approx(31, rel=0.02) and f.capacity_rps == pytest.approx(31, rel=0.02)
    assert a.to_dict()["rate_steps"][2]["offered_rps"] == 40


def lab_tab_views_of_a_rate_hunt() -> list[dict]:
    """The Lab tab's view (`labtab.locust_view`) of a rate hunt in its fifth step, and once it ended.

    `labtab` imports Locust, which monkey-patches the importing process with gevent (see conftest.py),
    so the test calls this in a subprocess."""
    from types import SimpleNamespace

    from locust_tests.plugins.labtab import locust_view

    clock = Clock(Server(16, 0.4))
    hunt = AdaptiveRateHunt(PLAN, TH)
    t = 0.0
    while t < 45:  # into the fifth step (80/s)
        clock.advance(hunt.tick(t, clock.snapshot))
        t += 1.0
    shape = SimpleNamespace(hunt=hunt, hunt_phase=hunt.phase)
    runner = SimpleNamespace(stats=SimpleNamespace(history=[]), state="running", user_count=100)
    views = [locust_view(SimpleNamespace(runner=runner, shape_class=shape))]  # type: ignore[arg-type]
    while (rate := hunt.tick(t, clock.snapshot)) is not None:
        clock.advance(rate)
        t += 1.0
    runner.state = "stopped"
    views.append(locust_view(SimpleNamespace(runner=runner, shape_class=shape)))  # type: ignore[arg-type]
    return views


def test_the_lab_tab_without_the_lab_shows_the_rate_hunts_phase_and_how_it_ended():
    probe = ("import json; from tests.locust_tests.test_rateadaptive import lab_tab_views_of_a_rate_hunt as views; "
             "print(json.dumps(views(), default=str))")
    done = subprocess.run([PYTHON, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    running, ended = json.loads(done.stdout.strip().splitlines()[-1])
    assert running["current"]["phase"] == GROW and running["current"]["step"] == 5
    assert running["summary"][0] == "rate hunt: 4 steps judged (each in Locust's log)"
    assert "not sustained from" in ended["summary"][0] and ended["notes"] == []
