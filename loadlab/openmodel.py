"""The verdict of an open-model (arrival-rate) run: where the API stopped keeping up with the
arrivals, the throughput it reached while overloaded, and what ran out first.

In an open model the offered rate is the input and the achieved throughput the output. While the
API keeps up, every step completes what it was offered (within a small tolerance), drops nothing,
its latency from the scheduled start (corrected for coordinated omission) stays level across the
hold, and that corrected p95 meets the SLO: the step is *sustained*
(`loadlab.contract.openmodel.judge_step`, the live hunt's judge too). Past the capacity, arrivals
outpace completions, a queue grows without draining, and the throughput stays at the ceiling:

- `break`: the first step that was not sustained, with its offered `rate` and `reasons`;
- `capacity_rps`: the median throughput achieved by the steps from the break up that fell short of
  their arrivals (or dropped some; `at_ceiling`): the ceiling, measured while overloaded. None when
  no step was overloaded;
- `max_sustained_rate`: the highest offered rate sustained before the break;
- `limiting_resource`: judged at the break by `analysis.limiting_resource` as for a closed run (a
  fleet's machines and each load machine too, `judge_machines`), except `generator_concurrency`
  when the generator's own request slots were the limit.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from dataclasses import replace

from loadlab import analysis, functional
from loadlab.contract.histograms import rate_series
from loadlab.contract.openmodel import (
    ARRIVAL_RATE,
    ARRIVALS_DROPPED,
    ARRIVALS_LATE,
    ARRIVALS_SCHEDULED,
    ARRIVALS_WERE_DROPPED,
    LATENCY_GROWING,
    THROUGHPUT_BELOW_OFFERED,
    edge_allowance,
    refuted_rate,
)
from loadlab.contract.slo import LATENCY_P95
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS, Thresholds
from loadlab.history import Samples, scrape_value, series
from loadlab.ratesteps import RateStep, summarize_rate_steps
from loadlab.steps import ResourceSeries, StepSummary, _resource_fields
from loadlab.verdict import GENERATOR_CONCURRENCY, Break, Signal, StepPoint, TopError, Verdict

# The generator's slots were the limit when, at the break, Little's law puts at least this share
# of them in use (X * R) while the API's own latency stayed within this factor of its light-load one.
SLOTS_IN_USE_FRACTION = 0.9
LIGHT_LOAD_FACTOR = 1.5


def step_summaries(rate_steps: list[RateStep], resources: ResourceSeries | None, meta: dict) -> list[StepSummary]:
    """The rate steps as the closed model's StepSummary (users = the request slots), resources filled,
    so the limiting-resource judgement and the report's charts work on them unchanged."""
    out = []
    for step in rate_steps:
        summary = StepSummary(
            index=step.index, users=step.slots or 0, start=step.start, hold_start=step.hold_start, end=step.end,
            rps=step.achieved_rps, rps_median=step.achieved_rps, requests=step.requests, failures=step.failures,
            error_ratio=step.error_ratio, p50_ms=step.corrected_p50_ms, p95_ms=step.corrected_p95_ms,
            p95_source="corrected_histogram", mean_response_ms=step.mean_response_ms)
        if resources is not None:
            for key, value in _resource_fields(resources, step.hold_start, step.end, meta).items():
                setattr(summary, key, value)
        out.append(summary)
    return out


def overloaded(step: RateStep) -> bool:
    """The step completed fewer requests than it was offered (or dropped arrivals): throughput-bound."""
    return THROUGHPUT_BELOW_OFFERED in step.reasons or ARRIVALS_WERE_DROPPED in step.reasons


def at_ceiling(step: RateStep, light_load_ms: float | None) -> bool:
    """An unsustained step whose throughput is the ceiling: `overloaded`, or it completed fewer
    requests than arrived by more than the requests in flight at its edges explain (the judge's
    `edge_allowance`, without the shortfall it tolerates in a sustained step). An adaptive hunt's
    steps just past the capacity are often unsustained on latency alone (a queue growing within a
    short hold) while already at the ceiling; a step whose only fault is latency and that kept up
    with its arrivals (a tight SLO below the capacity) is not."""
    if step.sustained:
        return False
    return overloaded(step) or step.scheduled - step.requests > edge_allowance(step.scheduled, step.end - step.hold_start,
                                                                               light_load_ms)


def generator_slots_limited(rate_steps: list[RateStep], brk: int) -> str | None:
    """Why the generator's request slots, not the API, limited the break step's throughput (or None)."""
    step = rate_steps[brk]
    light = min((s.mean_response_ms for s in rate_steps if s.mean_response_ms), default=None)
    if not overloaded(step) or not step.slots or not step.mean_response_ms or not light:
        return None
    in_use = step.achieved_rps * step.mean_response_ms / 1000.0  # Little's law: requests in flight
    if in_use >= SLOTS_IN_USE_FRACTION * step.slots and step.mean_response_ms <= LIGHT_LOAD_FACTOR * light:
        return (f"all {step.slots} request slots were in use (Little's law: {step.achieved_rps:.1f} req/s x "
                f"{step.mean_response_ms:.0f} ms = {in_use:.1f} in flight) while the API answered in "
                f"{step.mean_response_ms:.0f} ms, near its light-load {light:.0f} ms: the generator's "
                f"--max-concurrency capped the throughput, not the API; raise it")
    return None


