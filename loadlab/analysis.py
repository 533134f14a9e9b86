"""The breaking-point analysis: pure functions from step summaries to a verdict.

Operational laws frame it. A closed-loop generator with N users and think time Z drives
throughput X(N) = N / (R(N) + Z). While the server has spare capacity R stays near its
light-load value, so X grows linearly with N; once the bottleneck is saturated X stays at
the capacity and R grows instead. The *knee* is where those two asymptotes meet: the first
step where an added user stops adding throughput. The *break* is the first step whose hold
breaches the SLO. "First" is in order of users: the steps of an adaptive hunt ran out of order
(`by_load`). The knee rule is `loadlab.contract.knee`, which the live hunt uses too; every
threshold comes from `loadlab.contract.thresholds`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace

from loadlab import functional
from loadlab.contract import knee as knee_rule
from loadlab.contract.cores import cpu_limited, obtainable_cores
from loadlab.contract.slo import LATENCY_P95, SloJudgement, judge
from loadlab.contract.slo import refuted as slo_refuted
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS, Thresholds
from loadlab.steps import StepSummary
from loadlab.verdict import CONCURRENCY, GENERATOR_CPU, TARGET_CPU, Break, Knee, Signal, StepPoint, Verdict


@dataclass(frozen=True)
class KneeResult:
    step: int  # index of the first step at or past the knee (the first on the plateau)
    users: float  # where the linear and the flat asymptotes meet
    detected_at: int  # index of the step whose marginal gain collapsed (confirms the knee)
    per_user_rps: float  # light-load throughput per user (the linear asymptote's slope)
    rule: str  # marginal_gain | plateau_fraction


def step_judgement(step: StepSummary, th: Thresholds = DEFAULT_THRESHOLDS) -> SloJudgement:
    """The SLO judge's word on this step's hold (the live hunt asks the same judge)."""
    return judge(step.requests, step.failures, step.p95_ms, th)


def breaches_slo(step: StepSummary, th: Thresholds = DEFAULT_THRESHOLDS) -> list[str]:
    """Which SLO signals this step's hold breaches (empty when it meets the SLO)."""
    return list(step_judgement(step, th).reasons)


def by_load(steps: list[StepSummary]) -> list[StepSummary]:
    """The steps in order of users (ties in the order they ran), which every rule below reads.

    A fixed hunt runs its steps in this order already. The adaptive hunt does not: it grows the
    load geometrically, then refines below a step that flattened or breached, and may back off;
    sorted by users its steps are one curve X(N) again, with every measured level in it (none is
    dropped, unlike keeping only the increasing ones, which would throw the refinement away).
    """
    return _ordered(steps)[0]


def _ordered(steps: list[StepSummary]) -> tuple[list[StepSummary], list[int]]:
    """(steps in order of users, their positions in `steps`)."""
    order = sorted(range(len(steps)), key=lambda i: (steps[i].users, steps[i].start))
    return [steps[i] for i in order], order


def find_break(steps: list[StepSummary], th: Thresholds = DEFAULT_THRESHOLDS) -> int | None:
    """Index (in `steps`) of the step with the fewest users whose hold breaches the SLO, leaving out
    breaches a step with more users refuted (`loadlab.contract.slo.refuted`, see `refuted_breaches`)."""
    ordered, order = _ordered(steps)
    refuted = {id(s) for s in refuted_breaches(ordered, th)}
    for i, step in enumerate(ordered):
        if breaches_slo(step, th) and id(step) not in refuted:
            return order[i]
    return None


def refuted_breaches(steps: list[StepSummary], th: Thresholds = DEFAULT_THRESHOLDS) -> list[StepSummary]:
    """Steps that breached the SLO on latency alone while a step with more users met it (a hiccup)."""
    met_at = [s.users for s in steps if not breaches_slo(s, th)]
    return [s for s in by_load(steps) if slo_refuted(breaches_slo(s, th), s.users, met_at)]


# The operational-law estimates live in the contract, shared with the live hunt (loadlab.contract.knee).
think_time_s = knee_rule.think_time_s
light_load_per_user = knee_rule.light_load_per_user


