"""Confidence intervals on the verdict's figures, from the run's own per-second samples.

Each step's hold is cut into its per-second intervals (the exporter's scrapes in `samples.jsonl`:
request and failure counts, latency histogram buckets, response-time sums; without them the
stats history CSV's per-second rows: counts and response-time sums, no buckets). A *circular block
bootstrap* (Politis & Romano) resamples each hold in blocks of consecutive seconds, which keeps
the autocorrelation of a closed loop inside a block, and recomputes the step's throughput, p95 and
mean response time from the resampled seconds exactly as `loadlab.steps` computes them from the
real ones. Every replicate run of steps then goes through the same analysis as the real run
(`analysis.findings`: knee, break, capacity), so the intervals of the capacity and the knee carry
everything the verdict rests on, the step the knee is found at included.

Few blocks make a bootstrap too narrow (a 10 s hold is 5 blocks of 2 s), so each step's intervals
are widened around the estimate as a t interval would be for that many blocks: Hesterberg's
*expanded* percentile interval, applied on the log scale so that it stays positive and keeps its
skew; the capacity's and the knee's, for the blocks of the steps the capacity rests on. A p95 whose
hold fell (nearly) all into one histogram bucket is known only to that bucket, and its interval is
the bucket. The intervals cover sampling noise inside the holds. They do not cover what changes
between runs (a noisy neighbour on the host, a warmer cache, another hash cost), nor the error of a
histogram's interpolation inside a bucket beyond that.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from statistics import NormalDist
from typing import Any

import numpy as np

from loadlab.analysis import breaches_slo, findings
from loadlab.contract.histograms import LATENCY_BUCKETS_SECONDS
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS, Thresholds
from loadlab.history import LocustHistory, Samples, histogram_buckets, scrape_value
from loadlab.steps import LOCUST_HISTOGRAM, StepSummary, hold_scrapes

LEVEL = 0.95
REPLICATES = 1000
SEED = 14  # fixed: analysing the same run twice gives the same intervals
MIN_INTERVALS = 4  # per-second intervals a hold needs for an interval of its own
BOUNDS = np.array([*LATENCY_BUCKETS_SECONDS, math.inf])

Interval = tuple[float, float | None]  # [low, high]; high None: unbounded (e.g. no knee in some resamples)


@dataclass
class HoldSeconds:
    """One step's hold as per-interval increments (about a second each)."""

    dt: np.ndarray  # seconds
    requests: np.ndarray
    failures: np.ndarray
    buckets: np.ndarray | None  # (n, len(BOUNDS)) cumulative bucket counts observed in each interval
    response_sum_s: np.ndarray | None  # sum of the response times completed in each interval
    response_count: np.ndarray | None
    source: str  # locust_exporter | locust_csv

    @property
    def n(self) -> int:
        return len(self.dt)


def _exporter_seconds(scrapes: list) -> HoldSeconds | None:
    rows = []
    for a, b in zip(scrapes, scrapes[1:]):
        values = []
        for name in ("locust_requests_total", "locust_request_failures_total", LOCUST_HISTOGRAM + "_sum",
                     LOCUST_HISTOGRAM + "_count"):
            va, vb = scrape_value(a, name), scrape_value(b, name)
            values.append(None if va is None or vb is None else vb - va)
        before, after = histogram_buckets(a, LOCUST_HISTOGRAM), histogram_buckets(b, LOCUST_HISTOGRAM)
        bucket = [after.get(le, 0.0) - before.get(le, 0.0) for le in BOUNDS] if before and after else None
        dt = b.t - a.t
        # A counter that went down is a stats reset (a new test): that interval counts nothing.
        if dt <= 0 or values[0] is None or values[0] < 0 or (bucket and min(bucket) < 0):
            continue
        rows.append((dt, values, bucket))
    if not rows:
        return None
    have_buckets = all(bucket is not None for _, _, bucket in rows)
    have_sums = all(v[2] is not None and v[3] is not None for _, v, _ in rows)
    return HoldSeconds(
        dt=np.array([r[0] for r in rows]),
        requests=np.array([r[1][0] for r in rows]),
        failures=np.array([max(0.0, r[1][1] or 0.0) for r in rows]),
        buckets=np.array([r[2] for r in rows]) if have_buckets else None,
        response_sum_s=np.array([r[1][2] for r in rows]) if have_sums else None,
        response_count=np.array([r[1][3] for r in rows]) if have_sums else None,
        source="locust_exporter",
    )


