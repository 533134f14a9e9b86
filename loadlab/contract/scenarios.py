"""The scenario catalogue: each locustfile's named presets, the step hunt's defaults, and the
scenario names `loadlab run`/`up` accept, all derived from one table.

A preset is a constant load: ramp to `users` at `spawn_rate`/s, hold until `duration_s`, stop.
"step" (the step hunt of users) and "rate-step" (the step hunt of arrival rate, an open model:
see `loadlab.contract.openmodel`) are offered by every kind.
"""

from __future__ import annotations

from dataclasses import dataclass

# A shape tick as Locust expects it: (total users, spawn rate per second), or None to stop.
Tick = tuple[int, float] | None


@dataclass(frozen=True)
class Preset:
    name: str
    users: int
    spawn_rate: float
    duration_s: float

    def tick(self, run_time: float, time_scale: float = 1.0) -> Tick:
        if run_time >= self.duration_s * time_scale:
            return None
        return self.users, self.spawn_rate


def _table(*presets: Preset) -> dict[str, Preset]:
    return {p.name: p for p in presets}


# Scenario kind (what a locustfile does) -> its presets.
KINDS: dict[str, dict[str, Preset]] = {
    "registration": _table(
        Preset("normal", users=50, spawn_rate=10, duration_s=5 * 60),
        Preset("heavy", users=100, spawn_rate=20, duration_s=10 * 60),
        Preset("spike", users=200, spawn_rate=50, duration_s=15 * 60),
    ),
    "login": _table(
        Preset("baseline", users=100, spawn_rate=10, duration_s=5 * 60),
        Preset("stress", users=500, spawn_rate=50, duration_s=10 * 60),
        Preset("breaking-point", users=1000, spawn_rate=100, duration_s=15 * 60),
    ),
}
# Each kind's locustfile in locust_tests/scenarios/.
LOCUSTFILES: dict[str, str] = {"registration": "registration_test.py", "login": "login_test.py"}
STEP = "step"
RATE_STEP = "rate-step"

# Step hunt defaults. +10 users per step resolves a knee that the bundled target (2 workers,
# ~50 ms password hash, 1-3 s think time) shows at roughly 50-120 users into 5-12 steps; 150 s per
# step is long enough for a closed loop to settle and leave ~100 s of steady state to judge, and at
# `--time-scale 0.1` (15 s steps) the demo reaches the break and stops within about 3 minutes.
DEFAULT_STEP_USERS = 10
DEFAULT_STEP_TIME_S = 150.0
DEFAULT_MAX_USERS = 1000

# Rate hunt (open model) defaults. +5 arrivals/s per step resolves the bundled target's login
# capacity (~45 req/s on 2 cores with the default hash) into ~9 steps; the step time is the user
# hunt's, so `--time-scale 0.1` takes about as long as the demo.
DEFAULT_STEP_RATE = 5.0
DEFAULT_MAX_RATE = 500.0
# Requests in flight at most (--max-concurrency), over all load processes. By Little's law 100
# slots carry 100 req/s at 1 s of latency, far past the bundled target's capacity; an arrival
# that finds them all busy waits (late), and one still waiting after DEFAULT_ARRIVAL_TIMEOUT_S is
# dropped (counted, never silently lost). 10 s is twenty times the default p95 SLO.
DEFAULT_MAX_CONCURRENCY = 100
DEFAULT_ARRIVAL_TIMEOUT_S = 10.0
ARRIVALS = ("poisson", "uniform")
# Which step hunt `--scenario step` runs: "adaptive" (the default) grows the load geometrically,
# refines around the knee and confirms the break; "fixed" adds --step-users every step, as before.
# Giving --step-users chooses "fixed".
ADAPTIVE, FIXED = "adaptive", "fixed"
HUNTS = (ADAPTIVE, FIXED)
DEFAULT_HUNT = ADAPTIVE
# The adaptive hunt (locust_tests/plugins/adaptive.py). Its first step is the fixed hunt's first.
DEFAULT_START_USERS = DEFAULT_STEP_USERS
# x2 per step while linear: a knee at N* is passed after log2(N*/10) + 1 steps (10 steps to 2,000
# users where the fixed hunt takes 200), and the first step past it lies at most at 2 N*.
HUNT_GROWTH = 2.0
# The knee is bracketed when the two measured steps around the estimate N* = X / g0 lie within
# this fraction of N* of each other (and at least 2 users apart: users are whole).
HUNT_BRACKET = 0.04
# Past the knee: the plateau steps (for the capacity) and the climb to the break grow by 15 %,
# finer than x2 because the SLO usually breaks within ~1.5 N*.
HUNT_CONFIRM_GROWTH = 1.15
HUNT_PLATEAU_STEPS = 2  # steps on the plateau, within the SLO, the capacity is the median of
HUNT_MAX_REFINE = 6  # refinement steps at most (settle, plateau, bracket), then it confirms with what it has
HUNT_MAX_STEPS = 30  # a hard bound on every hunt's length (a bounded load loop)
# A breach is bad (the hunt backs off and lets the target drain) when requests failed beyond the
# SLO, none completed, or p95 exceeded this multiple of the SLO's p95.
BAD_BREACH_P95_FACTOR = 2.0
# The adaptive rate hunt (locust_tests/plugins/rateadaptive.py; the default of `*-rate-step`) reuses
# the hunt constants above: x2 arrivals/s from DEFAULT_START_RATE while each step is sustained, then
# refine until the last sustained and the first unsustained rate lie within HUNT_BRACKET of each
# other, then confirm the break up to HUNT_CONFIRM_GROWTH above it. Its first step is the fixed
# rate hunt's first; giving --step-rate chooses the fixed hunt.
DEFAULT_START_RATE = DEFAULT_STEP_RATE
# An unsustained step is a bad breach (the hunt offers 0 arrivals until the queue drains) when
# requests failed beyond the SLO, none completed, this share of its arrivals was dropped, or its
# corrected p95 exceeded BAD_BREACH_P95_FACTOR x the SLO's.
BAD_BREACH_DROPPED_FRACTION = 0.05

# Locust's --stop-timeout for every run of the suite (and the lab): when a run ends, or a step
# goes down, each user finishes the request it is in before it stops, so a request the target
# served is always counted (a user killed mid-request leaves a registration Locust never saw).
STOP_TIMEOUT_S = 10.0


def lab_scenarios() -> dict[str, tuple[str, str]]:
    """`loadlab run` scenario name ("login-step") -> (locustfile, the suite's --scenario value)."""
    return {f"{kind}-{name}": (LOCUSTFILES[kind], name) for kind, presets in KINDS.items()
            for name in [*presets, STEP, RATE_STEP]}
