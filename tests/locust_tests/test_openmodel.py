"""The open model's Locust-free logic, in-process: arrival times, the split of a rate over load
processes, the counters and histograms a worker ships to its master, and the rate hunt."""

from __future__ import annotations

import random
import statistics

import pytest

from loadlab.contract.histograms import LATENCY_BUCKETS_SECONDS
from loadlab.contract.openmodel import DROPPED_TEST_ENDED, DROPPED_WAITED_TOO_LONG, LATENCY_GROWING, THROUGHPUT_BELOW_OFFERED
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS as TH
from locust_tests.plugins.openmodel import (
    BOUNDS,
    ArrivalClock,
    LatencyHistogram,
    OpenStats,
    RateHunt,
    RatePlan,
    RateSnapshot,
    shares,
)


def times(clock: ArrivalClock, rate: float, n: int, now: float = 0.0, phase: float = 0.0) -> list[float]:
    out = [clock.first(now, rate, phase)]
    while len(out) < n:
        out.append(clock.after(out[-1], rate))
    return out


def test_uniform_arrivals_are_evenly_spaced():
    assert times(ArrivalClock("uniform"), 4.0, 5) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_poisson_arrivals_have_the_rate_and_exponential_gaps():
    arrivals = times(ArrivalClock("poisson", random.Random(7)), 20.0, 20_000)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert statistics.mean(gaps) == pytest.approx(1 / 20.0, rel=0.02)
    # Exponential: the standard deviation equals the mean (uniform gaps would have none).
    assert statistics.pstdev(gaps) == pytest.approx(statistics.mean(gaps), rel=0.05)


def test_an_unknown_arrival_process_is_refused():
    with pytest.raises(ValueError, match="--arrivals 'bursty': choose poisson or uniform"):
        ArrivalClock("bursty")


def test_a_rate_split_over_processes_adds_up_and_interleaves():
    split = shares(30.0, [2, 2, 2])
    assert [rate for rate, _ in split] == [10.0, 10.0, 10.0]
    # Three uniform streams at 10/s with these phases are one even stream at 30/s.
    merged = sorted(t for rate, phase in split for t in times(ArrivalClock("uniform"), rate, 10, phase=phase))
    assert [round(b - a, 9) for a, b in zip(merged, merged[1:])] == [round(1 / 30, 9)] * 29


def test_the_rate_follows_the_request_slots_of_each_process():
    assert shares(50.0, [3, 2]) == [(30.0, 0.0), (20.0, 0.6)]
    assert shares(50.0, [0, 0]) == [(25.0, 0.0), (25.0, 0.5)]  # before any slot was reported: evenly
    assert shares(50.0, []) == []


def test_latency_buckets_count_a_value_on_a_bound_in_that_bound():
    histogram = LatencyHistogram()
    for seconds in (0.005, 0.0051, 0.5, 99.0):
        histogram.observe(seconds)
    cumulative = dict(zip(BOUNDS, histogram.cumulative()))
    assert cumulative[0.005] == 1 and cumulative[0.01] == 2 and cumulative[0.5] == 3 and cumulative[float("inf")] == 4
    assert len(BOUNDS) == len(LATENCY_BUCKETS_SECONDS) + 1
    assert histogram.total == pytest.approx(0.005 + 0.0051 + 0.5 + 99.0)


def test_what_workers_ship_adds_up_exactly_on_the_master():
    rng = random.Random(3)
    direct, master = OpenStats(), OpenStats()
    workers = [OpenStats(), OpenStats()]
    for _ in range(500):
        worker = rng.choice(workers)
        name = rng.choice(["login", "register"])
        seconds = rng.expovariate(5.0)
        for stats in (worker, direct):
            stats.scheduled += 1
            stats.record("POST", name, seconds)
            if seconds > 0.5:
                stats.late += 1
            if seconds > 1.0:
                stats.drop(DROPPED_WAITED_TOO_LONG)
        if rng.random() < 0.1:  # a worker's report interval
            master.merge(worker.take())
    for worker in workers:
        master.merge(worker.take())
        assert worker.scheduled == 0 and worker.latency == {}  # take() starts the counts again
    assert (master.scheduled, master.late, master.dropped) == (direct.scheduled, direct.late, direct.dropped)
    for key, histogram in direct.latency.items():
        assert master.latency[key].counts == histogram.counts
        assert master.latency[key].total == pytest.approx(histogram.total)
    assert master.snapshot().corrected[-1] == 500


def test_drops_are_counted_by_reason():
    stats = OpenStats()
    stats.drop(DROPPED_TEST_ENDED, 3)
    stats.drop(DROPPED_WAITED_TOO_LONG)
    assert stats.dropped == {DROPPED_WAITED_TOO_LONG: 1, DROPPED_TEST_ENDED: 3} and stats.dropped_total == 4


def test_rate_plan_steps_up_to_the_max_rate():
    plan = RatePlan(step_rate=10, step_time_s=5, max_rate=35)
    assert [plan.rate(i) for i in range(plan.steps)] == [10, 20, 30, 35]
    assert plan.step_at(4.99) == 0 and plan.step_at(5.0) == 1


