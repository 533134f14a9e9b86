"""CI gates: `--gate EXPR` checks a verdict figure, and `--junit FILE` writes the results as JUnit XML.

    capacity_rps>=40          the capacity
    knee.users>=80            the knee (also knee.rps, knee.p95_ms, break.users, break.rps, break.p95_ms)
    p95_ms@50users<=300       a figure of the step that held 50 users (rps, p95_ms, p50_ms, error_ratio,
                              mean_response_ms, target_cpu_cores, generator_cpu_cores)
    error_ratio<=0.01         failures / requests over every step's hold

A gate passes only on a figure the run measured. A figure it could not measure fails the gate and
says why (no knee, no step at that load, no p95). A figure known only as a lower bound (the capacity
of a run that never reached its breaking point, the knee beyond the top step) passes `>=`/`>` when
the bound already satisfies it, and fails anything else. A measurement the verdict calls invalid
(the load generator ran out of CPU) fails every gate.
"""

from __future__ import annotations

import operator
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loadlab.verdict import Verdict

OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
RUN_FIGURES = {"capacity_rps": "req/s", "error_ratio": "", "knee.users": "users", "knee.rps": "req/s",
               "knee.p95_ms": "ms", "break.users": "users", "break.rps": "req/s", "break.p95_ms": "ms"}
STEP_FIGURES = {"rps": "req/s", "p95_ms": "ms", "p50_ms": "ms", "error_ratio": "", "mean_response_ms": "ms",
                "target_cpu_cores": "cores", "generator_cpu_cores": "cores"}
_EXPR = re.compile(r"^\s*(?P<figure>[a-z_][a-z0-9_.]*)\s*(?:@\s*(?P<users>\d+)\s*(?:users?)?)?\s*"
                   r"(?P<op><=|>=|==|<|>)\s*(?P<threshold>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


class GateError(ValueError):
    """A gate expression that cannot be read; the message says what is accepted."""


@dataclass(frozen=True)
class Gate:
    expr: str
    figure: str
    op: str
    threshold: float
    users: int | None = None  # the step load for FIGURE@Nusers

    @property
    def unit(self) -> str:
        return (STEP_FIGURES if self.users is not None else RUN_FIGURES)[self.figure]


def parse(expr: str) -> Gate:
    """`capacity_rps>=40`, `p95_ms@50users<=300`, ... as a Gate; GateError naming what is wrong."""
    m = _EXPR.match(expr)
    if not m:
        raise GateError(f"--gate {expr!r}: expected FIGURE OP NUMBER, e.g. capacity_rps>=40, knee.users>=80, "
                        f"p95_ms@50users<=300, error_ratio<=0.01 (OP: <=, >=, <, >, ==)")
    figure, users = m["figure"], m["users"]
    known = STEP_FIGURES if users is not None else RUN_FIGURES
    if figure not in known:
        where = "per step (FIGURE@Nusers)" if users is not None else "for the run"
        raise GateError(f"--gate {expr!r}: unknown figure {figure!r}; {where}: {', '.join(known)}"
                        + ("" if users is not None else f"; per step: {', '.join(STEP_FIGURES)}@Nusers"))
    return Gate(expr=expr.strip(), figure=figure, op=m["op"], threshold=float(m["threshold"]),
                users=None if users is None else int(users))


def parse_all(exprs: Sequence[str] | None) -> list[Gate]:
    return [parse(e) for e in exprs or []]


@dataclass
class GateResult:
    gate: Gate
    passed: bool
    value: float | None
    ci: tuple[float, float | None] | None
    detail: str  # why it failed, or what to keep in mind

    def line(self) -> str:
        status = "passed" if self.passed else "FAILED"
        if self.value is None:
            return f"gate {self.gate.expr}: {status}: {self.detail}"
        text = f"{self.value:g}{' ' + self.gate.unit if self.gate.unit else ''}"
        if self.ci is not None:
            low, high = self.ci
            text += f", 95% CI {low:g}-{high:g}" if high is not None else f", 95% CI {low:g} and up"
        return f"gate {self.gate.expr}: {status} ({text})" + (f": {self.detail}" if self.detail else "")

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.gate.expr, "figure": self.gate.figure, "users": self.gate.users, "op": self.gate.op,
                "threshold": self.gate.threshold, "value": self.value,
                "ci": None if self.ci is None else list(self.ci), "passed": self.passed, "detail": self.detail}


@dataclass
class _Figure:
    value: float | None
    ci: tuple[float, float | None] | None = None
    lower_bound: bool = False  # the true value is at least `value`
    missing: str = ""  # why the run has no value


