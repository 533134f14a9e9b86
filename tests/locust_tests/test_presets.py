"""The presets table and the step hunt's logic (Locust-free modules, tested in-process)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from loadlab.contract.thresholds import DEFAULT_THRESHOLDS as TH
from locust_tests.plugins.presets import LOGIN, REGISTRATION, Snapshot, StepHunt, StepPlan, judge, p95_ms


@pytest.mark.parametrize(("table", "name", "users", "rate", "seconds"), [
    (REGISTRATION, "normal", 50, 10, 300),
    (REGISTRATION, "heavy", 100, 20, 600),
    (REGISTRATION, "spike", 200, 50, 900),
    (LOGIN, "baseline", 100, 10, 300),
    (LOGIN, "stress", 500, 50, 600),
    (LOGIN, "breaking-point", 1000, 100, 900),
])
def test_preset_runs_its_users_for_its_duration_then_stops(table, name, users, rate, seconds):
    preset = table[name]
    assert preset.tick(0) == (users, rate)
    assert preset.tick(seconds - 0.5) == (users, rate)
    assert preset.tick(seconds) is None


def test_time_scale_shrinks_a_preset():
    normal = REGISTRATION["normal"]
    assert normal.tick(14.9, time_scale=0.05) == (50, 10)  # 5 minutes * 0.05 = 15 s
    assert normal.tick(15.0, time_scale=0.05) is None


def test_step_plan_adds_equal_steps_up_to_max_users():
    plan = StepPlan(step_users=10, step_time_s=15, max_users=35)
    assert [plan.users(i) for i in range(plan.steps)] == [10, 20, 30, 35]
    assert plan.step_at(0) == 0 and plan.step_at(14.99) == 0 and plan.step_at(15) == 1


@pytest.mark.parametrize("bad", [dict(step_users=0), dict(step_time_s=0), dict(step_users=10, max_users=5)])
def test_step_plan_rejects_nonsense(bad):
    with pytest.raises(ValueError, match="--"):
        StepPlan(**bad)


def test_p95_is_interpolated_inside_the_contracts_buckets():
    # 100 samples: 90 at 10 ms, 6 at 200 ms, 4 at 900 ms. Rank 95 lies in the (100, 250] ms bucket,
    # which holds 6: 100 + 150 * (95 - 90) / 6 = 225 ms, as histogram_quantile() says it.
    assert p95_ms({10: 90, 200: 6, 900: 4}) == pytest.approx(225.0)
    assert p95_ms({}) is None


def snap(requests: int, failures: int = 0, times: dict[int, int] | None = None) -> Snapshot:
    return Snapshot(requests, failures, dict(times or {}))


def test_judge_uses_only_the_window_between_snapshots():
    # Before the window: 100 slow requests (in the transient). In the window: 100 fast ones.
    before = snap(100, 0, {2000: 100})
    after = snap(200, 0, {2000: 100, 20: 100})
    result = judge(0, 10, before, after, seconds=10, th=TH)
    assert (result.requests, result.breached) == (100, False)
    assert 10 < result.p95_ms <= 25  # the (10, 25] ms bucket: none of the 2 s requests
    assert result.rps == 10.0


def test_judge_breaches_on_errors_or_latency_or_silence():
    base = snap(0)
    assert judge(0, 10, base, snap(100, 2, {10: 100}), 10, TH).reason.startswith("error ratio 2.0%")
    assert "p95 988 ms > 500 ms" in judge(0, 10, base, snap(100, 0, {900: 100}), 10, TH).reason
    assert judge(0, 10, base, snap(0), 10, TH).reason == "no request completed"


class FakeStats:
    """Cumulative totals that grow like Locust's: `rate` requests per second, each taking ms_at(t)."""

    def __init__(self, ms_at: Callable[[float], int], rate: int = 10,
                 fails_at: Callable[[float], bool] = lambda t: False):
        self.ms_at, self.rate, self.fails_at = ms_at, rate, fails_at
        self.now = 0.0

    def snapshot(self) -> Snapshot:
        times: dict[int, int] = {}
        for second in range(int(self.now)):
            ms = self.ms_at(second)
            times[ms] = times.get(ms, 0) + self.rate
        failures = self.rate * sum(1 for second in range(int(self.now)) if self.fails_at(second))
        return snap(self.rate * int(self.now), failures, times)