def _csv_seconds(history: LocustHistory, step: StepSummary) -> HoldSeconds | None:
    rows = [r for r in history.rows if step.hold_start <= r.t <= step.end]
    kept = [(a, b) for a, b in zip(rows, rows[1:]) if b.t > a.t and b.requests >= a.requests]
    if not kept:
        return None
    # The CSV's average is cumulative since the start: avg x count is the running sum of response times.
    sums = [None if a.avg_ms is None or b.avg_ms is None else (b.avg_ms * b.requests - a.avg_ms * a.requests) / 1000.0
            for a, b in kept]
    have_sums = all(s is not None for s in sums)
    return HoldSeconds(
        dt=np.array([b.t - a.t for a, b in kept]),
        requests=np.array([float(b.requests - a.requests) for a, b in kept]),
        failures=np.array([float(max(0, b.failures - a.failures)) for a, b in kept]),
        buckets=None,
        response_sum_s=np.array(sums, dtype=float) if have_sums else None,
        response_count=np.array([float(b.requests - a.requests) for a, b in kept]) if have_sums else None,
        source="locust_csv",
    )


def hold_seconds(step: StepSummary, history: LocustHistory, samples: Samples) -> HoldSeconds | None:
    """The per-second intervals of a step's hold: the ones its figures were computed from."""
    exporter = _exporter_seconds(hold_scrapes(samples.scrapes("locust"), step.hold_start, step.end, step.users))
    if exporter is not None and exporter.dt.sum() >= 1.0:
        return exporter
    return _csv_seconds(history, step)


# ----------------------------------------------------------------------------- small-sample statistics