def find_knee(steps: list[StepSummary], th: Thresholds = DEFAULT_THRESHOLDS) -> KneeResult | None:
    """First step (in order of users) where adding users stopped adding throughput, confirmed by the
    steps after it (`loadlab.contract.knee.find_knee`, the rule the live hunt brackets). Indices in
    the result are positions in `steps`, whatever order they ran in.

    Collapse (`loadlab.contract.knee.collapse`): the marginal throughput per added user falls
    below `marginal_gain_fraction` x the light-load per-user throughput, or the per-user
    throughput falls below `plateau_fraction` x its best so far. A candidate is rejected when a
    later step shows throughput rising again at a healthy slope (noise).
    """
    ordered, order = _ordered(steps)
    found = knee_rule.find_knee(ordered, lambda s: bool(breaches_slo(s, th)), th)
    if found is None:
        return None
    return KneeResult(step=order[found.step], users=found.users, detected_at=order[found.detected_at],
                      per_user_rps=found.per_user_rps, rule=found.rule)


def plateau_throughput(steps: list[StepSummary], knee_step: int, th: Thresholds = DEFAULT_THRESHOLDS) -> float:
    """Median throughput of the steps from the knee on that still meet the SLO (else the knee step)."""
    return knee_rule.plateau_throughput(steps, knee_step, lambda s: bool(breaches_slo(s, th)))


def capacity(steps: list[StepSummary], knee: KneeResult | None, brk: int | None,
             th: Thresholds = DEFAULT_THRESHOLDS) -> float | None:
    """Sustainable throughput: the plateau after the knee, else the best step that met the SLO (a
    lower bound); None when no step met the SLO (the rate of a failing step is no capacity).
    `steps` in order of users (`by_load`), as `knee` and `brk` index them."""
    if not steps:
        return None
    within = plateau_within_slo(steps, knee, brk, th)
    if within:
        return statistics.median(s.rps for s in within)
    healthy = [s.rps for s in steps[: brk] if not breaches_slo(s, th)]
    return max(healthy) if healthy else None


def plateau_within_slo(steps: list[StepSummary], knee: KneeResult | None, brk: int | None,
                       th: Thresholds = DEFAULT_THRESHOLDS) -> list[StepSummary]:
    """The steps from the knee up to the break that met the SLO: what the capacity is read from."""
    return [] if knee is None else [s for s in steps[knee.step: brk] if not breaches_slo(s, th)]


def _saturated(cores: float | None, available: float | None, th: Thresholds, steal: float | None = None) -> bool:
    """CPU use at the saturation line of the cores the group can get (the hypervisor took `steal` of them)."""
    return cpu_limited(cores, None, available, steal, th.cpu_saturation_fraction)


def _stolen(available: float | None, steal: float | None, th: Thresholds, without: str = "") -> str:
    """What the hypervisor took, for a reason text; `without` when there was no noticeable steal
    (under half a percent), so the text is the one it was before steal was counted."""
    if not available or steal is None or steal < 0.005:
        return without
    return (f", of which the hypervisor took {steal:.0%} (steal): >= {th.cpu_saturation_fraction:.0%} of the "
            f"{obtainable_cores(available, steal):.2f} it could get")


# How far past the knee the target's CPU is looked at: up to the first step this much more loaded. A
# fixed hunt's next step (+10 users at a knee of 50-100) reaches it; an adaptive hunt's refined steps
# crowd the knee itself (51, 53, 54 users, where a CPU-bound target got 1.6-1.8 of its 2 cores and the
# demo said `concurrency`), so its window goes on to the first step that loaded the target harder.
PLATEAU_WINDOW_REACH = 1.10


def _plateau_window(steps: list[StepSummary], ref: int, brk: int | None) -> list[StepSummary]:
    """The steps the target's CPU is judged on (in order of users): the reference step and those after
    it up to the first with PLATEAU_WINDOW_REACH times its users, never past the break."""
    stop = len(steps) if brk is None else max(ref, brk) + 1
    for i in range(ref + 1, stop):
        if steps[i].users >= PLATEAU_WINDOW_REACH * steps[ref].users:
            return steps[ref:i + 1]
    return steps[ref:stop]