def _run_figure(gate: Gate, verdict: Verdict) -> _Figure:
    steps = verdict.steps
    top = max(s.users for s in steps)
    if gate.figure == "capacity_rps":
        if verdict.capacity_rps is None:
            return _Figure(None, missing="no capacity")
        return _Figure(verdict.capacity_rps, verdict.capacity_ci, lower_bound=not verdict.breaking_point_reached)
    if gate.figure == "error_ratio":
        requests = sum(s.requests for s in steps)
        if not requests:
            return _Figure(None, missing="no request completed in any step's hold")
        return _Figure(round(sum(s.failures for s in steps) / requests, 6))
    part, field = gate.figure.split(".")
    point = verdict.knee if part == "knee" else verdict.brk
    if point is None:
        if not verdict.breaking_point_reached and field == "users":
            return _Figure(float(top), lower_bound=True)
        why = (f"the run found no {part}" + (f": the breaking point was not reached up to {top} users"
                                              if not verdict.breaking_point_reached else
                                              ": the SLO broke before throughput flattened" if part == "knee" else ""))
        return _Figure(None, missing=why)
    value = getattr(point, field)
    if value is None:
        return _Figure(None, missing=f"the {part} step has no {field}")
    return _Figure(float(value), point.users_ci if field == "users" else None)


def _step_figure(gate: Gate, verdict: Verdict) -> _Figure:
    step = next((s for s in verdict.steps if s.users == gate.users), None)
    if step is None:
        return _Figure(None, missing=f"no step held {gate.users} users (steps: "
                                     f"{', '.join(str(s.users) for s in verdict.steps)})")
    value = getattr(step, gate.figure)
    if value is None:
        return _Figure(None, missing=f"the {gate.users}-user step has no {gate.figure} "
                                     "(no samples of it for that step)")
    ci = step.rps_ci if gate.figure == "rps" else step.p95_ms_ci if gate.figure == "p95_ms" else None
    return _Figure(float(value), ci)


def check(gate: Gate, verdict: Verdict) -> GateResult:
    """One gate against one verdict."""
    if not verdict.steps:
        return GateResult(gate, False, None, None, "not measured: the run has no steps")
    if not verdict.measurement_valid:
        return GateResult(gate, False, None, None,
                          "measurement not valid: the load generator ran out of CPU before the target did")
    fig = _step_figure(gate, verdict) if gate.users is not None else _run_figure(gate, verdict)
    if fig.value is None:
        return GateResult(gate, False, None, None, f"not measured: {fig.missing}")
    holds = OPS[gate.op](fig.value, gate.threshold)  # judged on the figure itself, shown rounded
    fig.value = round(fig.value, {"ms": 1, "req/s": 2, "cores": 2, "users": 1}.get(gate.unit, 6))
    if fig.lower_bound:
        if gate.op in (">=", ">") and holds:
            return GateResult(gate, True, fig.value, fig.ci,
                              "a lower bound (the breaking point was not reached), which already satisfies it")
        return GateResult(gate, False, fig.value, fig.ci,
                          f"not measured: only a lower bound is known (the breaking point was not reached), "
                          f"which cannot show {gate.op} {gate.threshold:g}")
    detail = ""
    if fig.ci is not None and (fig.ci[1] is None or fig.ci[1] >= gate.threshold) and fig.ci[0] <= gate.threshold:
        detail = "the threshold lies inside the 95% CI: a rerun may judge otherwise"
    return GateResult(gate, holds, fig.value, fig.ci, detail)


def evaluate(gates: Sequence[Gate], verdict: Verdict) -> list[GateResult]:
    return [check(g, verdict) for g in gates]


def failed(results: Sequence[GateResult] | None) -> bool:
    return any(not r.passed for r in results or [])


# ----------------------------------------------------------------------------- JUnit XML

@dataclass
class Case:
    """One JUnit test case: `failure` is the message when it failed (None: passed)."""

    name: str
    failure: str | None
    output: str = ""


def gate_cases(results: Sequence[GateResult]) -> list[Case]:
    return [Case(r.gate.expr, None if r.passed else r.line(), r.line()) for r in results]


def write_junit(path: Path | str, suites: Sequence[tuple[str, Sequence[Case]]]) -> Path:
    """JUnit XML (`<testsuites>`), the format CI systems show: one suite per (name, cases)."""
    root = ET.Element("testsuites")
    for name, cases in suites:
        suite = ET.SubElement(root, "testsuite", name=name, tests=str(len(cases)),
                              failures=str(sum(c.failure is not None for c in cases)), errors="0", skipped="0")
        for case in cases:
            el = ET.SubElement(suite, "testcase", name=case.name, classname=name, time="0")
            if case.failure is not None:
                ET.SubElement(el, "failure", message=case.failure, type="loadlab").text = case.failure
            if case.output:
                ET.SubElement(el, "system-out").text = case.output
    root.set("tests", str(sum(len(c) for _, c in suites)))
    root.set("failures", str(sum(c.failure is not None for _, cs in suites for c in cs)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path