def block_length(n: int) -> int:
    """Seconds per block for a hold of n seconds: n^(1/3) (the rate of Hall, Horowitz and Jing 1995),
    and never below 2: in real runs a second's latency correlates with the next one's (lag 1 about +0.3,
    lag 2 about 0), which a block of two keeps together."""
    return max(2, min(n // 2, round(n ** (1 / 3))))


def _t_abs_cdf(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer df (Abramowitz and Stegun 26.7.3/26.7.4, exact)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    if df == 1:
        return 2 * theta / math.pi
    term, total = 1.0, 1.0
    for k in range(1, (df - 1) // 2):
        term *= c2 * (2 * k) / (2 * k + 1)
        total += term
    return 2 / math.pi * (theta + s * math.cos(theta) * total)


def t_quantile(p: float, df: int) -> float:
    """The p quantile (p > 0.5) of Student's t with integer df >= 1, by bisection on the exact CDF."""
    target = 2 * p - 1
    lo, hi = 0.0, 1.0
    while _t_abs_cdf(hi, df) < target:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        if _t_abs_cdf(mid, df) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def expansion(blocks: int, level: float = LEVEL) -> float:
    """How much wider a t interval on `blocks` independent blocks is than the bootstrap's normal one:
    sqrt(k/(k-1)) t(k-1) / z (Hesterberg's expanded percentile interval)."""
    if blocks < 2:
        return math.inf
    p = 0.5 + level / 2
    return math.sqrt(blocks / (blocks - 1)) * t_quantile(p, blocks - 1) / NormalDist().inv_cdf(p)


def quantile_of_buckets(q: float | np.ndarray, cumulative: np.ndarray) -> np.ndarray:
    """`histogram_quantile` of each row of cumulative bucket counts over BOUNDS (seconds; NaN when empty);
    `q` one quantile, or one per row."""
    total = cumulative[:, -1]
    rank = q * total
    idx = np.argmax(cumulative >= rank[:, None], axis=1)
    rows = np.arange(len(cumulative))
    bound = BOUNDS[idx]
    count = cumulative[rows, idx]
    prev_bound = np.where(idx > 0, BOUNDS[np.maximum(idx - 1, 0)], 0.0)
    prev_count = np.where(idx > 0, cumulative[rows, np.maximum(idx - 1, 0)], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
    value = np.where(np.isinf(bound), prev_bound, np.where(count == prev_count, bound, inside))
    return np.where(total > 0, value, np.nan)


def _expand(replicates: np.ndarray, estimate: float | None, factor: float) -> np.ndarray:
    """Widen positive replicates around the estimate by `factor` on the log scale."""
    if estimate is None or not estimate > 0 or factor == 1.0:
        return replicates
    with np.errstate(divide="ignore", invalid="ignore"):
        out = estimate * np.exp(factor * (np.log(replicates) - math.log(estimate)))
    return np.where(replicates > 0, out, replicates)


# ----------------------------------------------------------------------------- the bootstrap

ONE_BUCKET_SHARE = 0.9  # a hold with this share of its requests in the p95's bucket: the p95 is the bucket


def _bucket_when_flat(p95_ms: float | None, point: np.ndarray, replicates: int,
                      rng: np.random.Generator) -> np.ndarray | None:
    """When (nearly) all of a hold's requests fell into the p95's bucket, its p95 is interpolation alone
    (every login took 1-2.5 s: p95 = 1 + 0.95 x 1.5 s, whatever the data), and the histogram cannot
    place it better than the bucket: replicates spread over the bucket. None otherwise."""
    if p95_ms is None or point[-1] <= 0:
        return None
    i = int(np.searchsorted(BOUNDS, p95_ms / 1000.0, side="left"))
    if i >= len(BOUNDS) - 1:  # at the highest finite bound: "at least 10 s", nothing to spread over
        return None
    inside = point[i] - (point[i - 1] if i > 0 else 0.0)
    if inside < ONE_BUCKET_SHARE * point[-1]:
        return None
    low = BOUNDS[i - 1] if i > 0 else 0.0
    return rng.uniform(low, BOUNDS[i], size=replicates) * 1000.0


@dataclass
class StepReplicates:
    """One step's resampled figures, one value per replicate. The raw replicates feed the re-analysis;
    the step's own intervals (`rps`, `p95_ms`) are widened by `factor` for the hold's few blocks."""

    raw_rps: np.ndarray
    raw_p95_ms: np.ndarray | None
    raw_mean_response_ms: np.ndarray | None
    requests: np.ndarray
    failures: np.ndarray
    estimate_rps: float
    estimate_p95_ms: float | None
    seconds: int  # per-second intervals in the hold
    block_s: int
    blocks: int
    factor: float  # expansion(blocks)
    p95_factor: float  # the same, or 1 when the p95 replicates spread over its bucket (_bucket_when_flat)
    p95_bucket: tuple[float, float] | None  # that bucket (ms), when they do
    source: str

    @cached_property
    def rps(self) -> np.ndarray:
        return _expand(self.raw_rps, self.estimate_rps, self.factor)

    @cached_property
    def p95_ms(self) -> np.ndarray | None:
        return None if self.raw_p95_ms is None else _expand(self.raw_p95_ms, self.estimate_p95_ms, self.p95_factor)

    @cached_property
    def columns(self) -> list[tuple[float, int, int, float | None, float | None]]:
        """Per replicate (rps, requests, failures, p95_ms, mean_response_ms) as Python values, as the
        analysis reads a step (None: keep the step's own: the hold had no such samples or none in it)."""
        n = len(self.raw_rps)

        def values(arr: np.ndarray | None) -> list[float | None]:
            return [None] * n if arr is None else [None if math.isnan(v) else v for v in arr.tolist()]

        return list(zip(self.raw_rps.tolist(), np.rint(self.requests).astype(int).tolist(),
                        np.rint(self.failures).astype(int).tolist(), values(self.raw_p95_ms),
                        values(self.raw_mean_response_ms)))


def resample_step(step: StepSummary, sec: HoldSeconds, rng: np.random.Generator, replicates: int,
                  level: float = LEVEL) -> StepReplicates:
    """Circular block bootstrap of one hold."""
    n = sec.n
    length = block_length(n)
    blocks = math.ceil(n / length)
    starts = rng.integers(0, n, size=(replicates, blocks))
    idx = ((starts[:, :, None] + np.arange(length)) % n).reshape(replicates, -1)[:, :n]
    p95 = mean = None
    p95_factor = factor = expansion(blocks, level)
    p95_bucket = None
    if sec.buckets is not None and step.p95_source == "locust_histogram":
        p95 = quantile_of_buckets(0.95, sec.buckets[idx].sum(axis=1)) * 1000.0
        spread = _bucket_when_flat(step.p95_ms, sec.buckets.sum(axis=0), replicates, rng)
        if spread is not None:
            p95, p95_factor = spread, 1.0  # the bucket itself: nothing to widen for few blocks
            i = int(np.searchsorted(BOUNDS, (step.p95_ms or 0.0) / 1000.0, side="left"))
            p95_bucket = ((BOUNDS[i - 1] if i > 0 else 0.0) * 1000.0, BOUNDS[i] * 1000.0)
    if sec.response_sum_s is not None and sec.response_count is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = 1000.0 * sec.response_sum_s[idx].sum(axis=1) / sec.response_count[idx].sum(axis=1)
    return StepReplicates(raw_rps=sec.requests[idx].sum(axis=1) / sec.dt[idx].sum(axis=1), raw_p95_ms=p95,
                          raw_mean_response_ms=mean, requests=sec.requests[idx].sum(axis=1),
                          failures=sec.failures[idx].sum(axis=1), estimate_rps=step.rps,
                          estimate_p95_ms=step.p95_ms if p95 is not None else None, seconds=n, block_s=length,
                          blocks=blocks, factor=factor, p95_factor=p95_factor, p95_bucket=p95_bucket,
                          source=sec.source)


@dataclass
class Bootstrap:
    """Replicates of every figure the verdict gives (the intervals, and what `compare` needs).

    The knee and the capacity are recomputed on every replicate run of raw step replicates, then
    widened like a step's figures, for the blocks of the steps the capacity rests on (`factor`)."""

    level: float
    replicates: int
    steps: list[StepReplicates | None]  # None: too few per-second intervals in that hold
    capacity: np.ndarray | None = None
    # inf: no knee and no break in that replicate (the knee lies beyond the top step); NaN: no knee because
    # the SLO broke before throughput flattened (the knee is undefined there)
    knee_users: np.ndarray | None = None
    break_low: np.ndarray | None = None  # the break lies in (break_low, break_high] users
    break_high: np.ndarray | None = None  # inf: no break in that replicate
    factor: float = 1.0
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every step could be resampled, so run-level intervals rest on all of them."""
        return bool(self.steps) and all(s is not None for s in self.steps)


def replicate_steps(steps: list[StepSummary], reps: list[StepReplicates | None], b: int,
                    out: list[StepSummary] | None = None) -> list[StepSummary]:
    """The steps as replicate `b` saw them. `out`: copies of `steps` to overwrite (the analysis keeps
    no reference to them, and a fresh dataclass per step and replicate costs more than the analysis)."""
    out = out if out is not None else [copy.copy(s) for s in steps]
    for rep, dest in zip(reps, out):
        if rep is None:
            continue
        rps, requests, failures, p95, mean = rep.columns[b]
        dest.rps, dest.requests, dest.failures = rps, requests, failures
        dest.error_ratio = failures / requests if requests else 0.0
        if p95 is not None:
            dest.p95_ms = p95
        if mean is not None:
            dest.mean_response_ms = mean
    return out


def capacity_steps(steps: list[StepSummary], th: Thresholds) -> list[int]:
    """Indices of the steps the capacity rests on: the plateau from the knee to the break that met
    the SLO, else the best step that met it (as `analysis.capacity` chooses)."""
    knee, brk, cap = findings(steps, th)
    healthy = [i for i, s in enumerate(steps[:brk]) if not breaches_slo(s, th)]
    if knee is not None:
        plateau = [i for i in healthy if i >= knee.step]
        if plateau:
            return plateau
    best = [i for i in healthy if steps[i].rps == cap] or [i for i, s in enumerate(steps) if s.rps == cap]
    return best[:1] or list(range(len(steps)))


def bootstrap(steps: list[StepSummary], history: LocustHistory, samples: Samples | None = None,
              th: Thresholds = DEFAULT_THRESHOLDS, replicates: int = REPLICATES, seed: int = SEED,
              level: float = LEVEL, run_level: bool = True) -> Bootstrap:
    """Resample every hold, then (`run_level`) re-run the analysis on each replicate run."""
    samples = samples or Samples()
    rng = np.random.default_rng(seed)
    reps: list[StepReplicates | None] = []
    result = Bootstrap(level=level, replicates=replicates, steps=reps)
    short: list[str] = []
    for step in steps:
        sec = hold_seconds(step, history, samples)
        if sec is None or sec.n < MIN_INTERVALS:
            reps.append(None)
            short.append(f"{step.users} ({0 if sec is None else sec.n})")
            continue
        reps.append(resample_step(step, sec, rng, replicates, level))
    if short:
        result.notes.append(f"no interval for the steps at {', '.join(short)} users (per-second samples in the "
                            f"hold): a step needs {MIN_INTERVALS} or more; lengthen the steps")
    if not run_level or not steps or not result.complete:
        if steps and run_level:
            result.notes.append("no interval on the capacity, the knee or the break: they rest on every step")
        return result
    capacity = np.full(replicates, np.nan)
    knee = np.full(replicates, np.inf)
    low, high = np.zeros(replicates), np.full(replicates, np.inf)
    top = steps[-1].users
    work = [copy.copy(s) for s in steps]
    for b in range(replicates):
        run = replicate_steps(steps, reps, b, work)
        k, brk, cap = findings(run, th)
        if cap is not None:
            capacity[b] = cap
        if k is not None:
            knee[b] = k.users
        elif brk is not None:
            knee[b] = np.nan
        if brk is not None:
            low[b] = steps[brk - 1].users if brk > 0 else 0.0
            high[b] = steps[brk].users
        else:
            low[b] = top
    knee0, _, cap0 = findings(steps, th)
    result.factor = expansion(sum(rep.blocks for i in capacity_steps(steps, th) if (rep := reps[i]) is not None), level)
    result.capacity = _expand(capacity, cap0, result.factor)
    result.knee_users = _expand(knee, None if knee0 is None else knee0.users, result.factor)
    result.break_low, result.break_high = low, high
    return result


def interval(values: np.ndarray | None, estimate: float | None, level: float = LEVEL,
             digits: int = 2, require: float | None = None) -> Interval | None:
    """The percentile interval of replicates around a point estimate (widened to contain it), over the
    replicates that have a value (not NaN).

    None without replicates, or when fewer than `require` of them have a value (default: all but the
    interval's tails); the high end is None (unbounded) when more than the upper tail is infinite."""
    if values is None or estimate is None:
        return None
    finite_or_inf = values[~np.isnan(values)]
    if len(finite_or_inf) < (require if require is not None else 1 - (1 - level) / 2) * len(values):
        return None
    tail = (1 - level) / 2
    # Order statistics, not interpolation: an infinite replicate (no knee) must not turn into NaN.
    low = float(np.quantile(finite_or_inf, tail, method="lower"))
    high_q = float(np.quantile(finite_or_inf, 1 - tail, method="higher"))
    low = min(low, estimate)
    high = None if math.isinf(high_q) else max(high_q, estimate)
    return round(low, digits), None if high is None else round(high, digits)


def break_interval(boot: Bootstrap, level: float = LEVEL) -> Interval | None:
    """Where the break lies in users: above the last healthy step, at or below the breaking one."""
    if boot.break_low is None or boot.break_high is None:
        return None
    tail = (1 - level) / 2
    low = float(np.quantile(boot.break_low, tail, method="lower"))
    high = float(np.quantile(boot.break_high, 1 - tail, method="higher"))
    return low, None if math.isinf(high) else high


def attach(verdict: Any, history: LocustHistory, samples: Samples | None, th: Thresholds,
           replicates: int = REPLICATES, run_level: bool = True) -> Bootstrap:
    """Put the intervals on a `Verdict` (steps' rps_ci/p95_ms_ci, capacity_ci, knee and break
    users_ci) and keep the replicates on it for `loadlab compare`."""
    boot = bootstrap(verdict.steps, history, samples, th, replicates=replicates, run_level=run_level)
    for step, rep in zip(verdict.steps, boot.steps):
        if rep is None:
            continue
        step.rps_ci = interval(rep.rps, step.rps)
        step.p95_ms_ci = interval(rep.p95_ms, step.p95_ms, digits=1)
    verdict.capacity_ci = interval(boot.capacity, verdict.capacity_rps)
    if verdict.knee is not None:
        verdict.knee = replace(verdict.knee, users_ci=interval(boot.knee_users, verdict.knee.users, digits=1,
                                                               require=0.5))
        undefined = float(np.mean(np.isnan(boot.knee_users))) if boot.knee_users is not None else 0.0
        if undefined > (1 - LEVEL) / 2:
            note = (f"{undefined:.0%} of the resamples broke the SLO before throughput flattened (no knee): "
                    + ("the knee's interval is over the others" if verdict.knee.users_ci else
                       "the knee is uncertain, and has no interval"))
            boot.notes.append(note)
            verdict.notes.append(f"note: {note}")
    if verdict.brk is not None:
        verdict.brk = replace(verdict.brk, users_ci=break_interval(boot))
    sources = sorted({rep.source for rep in boot.steps if rep is not None})
    verdict.uncertainty = {
        "level": LEVEL,
        "method": "circular block bootstrap over the per-second samples of each hold, widened for few blocks "
                  "(expanded percentile); knee, break and capacity recomputed on every replicate",
        "replicates": replicates,
        "per_second_source": sources[0] if len(sources) == 1 else sources,
        "block_seconds": sorted({rep.block_s for rep in boot.steps if rep is not None}),
        "notes": boot.notes,
    }
    verdict.bootstrap = boot
    return boot