def limiting_resource(steps: list[StepSummary], ref: int | None, brk: int | None,
                      th: Thresholds = DEFAULT_THRESHOLDS, knee: bool = True) -> tuple[str | None, str]:
    """(limiting resource, why) judged at the reference step (the knee, else the break). `knee`: the
    reference is a knee (throughput flattened there); otherwise only the SLO broke, and the reason
    says so rather than claim a flat throughput."""
    if ref is None:
        return None, "no knee and no break: nothing ran out"
    what = "throughput flattened" if knee else "the SLO broke"
    if all(s.target_cpu_cores is None and s.generator_cpu_cores is None for s in steps):
        return None, (f"no resource samples (a plain Locust CSV): {what}, but without the "
                      "target's and the generator's CPU the cause (target CPU, generator CPU or a concurrency "
                      "limit) cannot be told apart")
    # A generator saturated at or before the reference step made the knee itself.
    for s in steps[: ref + 1]:
        machine = saturated_generator(s, th)
        if machine is not None:  # one load machine of several (--generator-sidecar): named
            return GENERATOR_CPU, (
                f"the load generator on {machine['instance']} used {machine['cpu_cores']:.2f} of its "
                f"{machine['cores_available']:g} usable cores"
                f"{_stolen(machine['cores_available'], machine.get('host_cpu_steal_share'), th)} at {s.users} users: "
                f"the measurement is not valid; "
                f"add Locust workers on more machines, or fewer per machine")
        if _saturated(s.generator_cpu_cores, s.generator_cores_available, th, s.generator_host_cpu_steal_share):
            return GENERATOR_CPU, (
                f"the load generator used {s.generator_cpu_cores:.2f} of its {s.generator_cores_available:g} "
                f"usable cores{_stolen(s.generator_cores_available, s.generator_host_cpu_steal_share, th)} "
                f"at {s.users} users: the measurement is not valid; add Locust workers "
                f"(loadlab run --workers N, or Locust --processes/--worker) or move Locust to another machine")
    window = _plateau_window(steps, ref, brk)
    known = [s for s in window if s.target_cpu_cores is not None]
    if not known and not any(s.resource_gap for s in window):
        return None, "target CPU unknown (no sidecar samples for the target group, e.g. a --host target)"
    if not known:
        return None, target_gap_reason(window, None, what, steps[ref].users)
    peak = max(known, key=lambda s: s.target_cpu_cores or 0.0)
    for s in known:  # one machine of a fleet (several --target-sidecar) saturated: it limits the fleet
        machine = saturated_target(s, th)
        if machine is not None:
            return TARGET_CPU, fleet_reason(s, machine, th)
    for s in sorted(known, key=lambda s: -(s.target_cpu_cores or 0.0)):  # the peak first
        if _saturated(s.target_cpu_cores, s.target_cores_available, th, s.host_cpu_steal_share):
            line = _stolen(s.target_cores_available, s.host_cpu_steal_share, th, f" (>= {th.cpu_saturation_fraction:.0%})")
            return TARGET_CPU, (f"the target used {s.target_cpu_cores:.2f} of its {s.target_cores_available:g} "
                                f"usable cores{line} at {s.users} users")
    r0 = lightest_mean_ms(steps)
    for s in known:
        if cpu_starved(s, th, r0):
            used, wait = s.target_cpu_cores or 0.0, s.target_cpu_wait_cores or 0.0
            return TARGET_CPU, (
                f"the target used {used:.2f} cores and its processes waited for a CPU another {wait:.2f} cores' worth "
                f"at {s.users} users ({used + wait:.2f} of its {s.target_cores_available:g} usable cores"
                f"{_stolen(s.target_cores_available, s.host_cpu_steal_share, th, f', >= {th.cpu_saturation_fraction:.0%}')}"
                f"): CPU-bound, and other processes on its host had the CPU it waited for")
    for s in known:
        if cpu_bound_on_busy_host(s, r0, th):
            demand_ms = 1000.0 * (s.target_cpu_cores or 0.0) / s.rps
            return TARGET_CPU, (
                f"the host's CPUs were saturated ({s.host_cpu_busy_cores:.2f} of {s.host_cores} cores busy) while "
                f"the target spent {demand_ms:.0f} ms of CPU per request of a {r0:.0f} ms light-load response: "
                f"CPU-bound, and it got only {s.target_cpu_cores:.2f} cores because other processes took the rest")
    if len(known) < len(window):  # the steps where its CPU would saturate may be the ones without samples
        return None, target_gap_reason(window, peak, what, steps[ref].users)
    avail = peak.target_cores_available
    return CONCURRENCY, (
        f"{'throughput flat' if knee else 'the SLO broke'} while the target used only {peak.target_cpu_cores:.2f}"
        + (f" of {avail:g} usable cores" if avail else " cores")
        + generator_spare(steps[: ref + 1])
        + ": a pool, lock or I/O limit (workers, threads, connections, database)")


