"""The adaptive step hunt's decisions and its clock (Locust-free modules, tested in-process).

A closed-loop model with a known knee stands in for the target: W workers of service time S,
users thinking Z between requests, so X(N) = min(N / (S + Z), W / S) and N* = W (S + Z) / S. The
hunt sees only what Locust would give it: per-step requests, response times and failures.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass

import pytest

from loadlab.analysis import analyze_steps
from loadlab.contract.scenarios import BAD_BREACH_P95_FACTOR, HUNT_BRACKET
from loadlab.contract.slo import judge
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS as TH
from loadlab.contract.thresholds import Thresholds
from locust_tests.plugins.adaptive import AdaptiveHunt, AdaptivePlan, Move, bad_breach, hunt_kind, next_move
from locust_tests.plugins.presets import CONFIRM, DONE, DRAIN, GROW, REFINE, Snapshot, StepResult
from tests.loadlab.synthetic import model_step

HOLD = 10.0


@dataclass(frozen=True)
class Server:
    workers: int
    service_s: float
    think_s: float = 0.5
    error_from: int | None = None  # users from which every request fails (a server that melts down)
    stalled_at: int | None = None  # the host stalled while this level ran: 60 % of the throughput...
    stalled_p95_ms: float = 900.0  # ...and this p95

    @property
    def capacity(self) -> float:
        return self.workers / self.service_s

    @property
    def knee(self) -> float:
        return self.workers * (self.service_s + self.think_s) / self.service_s

    def rps(self, users: int) -> float:
        return min(users / (self.service_s + self.think_s), self.capacity)

    def response_s(self, users: int) -> float:
        return max(self.service_s, users / self.rps(users) - self.think_s)

    def p95_ms(self, users: int) -> float:
        return 1000 * self.response_s(users) * 1.05

    def step(self, index: int, users: int, th: Thresholds = TH) -> StepResult:
        """One step's steady part as the hunt judges it, by the contract's SLO judge."""
        requests = round(self.rps(users) * HOLD * (0.6 if users == self.stalled_at else 1.0))
        failures = requests if self.error_from is not None and users >= self.error_from else 0
        p95 = self.stalled_p95_ms if users == self.stalled_at else self.p95_ms(users)
        slo = judge(requests, failures, p95, th)
        return StepResult(index + 1, users, HOLD, requests, failures, p95, slo.breached, slo.detail,
                          1000 * self.response_s(users))


def run(server: Server, plan: AdaptivePlan = AdaptivePlan(step_time_s=HOLD), stop_on_break: bool = True,
        th: Thresholds = TH):
    """Every decision of a whole hunt: [(result, move)]."""
    results: list[StepResult] = []
    phases: list[str] = []
    moves: list[tuple[StepResult, Move]] = []
    users, phase = plan.start_users, GROW
    for _ in range(plan.max_steps + 1):
        results.append(server.step(len(results), users, th))
        phases.append(phase)
        move = next_move(results, phases, plan, th, stop_on_break)
        moves.append((results[-1], move))
        if move.users is None:
            return moves
        users, phase = move.users, move.phase
    raise AssertionError(f"the hunt did not end within {plan.max_steps} steps: {[r.users for r, _ in moves]}")


def users_of(moves) -> list[int]:
    return [r.users for r, _ in moves]


def verdict_of(moves, server: Server):
    steps = [model_step(i, r.users, server.workers, server.service_s, server.think_s) for i, (r, _) in enumerate(moves)]
    return analyze_steps(steps, TH)


@pytest.mark.parametrize("server", [Server(4, 0.1), Server(8, 0.1), Server(16, 0.08), Server(16, 0.16, 1.0), Server(64, 0.1),
                                    Server(2, 0.041, 2.0)],
                         ids=lambda s: f"W{s.workers}-knee{s.knee:.0f}")
def test_the_hunt_grows_by_doubling_then_brackets_the_knee_and_confirms_the_break(server):
    moves = run(server)
    users = users_of(moves)
    phases = [m.phase for _, m in moves]
    # grow: 10, 20, 40, ... while linear; the first step past the knee lies below 2 N*.
    grown = [u for u, (_, m) in zip([10, *users], moves) if m.phase == GROW]
    assert users[: len(grown) + 1] == [10 * 2**i for i in range(len(grown) + 1)]
    assert server.knee < users[len(grown)] <= 2 * server.knee
    assert phases[-1] == DONE and REFINE in phases
    # Bracketed: two measured steps around N*, within 4 % of it (at least 2 users).
    below = max(u for u in users if u < round(server.knee, 6))
    above = min(u for u in users if u >= round(server.knee, 6))
    assert above - below <= max(HUNT_BRACKET * server.knee, 2) + 1, users
    # The break is confirmed: a second breaching step above the first, or a bad one.
    breached = sorted(r.users for r, _ in moves if r.breached)
    assert len(breached) >= 2 or any(bad_breach(r, TH) for r, _ in moves), users
    # The cost grows with the logarithm of the knee, not with the knee.
    assert len(users) <= math.log2(server.knee / 10) + 9, users
    # And the verdict of those steps, in the order they ran, is the operational laws' answer.
    verdict = verdict_of(moves, server)
    assert verdict.knee is not None and verdict.knee.users == pytest.approx(server.knee, rel=0.05), users
    assert verdict.capacity_rps == pytest.approx(server.capacity, rel=0.02), users


def test_a_knee_beyond_max_users_ends_the_hunt_there_linear():
    moves = run(Server(64, 0.05, 1.0), AdaptivePlan(step_time_s=HOLD, max_users=500))  # N* = 1344
    assert users_of(moves) == [10, 20, 40, 80, 160, 320, 500]
    assert moves[-1][1].users is None and "--max-users (500) reached" in moves[-1][1].why


def test_a_bad_breach_backs_off_to_drain_and_nothing_goes_that_high_again():
    # From 160 users every request fails: the doubling overshoots into it.
    server = Server(16, 0.08, error_from=150)  # N* = 116
    moves = run(server)
    users = users_of(moves)
    assert users[:5] == [10, 20, 40, 80, 160]
    drained = moves[4][1]
    assert drained.drain_s > 0 and drained.users is not None and drained.users < 150
    assert all(u < 160 for u in users[5:]), users
    assert [m.drain_s for _, m in moves].count(0.0) == len(moves) - 1  # no other step needed a back-off
    verdict = verdict_of(moves[:-1] if moves[-1][0].users >= 150 else moves, server)
    assert verdict.knee is not None and verdict.knee.users == pytest.approx(server.knee, rel=0.05), users


def test_a_stalled_step_that_more_users_contradict_does_not_end_the_growth():
    # At 40 users the host stalled: slow and flat, as if past the knee. Once fewer users drive
    # clearly more throughput and more users meet the SLO again, the stall is discounted and the
    # hunt grows on to the real knee.
    server = Server(16, 0.08, stalled_at=40)
    moves = run(server)
    users = users_of(moves)
    assert users[:3] == [10, 20, 40] and max(users) > server.knee, users
    assert GROW in [m.phase for _, m in moves[3:]] and 92 in users, users  # x2 again after the stall
    below = max(u for u in users if u < round(server.knee, 6))
    above = min(u for u in users if u >= round(server.knee, 6))
    assert above - below <= max(HUNT_BRACKET * server.knee, 2) + 1, users
    verdict = verdict_of(moves, server)  # the model's steps (without the stall): the same knee
    assert verdict.knee is not None and verdict.knee.users == pytest.approx(server.knee, rel=0.05), users


def test_a_stalled_bad_step_past_the_knee_still_leaves_the_knee_to_find_below_it():
    # Measured on the busy 2-core box: 160 users (past the knee at 116) stalled, 68 req/s and p95
    # 2.3 s, a bad breach; 98 users then drove more (linear), so the stall explains nothing of the
    # knee. The hunt must not stop there: it refines between 98 and 160.
    server = Server(16, 0.16, 1.0, stalled_at=160, stalled_p95_ms=2300.0)
    moves = run(server)
    users = users_of(moves)
    assert users[:5] == [10, 20, 40, 80, 160] and moves[4][1].drain_s > 0, users
    assert all(u < 160 for u in users[5:]) and len(users) >= 8, users
    below = max(u for u in users if u < round(server.knee, 6))
    above = min(u for u in users if u >= round(server.knee, 6))
    assert above - below <= max(HUNT_BRACKET * server.knee, 2) + 1, users
    verdict = verdict_of(moves, server)
    assert verdict.knee is not None and verdict.knee.users == pytest.approx(server.knee, rel=0.05), users


def test_a_step_far_past_the_slo_p95_is_bad_and_drains_for_about_one_cycle():
    server = Server(2, 0.041, 2.0)  # the bundled target's shape: N* ~ 100, and 160 users is p95 ~ 1.2 s
    moves = run(server)
    bad = [(r, m) for r, m in moves if r.p95_ms and r.p95_ms > BAD_BREACH_P95_FACTOR * TH.latency_p95_ms]
    assert bad, users_of(moves)
    r, m = bad[0]
    if m.users is not None:  # the hunt went on: it drained first, one cycle N / X = R + Z
        assert m.drain_s == pytest.approx(min(HOLD, max(TH.step_transient_fraction * HOLD, r.users / r.rps)))


def test_an_slo_that_breaks_before_the_knee_needs_no_refinement():
    # Linear up to 116 users, but p95 is 84 ms from the start and grows past 90 ms only on the
    # plateau... with a 85 ms SLO it breaks at once, while throughput still rises linearly.
    strict = dataclasses.replace(TH, latency_p95_seconds=0.083)
    moves = run(Server(16, 0.08), th=strict)
    assert [m.phase for _, m in moves].count(REFINE) == 0, users_of(moves)
    assert users_of(moves) == [10, 12]  # breached at 10 users; the next step (+15 %) confirms it
    assert "the SLO broke at 10 users, confirmed by 12 users breaching too" in moves[-1][1].why


def test_no_stop_on_break_runs_on_to_max_users_but_never_past_a_bad_breach():
    server = Server(4, 0.1)
    plan = AdaptivePlan(step_time_s=HOLD, max_users=60)
    moves = run(server, plan, stop_on_break=False)
    assert "--no-stop-on-break" in moves[-1][1].why
    assert any(r.users == 60 for r, _ in moves) or "breached badly" in moves[-1][1].why


class Clock:
    """Locust's cumulative stats of the model server, advanced one second per tick."""

    def __init__(self, server: Server) -> None:
        self.server, self.users = server, 0
        self.requests, self.failures, self.total_ms = 0, 0, 0.0
        self.times: dict[int, int] = {}

    def advance(self, users: int) -> None:
        if users <= 0:
            return
        n = round(self.server.rps(users))
        ms = round(self.server.response_s(users) * 1000)
        self.requests += n
        self.failures += n if self.server.error_from is not None and users >= self.server.error_from else 0
        self.total_ms += n * ms
        self.times[ms] = self.times.get(ms, 0) + n

    def snapshot(self) -> Snapshot:
        return Snapshot(self.requests, self.failures, dict(self.times), self.total_ms)


