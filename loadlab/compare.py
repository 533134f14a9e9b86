"""`loadlab compare BASE NEW`: did it get worse, and are we sure?

Both runs are analysed afresh (`rundir.analyze`, with the bootstrap of `loadlab.uncertainty`), then
each figure they share is compared: the capacity, the knee, the break, and the throughput and p95
of every step load both runs held. For each: the change in percent, its confidence interval and a
judgement. A change is judged (`regressed` or `improved`) only when its interval excludes zero
*and* the change is at least `--min-change` percent; otherwise it is `unchanged`. A figure only one
run measured, or known only as a lower bound where that leaves the answer open, is `unknown`, with
the reason.

The intervals are *simultaneous*: the runs are independent, so each NEW replicate is paired with a
BASE replicate drawn at random, giving replicates of log(NEW / BASE). Each figure's own 95% interval
of those reaches some way below and above the change; every replicate's deviation is measured in
those reaches, and all intervals are stretched by one factor c, the 95% quantile over the
replicates of the largest deviation over all figures (a sup-t band that keeps each figure's own
skew). All intervals then hold together 95% of the time, so comparing 30 figures does not raise 30
chances of a false alarm. The break is a step level, known only between the last healthy step and
the breaking one, and a p95 whose hold fell into one histogram bucket is known only to that bucket:
both are compared by interval arithmetic on those bounds.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadlab import rundir
from loadlab.contract.thresholds import as_dict
from loadlab.gates import Case
from loadlab.history import LocustHistory, read_stats_history
from loadlab.uncertainty import LEVEL, Bootstrap
from loadlab.verdict import Verdict

DEFAULT_MIN_CHANGE_PCT = 5.0
COMPARE_HTML = "compare.html"
COMPARE_JSON = "compare.json"
REGRESSED, IMPROVED, UNCHANGED, UNKNOWN = "regressed", "improved", "unchanged", "unknown"
PAIRING_SEED = 1414  # the random pairing of BASE and NEW replicates (fixed: same runs, same answer)


class CompareError(ValueError):
    """The two runs cannot be compared; the message says why and what to do (exit 2)."""


@dataclass
class Side:
    """One run as compare sees it."""

    label: str  # BASE | NEW
    path: str
    verdict: Verdict
    history: LocustHistory
    scenario: str | None
    out_dir: Path

    @property
    def boot(self) -> Bootstrap | None:
        return self.verdict.bootstrap


@dataclass
class Row:
    figure: str  # capacity_rps, knee.users, break.users, rps@50users, p95_ms@50users
    unit: str
    higher_is_better: bool
    base: float | None
    base_ci: tuple[float, float | None] | None
    new: float | None
    new_ci: tuple[float, float | None] | None
    change_pct: float | None = None
    change_ci_pct: tuple[float | None, float | None] | None = None  # None end: unbounded
    judgement: str = UNKNOWN
    reason: str = ""
    users: int | None = None  # the step load, for per-step rows


@dataclass
class Comparison:
    base: Side
    new: Side
    rows: list[Row]
    min_change_pct: float
    critical_value: float | None  # c: how far each figure's own 95% interval is stretched to hold together
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.judgement == REGRESSED]

    @property
    def improvements(self) -> list[Row]:
        return [r for r in self.rows if r.judgement == IMPROVED]

    @property
    def judgement(self) -> str:
        return REGRESSED if self.regressions else IMPROVED if self.improvements else UNCHANGED

    def to_dict(self) -> dict[str, Any]:
        def side(s: Side) -> dict[str, Any]:
            v = s.verdict
            return {"path": s.path, "scenario": s.scenario, "capacity_rps": v.capacity_rps,
                    "capacity_ci": v.capacity_ci, "breaking_point_reached": v.breaking_point_reached,
                    "steps": [st.users for st in v.steps], "thresholds": as_dict(v.thresholds)}

        return {"judgement": self.judgement, "level": LEVEL, "simultaneous": True,
                "min_change_pct": self.min_change_pct, "critical_value": self.critical_value,
                "base": side(self.base), "new": side(self.new),
                "regressions": [r.figure for r in self.regressions],
                "improvements": [r.figure for r in self.improvements],
                "figures": [asdict(r) for r in self.rows], "notes": self.notes}


# ----------------------------------------------------------------------------- loading

def load(label: str, path: Path | str, p95_ms: float | None = None, error_ratio: float | None = None,
         verdict: Verdict | None = None) -> Side:
    """A run for comparison, analysed afresh (the replicates are not stored in verdict.json). `verdict`:
    one already analysed in this process (`loadlab run --baseline` has the new run's)."""
    try:
        inputs = rundir.locate(path)
        if verdict is None or verdict.bootstrap is None:
            th = rundir.run_thresholds(inputs, os.environ, p95_ms, error_ratio)
            verdict, _ = rundir.analyze(path, th, write=False)
        history = read_stats_history(inputs.history_csv)
    except (FileNotFoundError, ValueError) as exc:
        raise CompareError(f"{label} {path}: {exc}") from None
    return Side(label, str(path), verdict, history, inputs.meta.get("scenario"), inputs.out_dir)


def precheck(base: Path | str, new: Path | str, p95_ms: float | None = None, error_ratio: float | None = None) -> None:
    """What can be refused before analysing anything: a missing run, another scenario, another SLO."""
    found = {}
    for label, path in (("BASE", base), ("NEW", new)):
        try:
            inputs = rundir.locate(path)
            th = rundir.run_thresholds(inputs, os.environ, p95_ms, error_ratio)
        except (FileNotFoundError, ValueError) as exc:
            raise CompareError(f"{label} {path}: {exc}") from None
        found[label] = (inputs.meta.get("scenario"), th)
    (sb, tb), (sn, tn) = found["BASE"], found["NEW"]
    if sb and sn and sb != sn:
        raise CompareError(f"BASE ran {sb} and NEW ran {sn}: compare runs of the same scenario")
    _same_slo(tb, tn)


def _same_slo(base: Any, new: Any) -> None:
    a, b = as_dict(base), as_dict(new)
    if a["latency_p95_ms"] != b["latency_p95_ms"] or a["error_ratio"] != b["error_ratio"]:
        raise CompareError(f"the runs were judged by different SLOs (BASE p95 {a['latency_p95_ms']:g} ms, errors "
                           f"{a['error_ratio']:g}; NEW p95 {b['latency_p95_ms']:g} ms, errors {b['error_ratio']:g}), "
                           "so their knees and breaks differ by definition: pass --slo-p95-ms and --slo-error-ratio "
                           "to judge both by the same SLO")


def check_comparable(base: Side, new: Side) -> None:
    """CompareError when the two runs answer different questions."""
    if base.scenario and new.scenario and base.scenario != new.scenario:
        raise CompareError(f"BASE ran {base.scenario} and NEW ran {new.scenario}: compare runs of the same scenario")
    for side in (base, new):
        if not side.verdict.steps:
            raise CompareError(f"{side.label} {side.path}: no steps (no user level held for 3 seconds or more): "
                               "nothing to compare")
    _same_slo(base.verdict.thresholds, new.verdict.thresholds)


# ----------------------------------------------------------------------------- the arithmetic

def _pct(ratio: float | None) -> float | None:
    return None if ratio is None or not math.isfinite(ratio) else round(100.0 * (ratio - 1.0), 1)


@dataclass
class _Continuous:
    """A figure both runs measured, with replicates: compared on the log ratio."""

    row: Row
    base_reps: np.ndarray
    new_reps: np.ndarray
    base_lower_bound: bool = False
    new_lower_bound: bool = False
    log_change: float = 0.0
    replicates: np.ndarray | None = None  # log(NEW / BASE) per replicate pair; NaN: the figure is missing
    below: float = 0.0  # its own 95% interval's reach below and above the change (log scale)
    above: float = 0.0
    deviations: np.ndarray | None = None  # each replicate's distance from the change, in those units


def _prepare(item: _Continuous, pairing: np.ndarray, level: float) -> None:
    base, new = item.row.base, item.row.new
    assert base is not None and new is not None
    d = item.log_change = math.log(new / base)
    with np.errstate(divide="ignore", invalid="ignore"):
        reps = np.log(item.new_reps) - np.log(item.base_reps[pairing])
    # A replicate run without the figure (no knee there) says nothing about its size.
    reps[np.isnan(item.new_reps) | np.isnan(item.base_reps[pairing])] = np.nan
    item.replicates = reps
    if np.all(np.isnan(reps)):
        return
    tail = (1 - level) / 2
    low = float(np.nanquantile(reps, tail, method="lower"))
    high = float(np.nanquantile(reps, 1 - tail, method="higher"))
    # A side with (almost) no spread gets a floor, so its few stray replicates do not dominate the band.
    floor = max(0.25 * (high - low), 1e-6) if math.isfinite(high - low) else 1e-6
    item.below, item.above = max(d - low, floor), max(high - d, floor)
    with np.errstate(invalid="ignore"):
        item.deviations = np.where(reps >= d, (reps - d) / item.above, (d - reps) / item.below)


def _judge(row: Row, low: float | None, high: float | None, min_change: float) -> None:
    """The judgement from the change and its interval (percent; a None end is unbounded)."""
    change = row.change_pct
    assert change is not None
    up = low is not None and low > 0  # the figure went up, with confidence
    down = high is not None and high < 0
    worse, better = (down, up) if row.higher_is_better else (up, down)
    if (worse or better) and abs(change) < min_change:
        row.judgement, row.reason = UNCHANGED, f"a real change, but under --min-change {min_change:g}%"
    elif worse:
        row.judgement = REGRESSED
    elif better:
        row.judgement = IMPROVED
    else:
        row.judgement, row.reason = UNCHANGED, "its interval includes 0"


def _band(items: list[_Continuous], level: float) -> float | None:
    """c: the `level` quantile over the replicates of the largest deviation over all figures, each in
    units of its own marginal interval's reach (so a heavy-tailed figure does not widen the others):
    every figure's interval stretched c times then holds for all of them together at `level`."""
    devs = [it.deviations for it in items if it.deviations is not None]
    if not devs:
        return None
    table = np.vstack(devs)
    worst = np.nanmax(np.where(np.isnan(table), -np.inf, table), axis=0)
    return max(1.0, float(np.quantile(np.maximum(worst, 0.0), level, method="higher")))


def _continuous_rows(base: Side, new: Side) -> list[_Continuous]:
    """The figures both runs have with replicates: capacity, knee, and per shared step rps and p95."""
    b, n = base.boot, new.boot
    vb, vn = base.verdict, new.verdict
    out: list[_Continuous] = []
    if b is not None and n is not None and b.capacity is not None and n.capacity is not None \
            and vb.capacity_rps and vn.capacity_rps:
        out.append(_Continuous(Row("capacity_rps", "req/s", True, vb.capacity_rps, vb.capacity_ci, vn.capacity_rps,
                                   vn.capacity_ci), b.capacity, n.capacity,
                               base_lower_bound=not vb.breaking_point_reached,
                               new_lower_bound=not vn.breaking_point_reached))
    if b is not None and n is not None and b.knee_users is not None and n.knee_users is not None \
            and vb.knee is not None and vn.knee is not None:
        out.append(_Continuous(Row("knee.users", "users", True, vb.knee.users, vb.knee.users_ci, vn.knee.users,
                                   vn.knee.users_ci), b.knee_users, n.knee_users))
    new_steps = {s.users: (i, s) for i, s in enumerate(vn.steps)}
    for i, s in enumerate(vb.steps):
        if s.users not in new_steps:
            continue
        j, t = new_steps[s.users]
        rb = b.steps[i] if b is not None and i < len(b.steps) else None
        rn = n.steps[j] if n is not None and j < len(n.steps) else None
        if rb is not None and rn is not None and s.rps > 0 and t.rps > 0:
            out.append(_Continuous(Row(f"rps@{s.users}users", "req/s", True, round(s.rps, 2), s.rps_ci,
                                       round(t.rps, 2), t.rps_ci, users=s.users), rb.rps, rn.rps))
        if rb is not None and rn is not None and rb.p95_bucket and rn.p95_bucket and s.p95_ms and t.p95_ms:
            continue  # both known only to their bucket: `_bucket_rows`
        if rb is not None and rn is not None and rb.p95_ms is not None and rn.p95_ms is not None \
                and s.p95_ms and t.p95_ms:
            out.append(_Continuous(Row(f"p95_ms@{s.users}users", "ms", False, round(s.p95_ms, 1), s.p95_ms_ci,
                                       round(t.p95_ms, 1), t.p95_ms_ci, users=s.users), rb.p95_ms, rn.p95_ms))
    return out


def _bucket_rows(base: Side, new: Side, min_change: float) -> list[Row]:
    """p95 at the step loads where both holds had (nearly) every request in one histogram bucket: each
    p95 is known only to lie in its bucket, so the change is bounded by interval arithmetic on them."""
    rows: list[Row] = []
    b, n = base.boot, new.boot
    if b is None or n is None:
        return rows
    new_steps = {s.users: (j, s) for j, s in enumerate(new.verdict.steps)}
    for i, s in enumerate(base.verdict.steps):
        if s.users not in new_steps or i >= len(b.steps):
            continue
        j, t = new_steps[s.users]
        rb, rn = b.steps[i], n.steps[j] if j < len(n.steps) else None
        if rb is None or rn is None or not (rb.p95_bucket and rn.p95_bucket and s.p95_ms and t.p95_ms):
            continue
        (bl, bh), (nl, nh) = rb.p95_bucket, rn.p95_bucket
        row = Row(f"p95_ms@{s.users}users", "ms", False, round(s.p95_ms, 1), s.p95_ms_ci, round(t.p95_ms, 1),
                  t.p95_ms_ci, users=s.users, change_pct=_pct(t.p95_ms / s.p95_ms),
                  change_ci_pct=(_pct(nl / bh), _pct(nh / bl) if bl > 0 else None))
        assert row.change_pct is not None
        if (nl >= bh or nh <= bl) and abs(row.change_pct) >= min_change:
            row.judgement = REGRESSED if nl >= bh else IMPROVED
            row.reason = "every request of both holds in one bucket each, and the buckets differ"
        else:
            row.judgement = UNCHANGED
            row.reason = "both p95s are known only to their histogram bucket" + (
                ", the same one" if (bl, bh) == (nl, nh) else "")
        rows.append(row)
    return rows


def _missing_rows(base: Side, new: Side, have: set[str]) -> list[Row]:
    """Rows for what only one run measured, or neither could resample, with the reason."""
    rows: list[Row] = []
    vb, vn = base.verdict, new.verdict
    if "capacity_rps" not in have:
        rows.append(Row("capacity_rps", "req/s", True, vb.capacity_rps, vb.capacity_ci, vn.capacity_rps,
                        vn.capacity_ci, reason="no interval on the capacity of one run (see its notes)"))
    if "knee.users" not in have:
        why = []
        for side in (base, new):
            v = side.verdict
            if v.knee is None:
                why.append(f"{side.label} has no knee" + (" (the SLO broke before throughput flattened)" if v.brk else
                                                          f" (throughput still rose at {v.steps[-1].users} users)"))
        rows.append(Row("knee.users", "users", True, vb.knee.users if vb.knee else None,
                        vb.knee.users_ci if vb.knee else None, vn.knee.users if vn.knee else None,
                        vn.knee.users_ci if vn.knee else None,
                        reason="; ".join(why) or "no interval on the knee of one run (see its notes)"))
    base_loads, new_loads = {s.users for s in vb.steps}, {s.users for s in vn.steps}
    for users in sorted(base_loads & new_loads):
        for figure in ("rps", "p95_ms"):
            name = f"{figure}@{users}users"
            if name not in have:
                rows.append(Row(name, "req/s" if figure == "rps" else "ms", figure == "rps", None, None, None, None,
                                users=users, reason="too few per-second samples in one of the holds, or no p95"))
    return rows


def _break_row(base: Side, new: Side, min_change: float, level: float) -> Row:
    """The break: each run's lies above its last healthy step and at or below its breaking one (a run
    that never broke the SLO: above its top step). Compared by interval arithmetic on those bounds."""
    vb, vn = base.verdict, new.verdict
    row = Row("break.users", "users", True, vb.brk.users if vb.brk else None, vb.brk.users_ci if vb.brk else None,
              vn.brk.users if vn.brk else None, vn.brk.users_ci if vn.brk else None)
    if vb.brk is None and vn.brk is None:
        row.reason = "neither run broke the SLO"
        return row
    bounds = []
    for side in (base, new):
        v, boot = side.verdict, side.boot
        if v.brk is None:
            bounds.append((float(v.steps[-1].users), math.inf))
        elif boot is None or boot.break_low is None or boot.break_high is None:
            prev = max((s.users for s in v.steps if s.users < v.brk.users), default=0)
            bounds.append((float(prev), float(v.brk.users)))
        else:
            tail = (1 - level) / 4  # both runs' bounds hold together at `level` (Bonferroni over the two)
            bounds.append((float(np.quantile(boot.break_low, tail, method="lower")),
                           float(np.quantile(boot.break_high, 1 - tail, method="higher"))))
    (bl, bh), (nl, nh) = bounds
    base_users = vb.brk.users if vb.brk else bl  # a run that never broke: its top step, a lower bound
    new_users = vn.brk.users if vn.brk else nl
    row.change_pct = _pct(new_users / base_users)
    low = -100.0 if math.isinf(bh) else _pct(nl / bh)
    high = None if math.isinf(nh) or bl <= 0 else _pct(nh / bl)
    row.change_ci_pct = (low, high)
    assert row.change_pct is not None
    worse, better = nh <= bl, nl >= bh  # NEW broke at or below a load BASE held, or held one BASE broke at
    big = abs(row.change_pct) >= min_change
    if worse and big:
        row.judgement = REGRESSED
    elif better and big:
        row.judgement = IMPROVED
    elif (worse or better) and vb.brk and vn.brk:
        row.judgement, row.reason = UNCHANGED, f"a real change, but under --min-change {min_change:g}%"
    elif vb.brk is None:
        row.judgement, row.reason = UNKNOWN, (f"BASE never broke the SLO (its break lies beyond {bl:g} users): "
                                              "only a regression can be shown")
    elif vn.brk is None:
        row.judgement, row.reason = UNKNOWN, (f"NEW never broke the SLO (its break lies beyond {nl:g} users): "
                                              "only an improvement can be shown")
    else:
        row.judgement, row.reason = UNCHANGED, "each run's break could lie at the other's step"
    return row


def compare(base: Side, new: Side, min_change_pct: float = DEFAULT_MIN_CHANGE_PCT, level: float = LEVEL) -> Comparison:
    """Every shared figure's change, its simultaneous interval and judgement."""
    check_comparable(base, new)
    notes: list[str] = []
    items = _continuous_rows(base, new)
    replicates = min((len(it.base_reps) for it in items), default=0)
    rng = np.random.default_rng(PAIRING_SEED)
    pairing = rng.permutation(replicates) if replicates else np.array([], dtype=int)
    for it in items:
        it.base_reps, it.new_reps = it.base_reps[:replicates], it.new_reps[:replicates]
        _prepare(it, pairing, level)
    c = _band(items, level)
    for it in items:
        row = it.row
        row.change_pct = _pct(math.exp(it.log_change))
        if c is None or not math.isfinite(c) or it.replicates is None or np.all(np.isnan(it.replicates)):
            row.change_ci_pct = None
            row.judgement, row.reason = UNKNOWN, "no replicates to judge by"
            continue
        d = it.log_change
        low, high = _pct(math.exp(d - c * it.below)), _pct(math.exp(d + c * it.above))
        # A lower bound (no breaking point) on BASE's capacity makes the true change even lower than
        # computed: the upper end is open; on NEW's, the lower end is open.
        if it.base_lower_bound:
            low = None if not it.new_lower_bound else low
        if it.new_lower_bound:
            high = None
        row.change_ci_pct = (low, high)
        if it.base_lower_bound and it.new_lower_bound:
            row.judgement, row.reason = UNKNOWN, "neither run reached its breaking point: both capacities are lower bounds"
        elif it.base_lower_bound:
            # BASE's true capacity is at least its figure, so the true change is at most the computed one.
            _judge(row, None, high, min_change_pct)
            if row.judgement != REGRESSED:
                row.judgement, row.reason = UNKNOWN, ("BASE reached no breaking point (its capacity is a lower "
                                                      "bound): only a regression can be shown")
        elif it.new_lower_bound:
            _judge(row, low, None, min_change_pct)
            if row.judgement != IMPROVED:
                row.judgement, row.reason = UNKNOWN, ("NEW reached no breaking point (its capacity is a lower "
                                                      "bound): only an improvement can be shown")
        else:
            _judge(row, low, high, min_change_pct)
    rows = [it.row for it in items] + _bucket_rows(base, new, min_change_pct)
    have = {r.figure for r in rows}
    rows += _missing_rows(base, new, have)
    rows.append(_break_row(base, new, min_change_pct, level))
    order = {"capacity_rps": 0, "knee.users": 1, "break.users": 2}
    rows.sort(key=lambda r: (order.get(r.figure, 3), r.users or 0, r.figure.startswith("p95")))
    shared = {s.users for s in base.verdict.steps} & {s.users for s in new.verdict.steps}
    if not shared:
        notes.append("the runs share no step load, so only the capacity, the knee and the break are compared")
    for side in (base, new):
        if not side.verdict.measurement_valid:
            notes.append(f"{side.label}: the load generator ran out of CPU: its figures are not valid")
        if side.boot is not None and not side.boot.complete:
            notes.append(f"{side.label}: " + "; ".join(side.boot.notes))
    return Comparison(base, new, rows, min_change_pct, None if c is None else round(c, 3), notes)


# ----------------------------------------------------------------------------- output

def _fmt(value: float | None, ci: tuple[float, float | None] | None) -> str:
    if value is None:
        return "-"
    text = f"{value:g}"
    if ci is not None:
        text += f" ({ci[0]:g}-{ci[1]:g})" if ci[1] is not None else f" ({ci[0]:g} and up)"
    return text


def _change(row: Row) -> tuple[str, str]:
    if row.change_pct is None:
        return "-", "-"
    ci = row.change_ci_pct
    if ci is None:
        return f"{row.change_pct:+.1f}%", "-"
    low = "-inf" if ci[0] is None else f"{ci[0]:+.1f}%"
    high = "+inf" if ci[1] is None else f"{ci[1]:+.1f}%"
    return f"{row.change_pct:+.1f}%", f"{low} .. {high}"


def table(comp: Comparison) -> list[str]:
    """The console table and the one-line verdict."""
    head = ("figure", "BASE (95% CI)", "NEW (95% CI)", "change", "95% CI of change", "judgement")
    body = []
    for r in comp.rows:
        change, ci = _change(r)
        body.append((r.figure, _fmt(r.base, r.base_ci), _fmt(r.new, r.new_ci), change, ci, r.judgement))
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    lines = [f"BASE {comp.base.path} ({comp.base.scenario or 'scenario unknown'})",
             f"NEW  {comp.new.path} ({comp.new.scenario or 'scenario unknown'})",
             "  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
    lines.append(f"(intervals of the change hold for all {len(comp.rows)} figures together at 95%; judged only when "
                 f"one excludes 0 and the change is at least {comp.min_change_pct:g}%)")
    for r in comp.rows:
        if r.judgement == UNKNOWN and r.reason and r.figure in ("capacity_rps", "knee.users", "break.users"):
            lines.append(f"{r.figure}: unknown: {r.reason}")
    lines += comp.notes
    if comp.regressions:
        lines.append(f"verdict: REGRESSED: {', '.join(f'{r.figure} {r.change_pct:+.1f}%' for r in comp.regressions)}")
    elif comp.improvements:
        lines.append(f"verdict: improved, no regression: "
                     f"{', '.join(f'{r.figure} {r.change_pct:+.1f}%' for r in comp.improvements)}")
    else:
        lines.append(f"verdict: unchanged: no figure moved by {comp.min_change_pct:g}% or more beyond the noise")
    return lines


def junit_cases(comp: Comparison) -> list[Case]:
    cases = []
    for r in comp.rows:
        change, ci = _change(r)
        text = (f"{r.figure}: BASE {_fmt(r.base, r.base_ci)}, NEW {_fmt(r.new, r.new_ci)}, change {change} "
                f"(95% CI {ci}): {r.judgement}" + (f" ({r.reason})" if r.reason else ""))
        cases.append(Case(r.figure, text if r.judgement == REGRESSED else None, text))
    return cases


# ----------------------------------------------------------------------------- compare.html

def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _charts(comp: Comparison) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from loadlab.report import FIG_SIZE, MARGINS, csv_series

    sides = ((comp.base, "tab:blue", "BASE"), (comp.new, "tab:red", "NEW"))
    out = []

    def err(values: list[float], cis: list[Any]) -> np.ndarray:
        # Clamped at 0: a figure rounded apart from its interval (or on its edge) has no bar on that side.
        low = [max(0.0, v - (c[0] if c and c[0] is not None else v)) for v, c in zip(values, cis)]
        high = [max(0.0, (c[1] if c and c[1] is not None else v) - v) for v, c in zip(values, cis)]
        return np.array([low, high])

    for title, ylabel, attr, ci_attr in (("Throughput per step (95% CI)", "req/s", "rps", "rps_ci"),
                                         ("p95 per step (95% CI)", "ms", "p95_ms", "p95_ms_ci")):
        fig, ax = plt.subplots(figsize=FIG_SIZE)
        fig.subplots_adjust(**MARGINS)
        ax.set_title(title, loc="left", fontsize=10)
        for side, color, label in sides:
            steps = [s for s in side.verdict.steps if getattr(s, attr) is not None]
            values = [getattr(s, attr) for s in steps]
            ax.errorbar([s.users for s in steps], values, yerr=err(values, [getattr(s, ci_attr) for s in steps]),
                        color=color, marker="o", ms=4, capsize=3, lw=1.2, label=label)
            if attr == "rps" and side.verdict.capacity_rps and side.verdict.breaking_point_reached:
                ax.axhline(side.verdict.capacity_rps, color=color, ls=":", lw=1)
                if side.verdict.capacity_ci and side.verdict.capacity_ci[1] is not None:
                    ax.axhspan(side.verdict.capacity_ci[0], side.verdict.capacity_ci[1], color=color, alpha=0.08, lw=0)
            if side.verdict.knee is not None:
                ax.axvline(side.verdict.knee.users, color=color, ls="--", lw=1)
        if attr == "p95_ms":
            slo = comp.base.verdict.thresholds.latency_p95_ms
            ax.axhline(slo, color="0.3", ls=":", lw=1, label=f"SLO {slo:g} ms")
            ax.set_yscale("log")
        ax.set_xlabel("users (step load)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        out.append((title, _png(fig)))

    for title, ylabel, key in (("Throughput over the run", "req/s", "rps"),
                               ("p95 over the run (Locust, ~10 s window)", "ms", "p95_ms")):
        fig, ax = plt.subplots(figsize=FIG_SIZE)
        fig.subplots_adjust(**MARGINS)
        ax.set_title(title, loc="left", fontsize=10)
        for side, color, label in sides:
            series = csv_series(side.history)[key]
            if series:
                t0 = side.history.rows[0].t
                ax.plot([t - t0 for t, _ in series], [v for _, v in series], color=color, lw=1, label=label)
        ax.set_xlabel("seconds since start")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        out.append((title, _png(fig)))
    return out


def render_html(comp: Comparison) -> str:
    esc = html.escape
    colors = {REGRESSED: "#fdecea", IMPROVED: "#e8f5e9", UNKNOWN: "#f5f5f5", UNCHANGED: "#ffffff"}
    rows = []
    for r in comp.rows:
        change, ci = _change(r)
        rows.append(f'<tr class="{r.judgement}" style="background:{colors[r.judgement]}"><td>{esc(r.figure)}</td>'
                    f"<td>{esc(_fmt(r.base, r.base_ci))}</td><td>{esc(_fmt(r.new, r.new_ci))}</td>"
                    f"<td>{esc(change)}</td><td>{esc(ci)}</td><td>{esc(r.judgement)}</td><td>{esc(r.reason)}</td></tr>")
    images = "".join(f'<figure><img class="chart" alt="{esc(t)}" src="data:image/png;base64,{d}"></figure>'
                     for t, d in _charts(comp))
    summaries = "".join(
        f"<h3>{esc(s.label)}: {esc(s.path)}</h3><ul>" + "".join(f"<li>{esc(x)}</li>" for x in s.verdict.summary())
        + "</ul>" for s in (comp.base, comp.new))
    verdict = table(comp)[-1]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>loadlab compare</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1020px; color: #222; }}
table {{ border-collapse: collapse; width: 100%; font-size: 0.85em; }}
th, td {{ border-bottom: 1px solid #eee; padding: 0.25em 0.4em; text-align: right; }}
td:first-child, th:first-child, td:last-child {{ text-align: left; }}
figure {{ margin: 0.3em 0; }} img.chart {{ width: 100%; display: block; }}
.muted {{ color: #777; font-size: 0.85em; }} #verdict {{ font-size: 1.15em; font-weight: 600; }}
</style></head><body>
<h1>loadlab compare</h1>
<p id="verdict">{esc(verdict)}</p>
<p class="muted">BASE (blue) {esc(comp.base.path)} &middot; NEW (red) {esc(comp.new.path)} &middot; scenario
{esc(comp.new.scenario or comp.base.scenario or 'unknown')}. Intervals of the change hold for all figures together
at 95% (each figure's own 95% interval stretched {comp.critical_value} times); a change is judged only when its
interval excludes 0 and it is at least {comp.min_change_pct:g}%.</p>
<table id="figures"><tr><th>figure</th><th>BASE (95% CI)</th><th>NEW (95% CI)</th><th>change</th>
<th>95% CI of change</th><th>judgement</th><th>why</th></tr>{''.join(rows)}</table>
<h2>Both runs on the same axes</h2>
<p class="muted">Per step: the hold's figure with its 95% CI; dotted: capacity (band: its CI); dashed: the knee.</p>
{images}
<h2>Verdicts</h2>{summaries}
<p class="muted">{''.join(f'{esc(n)}<br>' for n in comp.notes)}Generated {esc(time.strftime('%Y-%m-%d %H:%M:%S'))}
by loadlab.</p>
<script>
window.addEventListener("load", () => {{
  for (const img of document.querySelectorAll("img.chart")) {{
    img.classList.add(img.naturalWidth > 0 ? "decoded" : "broken");
  }}
}});
</script>
</body></html>
"""


def write(comp: Comparison, out_dir: Path) -> tuple[Path, Path]:
    """compare.html and compare.json into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / COMPARE_HTML
    page.write_text(render_html(comp))
    data = out_dir / COMPARE_JSON
    data.write_text(json.dumps(comp.to_dict(), indent=2) + "\n")
    return page, data


__all__ = ["CompareError", "Comparison", "Row", "Side", "compare", "load", "table", "write", "junit_cases",
           "DEFAULT_MIN_CHANGE_PCT"]
