"""The verdict as a typed object, built once by `analysis.analyze_steps` and serialized once, at
the edge, into `verdict.json` (`Verdict.to_dict`). The JSON's field names are a contract: users
and tests read them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from loadlab.contract.thresholds import Thresholds, as_dict
from loadlab.ratesteps import RateStep
from loadlab.steps import StepSummary

if TYPE_CHECKING:
    from loadlab.gates import GateResult
    from loadlab.uncertainty import Bootstrap

TARGET_CPU = "target_cpu"
GENERATOR_CPU = "generator_cpu"
CONCURRENCY = "concurrency"
# Open model: every request slot of the generator (--max-concurrency) was busy while the API
# still answered at its light-load speed, so the generator's cap, not the API, set the throughput.
GENERATOR_CONCURRENCY = "generator_concurrency"


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
    rate: float | None = None  # open model: the step's offered arrival rate (its users are the request slots)


@dataclass(frozen=True)
class Signal:
    """The first crossing of one threshold."""

    signal: str
    time: float
    users: int
    value: float | None
    rate: float | None = None  # open model: the offered arrival rate of the step (users: its request slots)


@dataclass(frozen=True)
class Source:
    """What the verdict was computed from."""

    stats_history: str
    resource_samples: str | None
    windowed_percentiles: bool
    scenario: str | None


@dataclass(frozen=True)
class Hotspot:
    """A function where the target's sampled stacks ended (its self time), at the knee (else the break)."""

    function: str
    file: str  # shortened: the package path for libraries, the project path for the application
    line: int  # its most sampled line
    share: float  # cpu: of the target's on-CPU samples; wait: of the threads' time inside requests
    kind: str  # cpu | wait
    samples: int
    under: str | None = None  # the nearest frame of the application's own code, "login (target_app/auth.py:74)"


@dataclass
class Profiles:
    """What `--profile` recorded and what it says (loadlab.profiling); `hotspots` are on the Verdict."""

    status: str  # ok | missing
    reason: str | None = None  # why profiles are missing (or too thin to name a hot spot)
    at: str | None = None  # knee | break: the step the hotspots describe
    step_users: int | None = None
    why: str | None = None  # the one line the summary prints
    rate: int | None = None  # samples per second per recorder
    steps: list[dict[str, Any]] = field(default_factory=list)  # per profiled step: users, seconds, samples, files
    diff: list[dict[str, Any]] = field(default_factory=list)  # lightest step vs the hotspots' step
    flame_graph: str | None = None  # path of the SVG flame graph of that step
    flame_svg: str = field(default="", repr=False)  # its text, for the report (not in verdict.json)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("flame_svg")
        return out


@dataclass(frozen=True)
class TopError:
    """One kind of failure, as Locust reported it."""

    request: str  # "POST /client_login"
    error: str  # Locust's failure text, e.g. "login: expected 200 with a token, got HTTP 401 (invalid_credentials)"
    count: int
    status: int | None  # the HTTP status read from the text, when it names one


