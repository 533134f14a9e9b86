"""Did the API fail functionally, rather than run out of capacity?

An API that answers 401 to every login, 404 on a wrong path, or 500 to everything fails just as
fast at 10 users as at 1000. Its "break" is at the first step and its "capacity" is the rate of
its failures: a number that means nothing. So before the breaking-point analysis is believed, the
steps at light load (the first step, and every step below the knee) are checked: when most of a
step's requests failed for functional reasons, the verdict is a functional failure.

Functional: a 4xx answer (except 408 and 429, which are a server saying it is too busy), a 2xx or
3xx answer the scenario rejected (a login without a token), or a 5xx answer while the target's
CPU was idle (an overloaded server answers 5xx with its CPU busy). A 5xx with the target's CPU
not sampled (a --host target without --target-pid) counts at the first step only: the lightest
load of the run. A connection error is not functional (nothing answered at all).

The failure texts and their counts come from the exporter's `locust_errors_total` samples over
each step's hold (samples.jsonl), else from Locust's `PREFIX_failures.csv`, which covers the whole
run. The HTTP status is read from each text: the suite's checks write "HTTP 401", Locust's
FastHttpUser `code=401`, its HttpUser "401 Client Error".
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from loadlab.contract.histograms import counter_increase
from loadlab.history import Damage, Samples, read_csv_rows, scrape_value
from loadlab.steps import StepSummary
from loadlab.verdict import FunctionalFailure, TopError

# More than this share of a step's requests failing functionally makes the API's failure the finding.
FUNCTIONAL_MAJORITY = 0.5
# The target's CPU below this share of the cores it can use counts as idle (a 5xx then is no overload).
IDLE_CPU_FRACTION = 0.5
# 4xx statuses that report load, not a wrong request: a capacity signal, never a functional failure.
LOAD_STATUSES = frozenset({408, 429})
TOP_ERRORS = 3

_STATUS_PATTERNS = (
    re.compile(r"\bHTTP (\d{3})\b"),  # the suite's checks: "got HTTP 401 (invalid_credentials)"
    re.compile(r"\bcode=(\d{3})\b"),  # FastHttpUser: LocustBadStatusCode(code=500)
    re.compile(r"\b(\d{3}) (?:Client|Server) Error\b"),  # HttpUser (requests): "404 Client Error: NOT FOUND"
)
LOCUST_ERRORS = "locust_errors_total"


def status_of(error: str) -> int | None:
    """The HTTP status a Locust failure text names, if it names one."""
    for pattern in _STATUS_PATTERNS:
        match = pattern.search(error)
        if match:
            return int(match.group(1))
    return None


def is_functional(status: int | None, cpu_idle: bool | None, first_step: bool, below_knee: bool = False) -> bool:
    """Whether a failure with this status is the API's fault rather than overload (see the module doc).
    `cpu_idle`: the target's CPU was idle over the step (None: not sampled). A 5xx counts only at
    light load: the first step, or below a knee the run found; elsewhere idle CPU and 5xx answers
    may be a pool or a lock running out, which is a capacity limit."""
    if status is None or status in LOAD_STATUSES:
        return False  # no answer, or an answer that reports load
    if status < 500:
        return True  # 4xx, or a 2xx/3xx answer the scenario's check rejected
    if not (first_step or below_knee):
        return False
    return cpu_idle if cpu_idle is not None else first_step


@dataclass
class ErrorEvidence:
    """Failure texts with their counts: per step (over its hold) when the exporter was sampled, and
    for the whole run from Locust's failures CSV when it is there."""

    by_step: list[list[TopError] | None]  # None: no exporter samples over that step
    run: list[TopError]
    failures_csv: str | None = None