def drive(hunt: AdaptiveHunt, server: Server, until: float = 2000) -> list[tuple[float, object]]:
    clock, ticks, t = Clock(server), [], 0.0
    while t <= until:
        tick = hunt.tick(t, clock.snapshot)
        ticks.append((t, tick))
        if tick is None:
            return ticks
        clock.advance(tick[0])
        t += 1.0
    raise AssertionError("the hunt did not stop")


def test_the_hunt_runs_on_the_shape_clock_with_one_hold_per_step_and_a_drain_after_a_bad_breach():
    moves: list[Move] = []
    hunt = AdaptiveHunt(AdaptivePlan(step_time_s=HOLD), TH, on_move=lambda r, m: moves.append(m))
    ticks = drive(hunt, Server(16, 0.08, error_from=150))
    levels = [tick[0] for _, tick in ticks if tick]
    assert levels[:10] == [10] * 10 and levels[10:20] == [20] * 10  # one 10 s hold per step
    assert hunt.results[4].users == 160 and hunt.results[4].breached
    # After the failing step: 0 users for the drain, then the next step, lower.
    start = 50  # 160 users ran from t=40 to t=50
    drain = moves[4].drain_s
    assert 0 < drain <= HOLD
    assert [tick[0] for t, tick in ticks if tick and start <= t < start + drain] == [0] * math.ceil(drain)
    assert max(hunt.results[5:], key=lambda r: r.users).users < 150
    assert hunt.phase == DONE and ticks[-1][1] is None and hunt.tick(ticks[-1][0] + 1, lambda: Snapshot(0, 0, {})) is None
    assert hunt.current_step == len(hunt.results)
    # Each step is judged on its steady part only: the 160-user step's 10 s hold minus 30 %.
    assert hunt.results[4].seconds == pytest.approx(HOLD * (1 - TH.step_transient_fraction), abs=1.0)
    assert all(r.mean_response_ms for r in hunt.results)