@dataclass(frozen=True)
class FunctionalFailure:
    """Most requests failed at light load for functional reasons (4xx, or 5xx while the target's
    CPU was idle): the API does not work as the scenario expects, so no capacity was measured."""

    users: int
    error_ratio: float  # failed requests / requests over that step's hold
    top_errors: tuple[TopError, ...]
    time: float  # when that step started
    reason: str  # why the failures are functional rather than overload
    errors_source: str  # where the error texts came from
    rate: float | None = None  # open model: that step's offered arrival rate (its users are the request slots)


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
    # False when the run did not end by itself (a component died, Ctrl-C, Locust stopped early):
    # the verdict covers only the part that ran, and `incomplete_reason` says why.
    complete: bool = True
    incomplete_reason: str | None = None
    hotspots: list[Hotspot] = field(default_factory=list)  # with --profile (loadlab.profiling)
    profiles: Profiles | None = None  # None: the run was not profiled
    functional_failure: FunctionalFailure | None = None  # set: no knee, break or capacity (exit 3)
    skipped_rows: int = 0  # unreadable input rows left out (`loadlab analyze --lenient`)
    capacity_ci: tuple[float, float | None] | None = None  # 95% CI (loadlab.uncertainty)
    # Every step from the knee on breached the SLO: the capacity is the best step below that met it.
    capacity_below_plateau: bool = False
    uncertainty: dict[str, Any] | None = None  # how the intervals were computed (verdict.json "uncertainty")
    bootstrap: Bootstrap | None = field(default=None, repr=False, compare=False)  # replicates, for compare
    gates: list[GateResult] | None = None  # loadlab.gates, when the run was given --gate
    # Open model (arrival rate, `loadlab.openmodel`): the steps are plateaus of offered rate, each
    # summarized in `rate_steps` (with `steps` the same steps as StepSummary, for the resources),
    # `break` is the first step not sustained, `capacity_rps` the throughput while overloaded.
    open_model: bool = False
    rate_steps: list[RateStep] = field(default_factory=list)
    max_sustained_rate: float | None = None

    @property
    def capacity_is_lower_bound(self) -> bool:
        """Without a knee, throughput never flattened: the capacity is the best rate seen, a lower bound;
        so it is when no step from the knee on met the SLO (the best one below it did, and the true
        sustainable rate lies somewhere between). The open model's capacity is the throughput
        measured while overloaded: never a lower bound."""
        return (self.capacity_rps is not None and not self.open_model
                and (self.knee is None or self.capacity_below_plateau))

    @property
    def breaking_point_reached(self) -> bool:
        return self.knee is not None or self.brk is not None

    @property
    def resource_lost_to_outage(self) -> bool:
        """The run found a knee or a break, but a source on the API's machine stopped answering and
        left the limiting resource unknown: a partial verdict (exit 1), not a finding."""
        return (self.limiting_resource is None and self.breaking_point_reached
                and any(s.resource_gap for s in self.steps))

    @property
    def measurement_valid(self) -> bool:
        return self.limiting_resource not in (GENERATOR_CPU, GENERATOR_CONCURRENCY)

    @property
    def first_signal(self) -> Signal | None:
        return self.signals[0] if self.signals else None

    def summary(self) -> list[str]:
        """The verdict in a few human lines (console and report)."""
        head = [] if self.complete else [self.partial_line()]
        if self.functional_failure is not None:
            return head + self._functional_summary(self.functional_failure) + self.notes
        if self.open_model:
            return head + self.open_model_summary() + self.profile_lines() + self.notes
        if not self.steps:
            return [*head, "no steps found: the run held no user level for 3 seconds or more", *self.notes]
        lines = []
        knee, brk, cap = self.knee, self.brk, self.capacity_rps
        if not self.breaking_point_reached:
            top = max(s.users for s in self.steps)
            rose = len(self.steps) >= 2 and self.steps[-1].rps > self.steps[-2].rps
            lines.append(f"breaking point not reached: {'throughput still rose and ' if rose else ''}the SLO held "
                         f"up to {top} users (at least {cap} req/s); raise --max-users or the scenario's users")
        if knee:
            lines.append(f"knee: ~{knee.users:g} users ({ci_text(knee.users_ci, '; ')}first flat step "
                         f"{knee.step_users} users, {knee.rps} req/s, p95 {knee.p95_ms} ms)")
        if brk:
            lines.append(f"break: {brk.users} users ({ci_text(brk.users_ci, '; ')}{brk.rps} req/s, p95 {brk.p95_ms} ms, "
                         f"errors {brk.error_ratio:.2%}): {', '.join(brk.reasons)} over the SLO")
        if self.breaking_point_reached:
            if cap is None:
                lines.append(f"capacity: none: no step met the SLO, not even the first ({self.steps[0].users} users); "
                             f"start lower (e.g. smaller --step-users) to find where it holds")
            elif self.capacity_is_lower_bound:
                lines.append(f"capacity: at least {cap} req/s (a lower bound: the best step that met the SLO; "
                             + ("no step from the knee on met it)" if knee else "throughput never flattened into a knee)"))
            else:
                lines.append(f"capacity: {cap} req/s" + (f" ({ci_text(self.capacity_ci)})" if self.capacity_ci else ""))
        if self.limiting_resource or self.breaking_point_reached:
            lines.append(f"limiting resource: {self.limiting_resource or 'unknown'} ({self.limiting_resource_basis})")
        if not self.measurement_valid:
            lines.append("MEASUREMENT NOT VALID: the load generator ran out of CPU before the target did")
        first = self.first_signal
        if first:
            lines.append(f"first signal: {first.signal} at {first.users} users")
        return head + lines + self.profile_lines() + self.notes

    def open_model_summary(self) -> list[str]:
        """summary() of an open-model run: steps of offered rate instead of users."""
        steps = self.rate_steps
        if not steps:
            return ["no steps found: the run held no offered arrival rate for 3 seconds or more"]
        slots = steps[-1].slots
        lines = [f"open model: {len(steps)} step{'s' if len(steps) > 1 else ''} of offered arrival rate "
                 f"({steps[0].offered_rps:g} to {steps[-1].offered_rps:g}/s), at most {slots} requests in flight"]
        brk = self.brk
        if brk is None:
            top = max(steps, key=lambda s: s.offered_rps)
            lines.append(f"break not reached: every step was sustained up to {top.offered_rps:g} arrivals/s "
                         f"(achieved {top.achieved_rps:.1f} req/s); the capacity lies above: raise --max-rate")
        else:
            step = next(s for s in steps if s.offered_rps == brk.rate and s.start == brk.time)

            def ms(value: float | None) -> str:
                return "-" if value is None else f"{value:.0f} ms"

            lines.append(f"break: {brk.rate:g} arrivals/s offered (achieved {step.achieved_rps:.1f} req/s, "
                         f"late {step.late}, dropped {step.dropped}, corrected p95 {ms(step.corrected_p95_ms)}, "
                         f"uncorrected {ms(step.p95_ms)}): not sustained: {step.detail}")
            cap = self.capacity_rps
            lines.append(f"capacity: {cap} req/s (the throughput while overloaded)" if cap is not None else
                         "capacity: unknown (no step was short of throughput or dropped arrivals: the API kept up "
                         "with every rate, though not within the SLO)")
            lines.append("max sustained rate: " + ("none (the first step was not sustained)"
                                                   if self.max_sustained_rate is None
                                                   else f"{self.max_sustained_rate:g} arrivals/s"))
            lines.append(f"limiting resource: {self.limiting_resource or 'unknown'} ({self.limiting_resource_basis})")
        if self.limiting_resource == GENERATOR_CPU:
            lines.append("MEASUREMENT NOT VALID: the load generator ran out of CPU before the target did")
        elif self.limiting_resource == GENERATOR_CONCURRENCY:
            lines.append("MEASUREMENT NOT VALID: the generator's request slots (--max-concurrency), not the API, "
                         "limited the throughput")
        first = self.first_signal
        if first:
            lines.append(f"first signal: {first.signal} at {first.rate:g} arrivals/s offered")
        return lines

    def partial_line(self) -> str:
        return (f"PARTIAL verdict (complete: false): the run did not finish ({self.incomplete_reason or 'stopped early'}); "
                f"the figures below cover only the part that ran")

    def profile_lines(self) -> list[str]:
        """The profiles' one line: the hot spot, or why there is none."""
        p = self.profiles
        if p is None or not self.steps:
            return []
        if p.why:
            return [p.why]
        return [f"profiles missing: {p.reason}"] if p.status != "ok" else ([f"profiles: {p.reason}"] if p.reason else [])

    def _functional_summary(self, failure: FunctionalFailure) -> list[str]:
        where = f"{failure.rate:g} arrivals/s offered" if failure.rate is not None else f"{failure.users} users"
        lines = [f"the API failed functionally: at {where}, {failure.error_ratio:.0%} of requests failed "
                 f"with {failure.reason}; this is not a capacity result, so there is no knee, break or capacity",
                 f"top errors ({failure.errors_source}):"]
        lines += [f"  {e.count} x {e.request}: {e.error}" for e in failure.top_errors]
        lines.append("fix the API, or point the suite at it correctly (--host, the endpoint paths, the "
                     "request/response settings), then run again")
        return lines

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
            "complete": self.complete,
            "incomplete_reason": self.incomplete_reason,
        }
        out["hotspots"] = [asdict(h) for h in self.hotspots]
        out["profiles"] = None if self.profiles is None else self.profiles.to_dict()
        if self.source is not None:
            out["source"] = asdict(self.source)
        out["capacity_is_lower_bound"] = self.capacity_is_lower_bound
        out["functional_failure"] = None if self.functional_failure is None else (
            asdict(self.functional_failure) | {"top_errors": [asdict(e) for e in self.functional_failure.top_errors]})
        out["skipped_rows"] = self.skipped_rows
        out["capacity_ci"] = self.capacity_ci
        if self.uncertainty is not None:
            out["uncertainty"] = self.uncertainty
        if self.gates is not None:
            out["gates"] = [g.to_dict() for g in self.gates]
        if self.open_model:
            out["open_model"] = True
            out["max_sustained_rate"] = self.max_sustained_rate
            out["rate_steps"] = [s.to_dict() for s in self.rate_steps]
        return out


def ci_text(ci: tuple[float, float | None] | None, end: str = "") -> str:
    """`95% CI 44.9-47.5` (with `end` appended), `95% CI 90 and up` when open-ended, "" without one."""
    if ci is None:
        return ""
    low, high = ci
    return f"95% CI {low:g}-{high:g}{end}" if high is not None else f"95% CI {low:g} and up{end}"