def limiting_resource(summaries: list[StepSummary], rate_steps: list[RateStep], brk: int,
                      th: Thresholds) -> tuple[str | None, str]:
    """`analysis.limiting_resource` at the break, worded by offered rate: every step has the same
    users (the request slots), so each is named by its index, then by its rate."""
    by_index = [replace(s, users=i) for i, s in enumerate(summaries)]
    resource, basis = analysis.limiting_resource(by_index, brk, brk, th)
    return resource, by_rate_text(basis, rate_steps)


def by_rate_text(text: str, rate_steps: list[RateStep]) -> str:
    """`text` written of steps named by their position in `rate_steps` ("at 3 users", "the steps at
    3, 4 users"), worded by offered rate ("at the 30 arrivals/s step", "the 30, 40 arrivals/s steps")."""
    def rates(m: re.Match) -> str:
        named = [f"{rate_steps[int(i)].offered_rps:g}" for i in m[2].split(", ")]
        return (f"{'the' if m[1] else 'at the'} {', '.join(named)} arrivals/s step"
                f"{'s' if len(named) > 1 else ''}")

    return re.sub(r"\b((?:the )?steps? )?at (\d+(?:, \d+)*) users", rates, text)


def judge_machines(summaries: list[StepSummary], rate_steps: list[RateStep],
                   per_machine: Callable[[list[StepSummary]], list[str]]) -> list[str]:
    """Run `per_machine` (`rundir.per_machine`: a fleet's machines, each load machine's CPU, the steps a
    remote source left without samples) on the steps, its notes worded by offered rate. Every step has
    the same users (the request slots), so while it runs each is named by its position instead."""
    slots = [s.users for s in summaries]
    for i, s in enumerate(summaries):
        s.users = i
    try:
        notes = per_machine(summaries)
    finally:
        for s, users in zip(summaries, slots):
            s.users = users
    return [by_rate_text(note, rate_steps) for note in notes]


def signals(rate_steps: list[RateStep], summaries: list[StepSummary], th: Thresholds) -> list[Signal]:
    """The first step at which each reason (and each CPU saturation) appeared, in order of offered rate
    (`rate_steps` and `summaries` in that order, `by_rate`), then time."""
    crossings: dict[str, Signal] = {}
    for step, summary in zip(rate_steps, summaries):
        values = {THROUGHPUT_BELOW_OFFERED: step.achieved_rps, ARRIVALS_WERE_DROPPED: float(step.dropped),
                  LATENCY_P95: step.corrected_p95_ms}
        for reason in step.reasons:
            if reason not in crossings:
                value = values.get(reason, step.second_half_mean_ms if reason == LATENCY_GROWING else step.error_ratio)
                crossings[reason] = Signal(reason, step.start, summary.users,
                                           None if value is None else round(value, 4), step.offered_rps)
    for signal in analysis.signals(summaries, None, th):
        if signal.signal not in crossings and signal.signal not in (LATENCY_P95, "error_ratio"):
            rate = next(r.offered_rps for r, s in zip(rate_steps, summaries) if s.start == signal.time)
            crossings[signal.signal] = replace(signal, rate=rate)
    return sorted(crossings.values(), key=lambda c: (c.rate or 0.0, c.time))


def by_rate(rate_steps: list[RateStep]) -> list[int]:
    """Positions of the steps in order of offered rate (ties in the order they ran). A fixed rate hunt
    runs in this order already; the adaptive one grows, refines below a step that was not sustained
    and may back off, and in order of rate its steps are one curve again, every measured rate in it."""
    return sorted(range(len(rate_steps)), key=lambda i: (rate_steps[i].offered_rps, rate_steps[i].start))


def refuted_steps(rate_steps: list[RateStep]) -> list[RateStep]:
    """Steps not sustained on latency alone while a step offered more arrivals/s was (a hiccup)."""
    held = [s.offered_rps for s in rate_steps if s.sustained]
    return [s for s in rate_steps if not s.sustained and refuted_rate(s.reasons, s.offered_rps, held)]


