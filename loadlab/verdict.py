"""The verdict as a typed object, built once by `analysis.analyze_steps` and serialized once, at
the edge, into `verdict.json` (`Verdict.to_dict`). The JSON's field names are a contract: users
and tests read them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from loadlab.contract.thresholds import Thresholds, as_dict
from loadlab.steps import StepSummary

if TYPE_CHECKING:
    from loadlab.gates import GateResult
    from loadlab.uncertainty import Bootstrap

TARGET_CPU = "target_cpu"
GENERATOR_CPU = "generator_cpu"
CONCURRENCY = "concurrency"


@dataclass(frozen=True)
class StepPoint:
    """One step, as the verdict quotes it (the knee or the break)."""

    users: float  # the step's users, or for the knee where the asymptotes meet
    rps: float
    p95_ms: float | None
    time: float  # when the step started (epoch seconds)
    step_users: int
    error_ratio: float

    @staticmethod
    def fields_of(step: StepSummary, users: float | None = None) -> dict[str, Any]:
        return {
            "users": round(users, 1) if users is not None else step.users,
            "rps": round(step.rps, 2),
            "p95_ms": None if step.p95_ms is None else round(step.p95_ms, 1),
            "time": step.start,
            "step_users": step.users,
            "error_ratio": round(step.error_ratio, 4),
        }


@dataclass(frozen=True)
class Knee(StepPoint):
    rule: str = ""  # marginal_gain | plateau_fraction
    light_load_rps_per_user: float = 0.0
    users_ci: tuple[float, float | None] | None = None  # 95% CI of `users` (loadlab.uncertainty); high None: open


@dataclass(frozen=True)
class Break(StepPoint):
    reasons: tuple[str, ...] = ()  # the SLO signals breached (loadlab.contract.slo)
    users_ci: tuple[float, float | None] | None = None  # 95%: the break lies above low and at or below high users


@dataclass(frozen=True)
class Signal:
    """The first crossing of one threshold."""

    signal: str
    time: float
    users: int
    value: float | None


@dataclass(frozen=True)
class Source:
    """What the verdict was computed from."""

    stats_history: str
    resource_samples: str | None
    windowed_percentiles: bool
    scenario: str | None


@dataclass
class Verdict:
    steps: list[StepSummary]
    thresholds: Thresholds
    knee: Knee | None = None
    brk: Break | None = None  # "break" in verdict.json
    capacity_rps: float | None = None
    limiting_resource: str | None = None
    limiting_resource_basis: str = ""
    signals: list[Signal] = field(default_factory=list)
    source: Source | None = None
    notes: list[str] = field(default_factory=list)  # said after the findings (what the data lacked)
    capacity_ci: tuple[float, float | None] | None = None  # 95% CI (loadlab.uncertainty)
    uncertainty: dict[str, Any] | None = None  # how the intervals were computed (verdict.json "uncertainty")
    bootstrap: Bootstrap | None = field(default=None, repr=False, compare=False)  # replicates, for compare
    gates: list[GateResult] | None = None  # loadlab.gates, when the run was given --gate

    @property
    def breaking_point_reached(self) -> bool:
        return self.knee is not None or self.brk is not None

    @property
    def measurement_valid(self) -> bool:
        return self.limiting_resource != GENERATOR_CPU

    @property
    def first_signal(self) -> Signal | None:
        return self.signals[0] if self.signals else None

    def summary(self) -> list[str]:
        """The verdict in a few human lines (console and report)."""
        if not self.steps:
            return ["no steps found: the run held no user level for 3 seconds or more", *self.notes]
        lines = []
        knee, brk, cap = self.knee, self.brk, self.capacity_rps
        if not self.breaking_point_reached:
            top = max(s.users for s in self.steps)
            lines.append(f"breaking point not reached: throughput still rose and the SLO held up to {top} users "
                         f"(at least {cap} req/s); raise --max-users or the scenario's users")
        if knee:
            lines.append(f"knee: ~{knee.users:g} users ({ci_text(knee.users_ci, '; ')}first flat step "
                         f"{knee.step_users} users, {knee.rps} req/s, p95 {knee.p95_ms} ms)")
        if brk:
            lines.append(f"break: {brk.users} users ({ci_text(brk.users_ci, '; ')}{brk.rps} req/s, p95 {brk.p95_ms} ms, "
                         f"errors {brk.error_ratio:.2%}): {', '.join(brk.reasons)} over the SLO")
        if self.breaking_point_reached:
            lines.append(f"capacity: {cap} req/s" + (f" ({ci_text(self.capacity_ci)})" if self.capacity_ci else ""))
        if self.limiting_resource or self.breaking_point_reached:
            lines.append(f"limiting resource: {self.limiting_resource or 'unknown'} ({self.limiting_resource_basis})")
        if not self.measurement_valid:
            lines.append("MEASUREMENT NOT VALID: the load generator ran out of CPU before the target did")
        first = self.first_signal
        if first:
            lines.append(f"first signal: {first.signal} at {first.users} users")
        return lines + self.notes

    def to_dict(self) -> dict[str, Any]:
        """verdict.json."""
        out: dict[str, Any] = {
            "breaking_point_reached": self.breaking_point_reached,
            "knee": None if self.knee is None else asdict(self.knee),
            "break": None if self.brk is None else asdict(self.brk) | {"reasons": list(self.brk.reasons)},
            "capacity_rps": self.capacity_rps,
            "limiting_resource": self.limiting_resource,
            "limiting_resource_basis": self.limiting_resource_basis,
            "measurement_valid": self.measurement_valid,
            "first_signal": None if self.first_signal is None else asdict(self.first_signal),
            "signals": [asdict(s) for s in self.signals],
            "thresholds": as_dict(self.thresholds),
            "steps": [s.to_dict() for s in self.steps],
            "summary": self.summary(),
        }
        if self.source is not None:
            out["source"] = asdict(self.source)
        out["capacity_ci"] = self.capacity_ci
        if self.uncertainty is not None:
            out["uncertainty"] = self.uncertainty
        if self.gates is not None:
            out["gates"] = [g.to_dict() for g in self.gates]
        return out


def ci_text(ci: tuple[float, float | None] | None, end: str = "") -> str:
    """`95% CI 44.9-47.5` (with `end` appended), `95% CI 90 and up` when open-ended, "" without one."""
    if ci is None:
        return ""
    low, high = ci
    return f"95% CI {low:g}-{high:g}{end}" if high is not None else f"95% CI {low:g} and up{end}"