def drive(hunt: StepHunt, stats: FakeStats, until: float = 1000) -> list[tuple[float, object]]:
    """Tick once per second, like Locust's shape worker, until the hunt stops."""
    ticks = []
    t = 0.0
    while t <= until:
        stats.now = t
        tick = hunt.tick(t, stats.snapshot)
        ticks.append((t, tick))
        if tick is None:
            break
        t += 1.0
    return ticks


def top_users(ticks) -> int:
    return max(tick[0] for _, tick in ticks if tick)


def test_step_hunt_stops_one_step_after_the_first_breaching_step():
    # 10 s steps; from step 5 (50 users, t >= 40 s) every request takes 800 ms.
    stats = FakeStats(lambda t: 800 if t >= 40 else 20)
    hunt = StepHunt(StepPlan(10, 10, 1000), TH)
    ticks = drive(hunt, stats)
    assert hunt.break_step == 4
    assert [r.breached for r in hunt.results] == [False, False, False, False, True, True]
    assert top_users(ticks) == 60  # one more step (60 users) after the break...
    assert ticks[-1] == (60.0, None)  # ...held for its whole step, then the hunt stopped
    assert hunt.current_step == 6 and hunt.tick(61.0, stats.snapshot) is None
    assert len(hunt.results) == 6  # a tick after the end judges nothing twice


def test_a_breach_only_in_the_transient_does_not_count():
    # Step 2 is slow only in its first 2 s; the transient is the first 3 s of each 10 s step.
    stats = FakeStats(lambda t: 3000 if 10 <= t < 12 else 20)
    hunt = StepHunt(StepPlan(10, 10, 30), TH)
    ticks = drive(hunt, stats)
    assert hunt.break_step is None
    assert [(r.users, r.breached) for r in hunt.results] == [(10, False), (20, False), (30, False)]
    assert ticks[-1] == (30.0, None)  # stopped after the last step (max users)


def test_without_stop_on_break_the_hunt_runs_to_max_users():
    stats = FakeStats(lambda t: 900 if t >= 20 else 20)
    hunt = StepHunt(StepPlan(10, 10, 50), TH, stop_on_break=False)
    ticks = drive(hunt, stats)
    assert hunt.break_step == 2
    assert top_users(ticks) == 50
    assert ticks[-1] == (50.0, None)


def test_current_step_is_one_based():
    hunt = StepHunt(StepPlan(10, 10, 50), TH)
    assert hunt.current_step == 0
    hunt.tick(0.0, lambda: snap(0))
    assert hunt.current_step == 1
    hunt.tick(25.0, lambda: snap(0))
    assert hunt.current_step == 3


def test_a_latency_breach_the_next_step_refutes_does_not_stop_the_fixed_hunt():
    # The host stalled during step 2 (20 users, 2 s requests): step 3 meets the SLO again, so the
    # hunt goes on, and stops one step after the real break at step 5 (50 users).
    stats = FakeStats(lambda t: 2000 if 10 <= t < 20 or t >= 40 else 20)
    hunt = StepHunt(StepPlan(10, 10, 1000), TH)
    ticks = drive(hunt, stats)
    assert [r.breached for r in hunt.results] == [False, True, False, False, True, True]
    assert hunt.break_step == 4 and top_users(ticks) == 60


def test_failures_are_never_refuted():
    # Step 2 (20 users) fails every request, quickly; step 3 is fine again: still the break.
    stats = FakeStats(lambda t: 20, fails_at=lambda t: 10 <= t < 20)
    hunt = StepHunt(StepPlan(10, 10, 1000), TH)
    ticks = drive(hunt, stats)
    assert [r.breached for r in hunt.results] == [False, True, False]
    assert hunt.break_step == 1 and top_users(ticks) == 30