def generator_spare(steps: list[StepSummary]) -> str:
    """The concurrency reason's word on the generator, for the steps up to the reference: spare CPU
    only when every one of them had its CPU (every load machine's) measured; say only what was."""
    blind = [s for s in steps if s.generator_cpu_cores is None
             or any(m.get("cpu_cores") is None for m in s.generator_machines or [])]
    if not blind:
        return " and the generator had CPU to spare"
    if len(blind) == len(steps):
        return " (the generator's CPU was not sampled, so a generator limit is not ruled out)"
    return (f" (the generator's CPU is unknown at {', '.join(str(s.users) for s in blind)} users, "
            f"so a generator limit is not ruled out)")


def target_gap_reason(window: list[StepSummary], peak: StepSummary | None, what: str, ref_users: int) -> str:
    """Why the limiting resource is unknown: steps of the judged window have no target CPU (a remote
    sidecar stopped answering, `loadlab.remote.apply_outages`), and the ones that have it show no limit.
    Past the knee is where a CPU-bound target saturates: the steps without samples may be just those."""
    blank = [s for s in window if s.target_cpu_cores is None]
    why = "; ".join(dict.fromkeys(s.resource_gap for s in blank if s.resource_gap)) or "no samples in their holds"
    seen = ("" if peak is None else
            f"; the steps that have it show no CPU limit (at most {peak.target_cpu_cores:.2f}"
            + (f" of {peak.target_cores_available:g} usable cores" if peak.target_cores_available else " cores")
            + f" at {peak.users} users), which rules out neither a CPU nor a concurrency limit")
    return (f"{what} at {ref_users} users, but the target's CPU is unknown at "
            f"{', '.join(str(s.users) for s in blank)} users ({why}), where it would saturate{seen}")


def saturated_generator(step: StepSummary, th: Thresholds = DEFAULT_THRESHOLDS) -> dict | None:
    """The first load machine whose generator CPU reached the saturation line at this step (None if none)."""
    return next((m for m in step.generator_machines or []
                 if _saturated(m.get("cpu_cores"), m.get("cores_available"), th, m.get("host_cpu_steal_share"))), None)


def saturated_target(step: StepSummary, th: Thresholds = DEFAULT_THRESHOLDS) -> dict | None:
    """The API machine (of several, `loadlab.targets`) whose target CPU is the furthest past the
    saturation line at this step (None if none reached it)."""
    hot = [m for m in step.target_machines or [] if _machine_saturated(m, th)]
    return max(hot, key=lambda m: (m["cpu_cores"] + (m.get("cpu_wait_cores") or 0.0))
               / obtainable_cores(m["cores_available"], m.get("host_cpu_steal_share")), default=None)


def _machine_saturated(m: dict, th: Thresholds) -> bool:
    """One machine's CPU at the saturation line: used, or used plus the time its processes waited
    for a CPU that other processes there had (`cpu_starved`, per machine), against the cores its
    hypervisor left it."""
    return cpu_limited(m.get("cpu_cores"), m.get("cpu_wait_cores"), m.get("cores_available"),
                       m.get("host_cpu_steal_share"), th.cpu_saturation_fraction)