def step_errors(samples: Samples, step: StepSummary) -> list[TopError] | None:
    """Failures by text over the step's hold, from the exporter's `locust_errors_total` (None without
    at least two of its scrapes at this step's user count)."""
    scrapes = [sc for sc in samples.scrapes("locust")
               if step.hold_start <= sc.t < step.end + 1 and scrape_value(sc, "locust_users") == step.users]
    if len(scrapes) < 2:
        return None
    keys = {(labels.get("method", ""), labels.get("name", ""), labels.get("error", ""))
            for sc in scrapes for name, labels, _ in sc.samples if name == LOCUST_ERRORS}
    out = []
    for method, name, error in keys:
        match = {"method": method, "name": name, "error": error}
        # A text first seen inside the hold had counted 0 before: an absent series is a zero here.
        points = [(sc.t, scrape_value(sc, LOCUST_ERRORS, match) or 0.0) for sc in scrapes]
        increase = counter_increase(points, scrapes[0].t, scrapes[-1].t)
        if increase and increase[0] > 0:
            out.append(TopError(f"{method} {name}".strip(), error, round(increase[0]), status_of(error)))
    return sorted(out, key=lambda e: -e.count)


def read_failures_csv(path: Path, damage: Damage | None = None) -> list[TopError]:
    """Locust's `PREFIX_failures.csv` (Method, Name, Error, Occurrences), most frequent first."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    if not path.read_bytes().strip():
        return []  # Locust stopped before it wrote even the header: no failures recorded
    for line_no, row in read_csv_rows(path, ("Method", "Name", "Error", "Occurrences"), damage):
        try:
            occurrences = int(row["Occurrences"])
        except ValueError:
            (damage or Damage()).found(path, line_no, f"Occurrences {row['Occurrences']!r} is not a whole number")
            continue
        counts[(f"{row['Method']} {row['Name']}".strip(), _unwrap(row["Error"]))] += occurrences
    return sorted((TopError(request, error, n, status_of(error)) for (request, error), n in counts.items()),
                  key=lambda e: -e.count)


def _unwrap(error: str) -> str:
    """The failure text without Locust's CatchResponseError('...') wrapper, as its exporter shows it."""
    match = re.fullmatch(r"CatchResponseError\((['\"])(.*)\1\)", error, re.S)
    return match.group(2) if match else error


def _cpu_idle(step: StepSummary) -> bool | None:
    if step.target_cpu_cores is None:
        return None
    usable = step.target_cores_available or step.host_cores
    if not usable:
        return None
    return step.target_cpu_cores < IDLE_CPU_FRACTION * usable


def judge(steps: list[StepSummary], knee_step: int | None, evidence: ErrorEvidence) -> tuple[FunctionalFailure | None, list[str]]:
    """The first light-load step where most requests failed functionally, and notes on what could not be told."""
    notes: list[str] = []
    light = steps[: max(1, knee_step)] if knee_step is not None else steps
    for i, step in enumerate(light):
        if step.requests <= 0 or step.error_ratio <= FUNCTIONAL_MAJORITY:
            continue
        errors = evidence.by_step[i] if i < len(evidence.by_step) else None
        source = "over this step, from the exporter's samples"
        if not errors:
            errors = evidence.run
            source = f"whole run, from {Path(evidence.failures_csv or '').name}"
        if not errors:
            if i == 0:
                notes.append(f"note: {step.error_ratio:.0%} of requests failed at the first step ({step.users} users) "
                             f"and the input does not say why (no exporter samples or Locust failures CSV): check "
                             f"that the API works before reading the break as a capacity limit")
            continue
        idle = _cpu_idle(step)
        total = sum(e.count for e in errors)
        functional = [e for e in errors if is_functional(e.status, idle, i == 0, knee_step is not None)]
        share = sum(e.count for e in functional) / total
        if step.error_ratio * share <= FUNCTIONAL_MAJORITY:
            continue
        statuses = {e.status for e in functional if e.status is not None}
        reasons = []
        if any(s < 400 for s in statuses):
            reasons.append("answers the scenario's checks rejected")
        if any(400 <= s < 500 for s in statuses):
            reasons.append("4xx answers, which say the requests do not fit this API")
        if any(s >= 500 for s in statuses):
            if idle:
                reasons.append(f"5xx answers while the target's CPU was idle ({step.target_cpu_cores:.2f} cores "
                               f"used), so not from overload")
            else:
                reasons.append("5xx answers at the run's lightest load, where overload is least likely "
                               "(the target's CPU was not sampled)")
        return FunctionalFailure(
            users=step.users, error_ratio=round(step.error_ratio, 4),
            top_errors=tuple(functional[:TOP_ERRORS]), time=step.start, reason="; ".join(reasons),
            errors_source=source), notes
    return None, notes