def analyze_rate_steps(rate_steps: list[RateStep], summaries: list[StepSummary],
                       th: Thresholds = DEFAULT_THRESHOLDS, errors: functional.ErrorEvidence | None = None) -> Verdict:
    """The verdict for a run's rate steps (`summaries`: the same steps from `step_summaries`), in any
    order they ran: the verdict lists them so, every rule reads them in order of offered rate
    (`by_rate`). `errors`: the run's failure texts (per step in the order the steps ran), to tell an
    API that fails functionally at light load (exit 3, no break or capacity) from one that ran out of
    capacity, as for a closed run (`loadlab.functional`)."""
    verdict = Verdict(steps=summaries, thresholds=th, open_model=True, rate_steps=rate_steps)
    order = by_rate(rate_steps)
    ran = rate_steps
    rate_steps, summaries = [ran[i] for i in order], [summaries[i] for i in order]
    hiccups = {id(s) for s in refuted_steps(rate_steps)}
    brk = next((i for i, s in enumerate(rate_steps) if not s.sustained and id(s) not in hiccups), None)
    verdict.signals = signals(rate_steps, summaries, th)
    verdict.notes.extend(
        f"not the break: {s.offered_rps:g} arrivals/s was not sustained on latency alone ({s.detail}) but "
        f"{min(u.offered_rps for u in rate_steps if u.sustained and u.offered_rps > s.offered_rps):g}/s was "
        f"(a hiccup of the host or the target)" for s in rate_steps if id(s) in hiccups)
    if errors is not None:  # light load: the steps sustained before the break (and the first step)
        by_step = [errors.by_step[i] if i < len(errors.by_step) else None for i in order]
        failure, notes = functional.judge(summaries, brk, replace(errors, by_step=by_step))
        verdict.notes.extend(notes)
        if failure is not None:
            rate = next(r.offered_rps for r in rate_steps if r.start == failure.time)
            verdict.functional_failure = replace(failure, rate=rate)
            verdict.limiting_resource_basis = "the API failed functionally"
            return verdict
    if brk is None:
        verdict.limiting_resource_basis = "no step failed to be sustained: nothing ran out"
        return verdict
    step = rate_steps[brk]
    verdict.brk = Break(**StepPoint.fields_of(summaries[brk]), reasons=tuple(step.reasons), rate=step.offered_rps)
    light = min((s.mean_response_ms for s in rate_steps if s.mean_response_ms), default=None)
    ceiling = [s.achieved_rps for s in rate_steps[brk:] if at_ceiling(s, light)]
    verdict.capacity_rps = round(statistics.median(ceiling), 2) if ceiling else None
    sustained = [s.offered_rps for s in rate_steps[:brk] if s.sustained]
    verdict.max_sustained_rate = max(sustained) if sustained else None
    slots_basis = generator_slots_limited(rate_steps, brk)
    if slots_basis is not None:
        verdict.limiting_resource, verdict.limiting_resource_basis = GENERATOR_CONCURRENCY, slots_basis
    else:
        verdict.limiting_resource, verdict.limiting_resource_basis = limiting_resource(summaries, rate_steps, brk, th)
    return verdict


def analyze_samples(samples: Samples, meta: dict, th: Thresholds, resources: ResourceSeries | None,
                    until: float | None = None, run_errors: list[TopError] | None = None,
                    failures_csv: str | None = None,
                    per_machine: Callable[[list[StepSummary]], list[str]] | None = None) -> Verdict:
    """The open-model verdict of a run's samples (`until`: only what ran before it, for a partial run).
    `run_errors`: Locust's failures CSV (`failures_csv`) rows, for a functional failure's top errors
    when the exporter's samples lack them; None: the functional check is not made. `per_machine`:
    fills the steps' per-machine figures as for a closed run (`judge_machines`); its notes join the verdict's."""
    rate_steps = summarize_rate_steps(samples, th, until)
    summaries = step_summaries(rate_steps, resources, meta)
    notes = judge_machines(summaries, rate_steps, per_machine) if per_machine is not None else []
    evidence = None if run_errors is None else functional.ErrorEvidence(
        by_step=[functional.step_errors(samples, s) for s in summaries], run=run_errors, failures_csv=failures_csv)
    verdict = analyze_rate_steps(rate_steps, summaries, th, evidence)
    verdict.notes.extend(notes)
    return verdict


Point = tuple[float, float]


def timeline(samples: Samples) -> dict[str, list[Point]]:
    """Per-second series for the report: offered rate, arrivals scheduled/s, throughput, late/s, dropped/s."""
    scrapes = samples.scrapes("locust")
    return {
        "offered": [(s.t, v) for s in scrapes if (v := scrape_value(s, ARRIVAL_RATE)) is not None],
        "scheduled": rate_series(series(scrapes, ARRIVALS_SCHEDULED)),
        "achieved": rate_series(series(scrapes, "locust_requests_total")),
        "late": rate_series(series(scrapes, ARRIVALS_LATE)),
        "dropped": rate_series(series(scrapes, ARRIVALS_DROPPED)),
    }


__all__ = ["analyze_rate_steps", "analyze_samples", "at_ceiling", "by_rate", "by_rate_text", "generator_slots_limited",
           "judge_machines", "refuted_steps",
           "step_summaries", "timeline"]
