"""The knee rule: where adding users stops adding throughput, by the operational laws.

A closed-loop generator with N users and think time Z drives X(N) = N / (R(N) + Z). At light
load R stays near R0, so X rises along the linear asymptote g0 x N with g0 = 1 / (R0 + Z), the
throughput one user drives; once the bottleneck saturates X stays at the capacity. The knee is
where the two asymptotes meet: N* = capacity / g0.

The live step hunt (in the Locust process) and the verdict (`loadlab.analysis`) both decide with
these functions, so "linear", "the knee" and "throughput flattened" mean one thing in the hunt's
log and in `verdict.json`. A *level* is any object with `users`, `rps` and `mean_response_ms`
(the hunt's `StepResult`, the analysis' `StepSummary`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from .thresholds import DEFAULT_THRESHOLDS, Thresholds

MARGINAL_GAIN = "marginal_gain"
PLATEAU_FRACTION = "plateau_fraction"


class Level(Protocol):
    """One step's steady part: its users, throughput (req/s) and mean response time (ms)."""

    @property
    def users(self) -> int: ...

    @property
    def rps(self) -> float: ...

    @property
    def mean_response_ms(self) -> float | None: ...


L = TypeVar("L", bound=Level)


def think_time_s(levels: Sequence[Level]) -> float | None:
    """The generator's think time Z from the response time law N = X (R + Z), median over the levels.

    It holds for every level of a closed loop, on either side of the knee, so the median over
    all of them is a robust estimate even when each short step is noisy.
    """
    values = [s.users / s.rps - s.mean_response_ms / 1000.0 for s in levels
              if s.rps > 0 and s.users > 0 and s.mean_response_ms is not None]
    return max(0.0, statistics.median(values)) if values else None


def light_load_per_user(levels: Sequence[Level], upto: int | None = None) -> float | None:
    """g0, the throughput one user drives at light load: 1 / (R0 + Z).

    R0 is the lowest mean response time of the levels and Z the think time from the response
    time law. Without mean response times: the median per-user throughput of the first (up to
    two) levels before `upto`, in the order given, which is noisier.
    """
    z = think_time_s(levels)
    r0 = min((s.mean_response_ms for s in levels if s.mean_response_ms is not None), default=None)
    if z is not None and r0 is not None and (r0 / 1000.0 + z) > 0:
        return 1.0 / (r0 / 1000.0 + z)
    first = levels[: min(2, len(levels) if upto is None else upto)]
    values = [s.rps / s.users for s in first if s.users > 0 and s.rps > 0]
    return statistics.median(values) if values else None


def linear_share(level: Level, g0: float) -> float:
    """How much of the linear asymptote a level reaches: X / (g0 N) = (R0 + Z) / (R + Z).

    About 1 at light load; past the knee it falls as N* / N."""
    return level.rps / (g0 * level.users) if level.users > 0 and g0 > 0 else 0.0


def is_linear(level: Level, g0: float, th: Thresholds = DEFAULT_THRESHOLDS) -> bool:
    """Throughput per user still holds: the level reaches `linear_fraction` of the linear asymptote."""
    return linear_share(level, g0) >= th.linear_fraction


def collapse(prev: Level, cur: Level, g0: float, best_per_user: float,
             th: Thresholds = DEFAULT_THRESHOLDS) -> str | None:
    """Did adding users from `prev` to `cur` stop adding throughput? The rule that fired, or None.

    `marginal_gain`: the throughput per added user fell below `marginal_gain_fraction` x g0;
    `plateau_fraction`: the throughput per user fell below `plateau_fraction` x its best so far.
    """
    if cur.users <= prev.users or cur.users <= 0:
        return None
    marginal = (cur.rps - prev.rps) / (cur.users - prev.users)
    if marginal < th.marginal_gain_fraction * g0:
        return MARGINAL_GAIN
    if cur.rps / cur.users < th.plateau_fraction * best_per_user:
        return PLATEAU_FRACTION
    return None


def knee_users(plateau_rps: float, g0: float) -> float:
    """Where the linear asymptote g0 x N meets the plateau: N* = X / g0."""
    return plateau_rps / g0 if g0 > 0 else 0.0


@dataclass(frozen=True)
class KneeFound:
    step: int  # index of the first level at or past the knee (the first on the plateau)
    users: float  # where the linear and the flat asymptotes meet
    detected_at: int  # index of the level whose marginal gain collapsed (confirms the knee)
    per_user_rps: float  # light-load throughput per user (the linear asymptote's slope)
    rule: str  # marginal_gain | plateau_fraction


def plateau_throughput(levels: Sequence[L], knee_step: int, breached: Callable[[L], bool]) -> float:
    """Median throughput of the levels from the knee on that still meet the SLO (else the knee's two)."""
    healthy = [s.rps for s in levels[knee_step:] if not breached(s)]
    if not healthy:
        healthy = [levels[knee_step].rps, levels[knee_step - 1].rps]
    return statistics.median(healthy)


def find_knee(levels: Sequence[L], breached: Callable[[L], bool],
              th: Thresholds = DEFAULT_THRESHOLDS) -> KneeFound | None:
    """The knee of `levels` ordered by users: the first level where adding users stopped adding
    throughput (`collapse`), confirmed by the levels after it; `breached` says which levels
    breach the SLO (the capacity is taken from the others).

    A candidate is rejected when a later level shows throughput rising again at a healthy slope
    (noise), and a flat last level alone is not a knee unless its throughput per user has also
    fallen below `plateau_fraction` of its best (a knee needs a later level to confirm it).
    `users` is where the linear asymptote meets the plateau, within the levels measured.
    """
    if len(levels) < 3:
        return None  # a knee needs a linear part and a flat part to be told apart
    for i in range(1, len(levels)):
        prev, cur = levels[i - 1], levels[i]
        if cur.users <= prev.users:
            continue  # the same level measured twice: nothing was added
        g0 = light_load_per_user(levels, i)
        if not g0:
            continue
        best_per_user = max(s.rps / s.users for s in levels[: i + 1] if s.users > 0)
        rule = collapse(prev, cur, g0, best_per_user, th)
        if rule is None:
            continue
        best_so_far = max(s.rps for s in levels[: i + 1])
        resumed = any(
            later.rps - best_so_far > th.marginal_gain_fraction * g0 * (later.users - prev.users) * 2
            for later in levels[i + 1:]
            if later.users > prev.users
        )
        if resumed:
            continue
        if rule == MARGINAL_GAIN and i == len(levels) - 1:
            if cur.rps / cur.users >= th.plateau_fraction * best_per_user:
                break
            rule = PLATEAU_FRACTION
        estimate = min(max(knee_users(plateau_throughput(levels, i, breached), g0), levels[0].users), cur.users)
        first_flat = next(j for j in range(i + 1) if levels[j].users >= estimate)
        return KneeFound(step=first_flat, users=estimate, detected_at=i, per_user_rps=g0, rule=rule)
    return None


__all__ = ["KneeFound", "Level", "MARGINAL_GAIN", "PLATEAU_FRACTION", "collapse", "find_knee", "is_linear", "knee_users",
           "light_load_per_user", "linear_share", "plateau_throughput", "think_time_s"]