def fleet_reason(step: StepSummary, machine: dict, th: Thresholds) -> str:
    """Why one machine limits the fleet: its CPU against its cores, beside the fleet's sums."""
    machines = step.target_machines or []
    others = [m for m in machines if m is not machine]
    every = all(_machine_saturated(m, th) for m in others)
    fleet = (f"the fleet of {len(machines)} machines used {step.target_cpu_cores:.2f} of its "
             f"{step.target_cores_available:g} usable cores" if step.target_cpu_cores is not None
             and step.target_cores_available else f"the fleet of {len(machines)} machines")
    why = ("every machine was saturated: the fleet is out of CPU" if every else
           "that machine limits the fleet: imbalance behind the load balancer (it got more than its share of the "
           "load) or a slower machine")
    wait = machine.get("cpu_wait_cores") or 0.0
    waited = (f" and waited for a CPU another {wait:.2f} cores' worth"
              if not _saturated(machine["cpu_cores"], machine["cores_available"], th,
                                machine.get("host_cpu_steal_share")) else "")
    line = _stolen(machine["cores_available"], machine.get("host_cpu_steal_share"), th,
                   f" (>= {th.cpu_saturation_fraction:.0%})")
    return (f"the target machine {machine['instance']} used {machine['cpu_cores']:.2f}{waited} of its "
            f"{machine['cores_available']:g} usable cores{line} "
            f"at {step.users} users "
            f"while {fleet}: {why}")


def cpu_starved(step: StepSummary, th: Thresholds = DEFAULT_THRESHOLDS,
                light_response_ms: float | None = None) -> bool:
    """The target wanted the cores it can use but the host's other processes had them: the CPU it
    used plus the time its threads sat runnable waiting for a CPU (the sidecar's run delay, in
    cores) reaches the saturation line, and its requests are CPU work (`cpu_heavy`, judged when the
    light-load response `light_response_ms` is known). A server waiting on I/O, a lock or a pool is
    not runnable then. On a virtual machine the line is of the cores the hypervisor left
    (`loadlab.contract.cores.cpu_limited`); the kernel does not count stolen time as CPU used, but
    it does count it in the run delay of the threads queued behind a stolen vCPU. So on a host
    short of CPU a server of many sleeping workers queues for a core too (16 workers, 2.9 ms of CPU
    per 160 ms login: 0.27 cores used and 1.58 waited at 34 % steal), and is still not CPU-bound."""
    if step.target_cpu_wait_cores is None:
        return False
    if not cpu_limited(step.target_cpu_cores, step.target_cpu_wait_cores, step.target_cores_available,
                       step.host_cpu_steal_share, th.cpu_saturation_fraction):
        return False
    return light_response_ms is None or cpu_heavy(step, light_response_ms)


# A sleeping or I/O-bound handler spends a few percent of its response on CPU; a CPU-bound one on a
# contended host still shows ~30 % (measured: 22 ms of a 71 ms response).
CPU_HEAVY_SHARE = 0.25


def cpu_heavy(step: StepSummary, light_response_ms: float | None) -> bool:
    """By the utilization law (CPU per request D = U / X), a quarter or more of a request's
    light-load response time is the target's CPU work."""
    used = step.target_cpu_cores
    if used is None or not light_response_ms or step.rps <= 0:
        return False
    return 1000.0 * used / step.rps >= CPU_HEAVY_SHARE * light_response_ms


def lightest_mean_ms(steps: list[StepSummary]) -> float | None:
    """The run's light-load response: its lowest step mean."""
    return min((s.mean_response_ms for s in steps if s.mean_response_ms is not None), default=None)


def cpu_bound_on_busy_host(step: StepSummary, light_response_ms: float | None,
                           th: Thresholds = DEFAULT_THRESHOLDS) -> bool:
    """The target is CPU-limited even below its own saturation line: no idle CPU was left on the
    host, and by the utilization law (CPU per request D = U / X) most of a request's light-load
    response time is CPU work (a quarter or more), so more CPU is what it lacked."""
    busy, cores = step.host_cpu_busy_cores, step.host_cores
    if busy is None or cores is None:
        return False
    return busy >= th.cpu_saturation_fraction * cores and cpu_heavy(step, light_response_ms)