def test_the_phase_is_reported_while_it_runs():
    phases: list[str] = []
    hunt = AdaptiveHunt(AdaptivePlan(step_time_s=HOLD), TH)
    clock, t = Clock(Server(16, 0.08, error_from=150)), 0.0
    while (tick := hunt.tick(t, clock.snapshot)) is not None:
        if not phases or phases[-1] != hunt.phase:
            phases.append(hunt.phase)
        clock.advance(tick[0])
        t += 1.0
    assert phases[0] == GROW and DRAIN in phases and REFINE in phases and hunt.phase == DONE
    assert set(phases) <= {GROW, REFINE, CONFIRM, DRAIN}


def options(**given) -> argparse.Namespace:
    return argparse.Namespace(**{"hunt": None, "step_users": None, "start_users": None, **given})


@pytest.mark.parametrize(("given", "kind"), [
    ({}, "adaptive"), ({"step_users": 5}, "fixed"), ({"hunt": "fixed"}, "fixed"), ({"start_users": 50}, "adaptive"),
    ({"hunt": "adaptive", "start_users": 50}, "adaptive"), ({"hunt": "fixed", "step_users": 5}, "fixed"),
])
def test_step_users_chooses_the_fixed_hunt_and_nothing_the_adaptive_one(given, kind):
    assert hunt_kind(options(**given)) == kind


@pytest.mark.parametrize(("given", "flag"), [
    ({"hunt": "adaptive", "step_users": 5}, "--step-users"),
    ({"hunt": "fixed", "start_users": 5}, "--start-users"),
    ({"step_users": 5, "start_users": 5}, "--start-users"),
    ({"hunt": "bisect"}, "--hunt"),
])
def test_contradicting_hunt_flags_are_refused_by_name(given, flag):
    with pytest.raises(ValueError, match=flag):
        hunt_kind(options(**given))


@pytest.mark.parametrize("bad", [dict(start_users=0), dict(step_time_s=0), dict(start_users=20, max_users=10)])
def test_adaptive_plan_rejects_nonsense(bad):
    with pytest.raises(ValueError, match="--"):
        AdaptivePlan(**bad)