@pytest.mark.parametrize(("bad", "flag"), [(dict(step_rate=0), "--step-rate"), (dict(step_time_s=0), "--step-time"),
                                           (dict(step_rate=10, max_rate=5), "--max-rate"),
                                           (dict(step_rate=float("nan")), "--step-rate")])
def test_rate_plan_rejects_nonsense(bad, flag):
    with pytest.raises(ValueError, match=flag):
        RatePlan(**bad)


class FluidServer:
    """Cumulative totals of an open-model run against a server of `capacity` req/s and service time
    `service_s`: arrivals at the offered rate, completions capped at the capacity, the backlog
    queued (so corrected latency grows while overloaded), and `dropped_at` arrivals/s dropped."""

    def __init__(self, capacity: float, service_s: float = 0.05, dropped_at: float = 0.0) -> None:
        self.capacity, self.service_s, self.dropped_at = capacity, service_s, dropped_at
        self.now = 0.0
        self.rate = 0.0
        self.totals = RateSnapshot()
        self.queue = 0.0
        self.stats = OpenStats()
        self.requests = 0
        self.fluid = [0.0, 0.0, 0.0]  # arrivals, dropped, served so far

    def advance(self, seconds: float, rate: float) -> None:
        for _ in range(int(round(seconds * 10))):  # 0.1 s ticks; fluid amounts, whole requests counted
            arrivals = rate * 0.1
            dropped = arrivals if self.dropped_at and rate >= self.dropped_at else 0.0
            served = min(arrivals - dropped + self.queue, self.capacity * 0.1)
            self.queue += arrivals - dropped - served
            self.fluid = [a + b for a, b in zip(self.fluid, (arrivals, dropped, served))]
            scheduled, dropped_now, requests = (int(x + 1e-9) for x in self.fluid)
            self.stats.scheduled = scheduled
            if dropped_now > self.stats.dropped_total:
                self.stats.drop(DROPPED_WAITED_TOO_LONG, dropped_now - self.stats.dropped_total)
            for _ in range(requests - self.requests):
                self.stats.record("POST", "login", self.service_s + self.queue / self.capacity)
            self.requests = requests
            self.now += 0.1

    def snapshot(self) -> RateSnapshot:
        return self.stats.snapshot(self.requests, 0, {round(self.service_s * 1000): self.requests})


def drive(hunt: RateHunt, server: FluidServer, until: float = 600) -> list:
    """Tick once per second like Locust's shape worker; the server runs at the rate the hunt asks."""
    ticks, rate = [], 0.0
    while server.now <= until:
        rate = hunt.tick(server.now, server.snapshot)
        ticks.append((round(server.now), rate))
        if rate is None:
            break
        server.advance(1.0, rate)
    return ticks


def test_rate_hunt_stops_one_step_after_the_first_step_not_sustained():
    server = FluidServer(capacity=35.0)
    hunt = RateHunt(RatePlan(10, 10, 100), TH)
    ticks = drive(hunt, server)
    assert hunt.break_step == 3  # 40/s: the first step above the capacity
    assert [r.sustained for r in hunt.results] == [True, True, True, False, False]
    assert THROUGHPUT_BELOW_OFFERED in hunt.results[3].judgement.reasons
    assert LATENCY_GROWING in hunt.results[3].judgement.reasons  # the backlog grows across the hold
    assert hunt.results[3].achieved_rps == pytest.approx(35.0, rel=0.05)
    assert max(rate for _, rate in ticks if rate) == 50  # one more step after the break...
    assert ticks[-1] == (50, None)  # ...then the hunt stopped


def test_dropped_arrivals_break_a_step_that_otherwise_keeps_up():
    server = FluidServer(capacity=1000.0, dropped_at=30.0)
    hunt = RateHunt(RatePlan(10, 10, 100), TH)
    drive(hunt, server)
    assert hunt.break_step == 2
    assert hunt.results[2].dropped > 0 and not hunt.results[2].sustained


def test_without_stop_on_break_the_hunt_runs_to_max_rate():
    server = FluidServer(capacity=25.0)
    hunt = RateHunt(RatePlan(10, 5, 50), TH, stop_on_break=False)
    ticks = drive(hunt, server)
    assert hunt.break_step == 2 and len(hunt.results) == 5 and ticks[-1] == (25, None)


def test_a_step_that_breaches_only_on_corrected_latency_is_not_sustained():
    # Every request is quick once sent (50 ms, what Locust measures), but the arrivals waited 800 ms.
    server = FluidServer(capacity=1000.0, service_s=0.8)
    server.snapshot = lambda: server.stats.snapshot(server.requests, 0, {50: server.requests})  # type: ignore[method-assign]
    hunt = RateHunt(RatePlan(10, 10, 30), TH)
    drive(hunt, server)
    first = hunt.results[0]
    assert first.p95_ms is not None and first.p95_ms < 100  # uncorrected: fine
    assert first.corrected_p95_ms > 500 and not first.sustained