def signals(steps: list[StepSummary], knee: KneeResult | None, th: Thresholds = DEFAULT_THRESHOLDS) -> list[Signal]:
    """Every threshold crossing: per signal the step with the fewest users that crossed it, in
    order of users (then time). `steps` in order of users (`by_load`), as `knee` indexes them;
    for a fixed hunt that is time order, and for an adaptive one it is the order of load, so the
    first signal is still the first to warn as users rise."""
    crossings: dict[str, Signal] = {}
    r0 = lightest_mean_ms(steps)

    def note(name: str, step: StepSummary, value: float | None) -> None:
        if name not in crossings:
            crossings[name] = Signal(name, step.start, step.users, None if value is None else round(value, 4))

    for i, s in enumerate(steps):
        for reason in breaches_slo(s, th):
            note(reason, s, s.p95_ms if reason == LATENCY_P95 else s.error_ratio)
        if knee is not None and i == knee.step:
            note("throughput_plateau", s, s.rps)
        if _saturated(s.target_cpu_cores, s.target_cores_available, th, s.host_cpu_steal_share) or cpu_starved(s, th, r0):
            note(TARGET_CPU, s, s.target_cpu_cores)
        hot = saturated_target(s, th)
        if hot is not None:  # one machine of a fleet
            note(TARGET_CPU, s, hot["cpu_cores"])
        machine = saturated_generator(s, th)
        if machine is not None:
            note(GENERATOR_CPU, s, machine["cpu_cores"])
        if _saturated(s.generator_cpu_cores, s.generator_cores_available, th, s.generator_host_cpu_steal_share):
            note(GENERATOR_CPU, s, s.generator_cpu_cores)
    return sorted(crossings.values(), key=lambda c: (c.users, c.time))


def findings(steps: list[StepSummary], th: Thresholds = DEFAULT_THRESHOLDS) -> tuple[KneeResult | None, int | None,
                                                                                  float | None]:
    """(knee, index of the break step, capacity): the verdict's findings, and all that
    `loadlab.uncertainty` recomputes on every bootstrap replicate. `steps` in order of users
    (`by_load`; the indices are positions in it)."""
    knee = find_knee(steps, th)
    brk = find_break(steps, th)
    if knee is not None and brk is not None and brk < knee.step:
        knee = None  # the SLO broke before throughput flattened: the break is the finding
    return knee, brk, capacity(steps, knee, brk, th)


def analyze_steps(steps: list[StepSummary], th: Thresholds = DEFAULT_THRESHOLDS,
                  errors: functional.ErrorEvidence | None = None) -> Verdict:
    """The verdict for a run's step summaries, in any order they ran (the verdict lists them so;
    every rule reads them in order of users, `by_load`). `errors`: the run's failure texts (per step
    in the order the steps ran), to tell an API that fails functionally at light load from one that
    ran out of capacity (without them, not judged)."""
    ran = steps
    steps, order = _ordered(steps)
    notes: list[str] = []
    if errors is not None:  # light load is below where throughput flattened, whatever the SLO said
        flat = find_knee(steps, th)
        by_step = [errors.by_step[i] if i < len(errors.by_step) else None for i in order]
        failure, notes = functional.judge(steps, None if flat is None else flat.step, replace(errors, by_step=by_step))
        if failure is not None:  # not a capacity result: no knee, break, capacity or limiting resource
            return Verdict(steps=ran, thresholds=th, limiting_resource_basis="the API failed functionally",
                           signals=signals(steps, None, th), notes=notes, functional_failure=failure)
    knee, brk, cap = findings(steps, th)
    ref = knee.step if knee is not None else brk
    resource, basis = limiting_resource(steps, ref, brk, th, knee=knee is not None)
    notes += [f"not the break: {s.users} users breached the p95 SLO ({s.p95_ms:.0f} ms) but "
              f"{min(u.users for u in steps if u.users > s.users and not breaches_slo(u, th))} users met it "
              f"(a hiccup of the host or the target)" for s in refuted_breaches(steps, th)]
    return Verdict(
        steps=ran,
        thresholds=th,
        knee=None if knee is None else Knee(**StepPoint.fields_of(steps[knee.step], knee.users), rule=knee.rule,
                                            light_load_rps_per_user=round(knee.per_user_rps, 4)),
        brk=None if brk is None else Break(**StepPoint.fields_of(steps[brk]),
                                           reasons=tuple(breaches_slo(steps[brk], th))),
        capacity_rps=None if cap is None else round(cap, 2),
        capacity_below_plateau=knee is not None and cap is not None and not plateau_within_slo(steps, knee, brk, th),
        limiting_resource=resource,
        limiting_resource_basis=basis,
        signals=signals(steps, knee, th),
        notes=notes,
    )
