"""Turn a run's per-second history into per-step summaries (the analysis' input).

A step is a plateau of Locust's user count (the step shape holds each level; a preset
holds its final level). The first part of each step is a transient (users still
connecting, queues filling), so every figure is taken over the rest of it, the *hold*.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

from loadlab.history import (
    HistoryRow,
    LocustHistory,
    Samples,
    counter_increase,
    histogram_buckets,
    histogram_quantile,
    rate_series,
    series,
    value_at,
)

# Locust's "current" percentiles cover about this many seconds (locust.stats.CURRENT_RESPONSE_TIME_PERCENTILE_WINDOW).
LOCUST_PERCENTILE_WINDOW_S = 10

CPU = "namedprocess_namegroup_cpu_seconds_total"
MEMORY = "namedprocess_namegroup_memory_bytes"
PROCS = "namedprocess_namegroup_num_procs"
NODE_CPU = "node_cpu_seconds_total"
LOCUST_HISTOGRAM = "locust_request_duration_seconds"


@dataclass
class StepSummary:
    index: int
    users: int
    start: float  # epoch seconds of the first history row at this user count
    hold_start: float  # after the transient
    end: float
    rps: float  # mean throughput over the hold (requests completed / seconds)
    rps_median: float  # median of the per-second throughputs (robust, but quantized at low rates)
    requests: int  # over the hold
    failures: int  # over the hold
    error_ratio: float
    p50_ms: float | None
    p95_ms: float | None
    p95_source: str  # locust_histogram | locust_csv_window | locust_csv_cumulative
    mean_response_ms: float | None = None  # over the hold (Little's law needs means, not percentiles)
    target_cpu_cores: float | None = None
    target_memory_bytes: float | None = None
    target_procs: float | None = None
    target_cores_available: float | None = None
    generator_cpu_cores: float | None = None
    generator_procs: float | None = None
    generator_cores_available: float | None = None
    host_cpu_busy_cores: float | None = None
    host_cores: int | None = None

    @property
    def hold_seconds(self) -> float:
        return self.end - self.hold_start

    def to_dict(self) -> dict:
        return asdict(self)


def detect_plateaus(rows: list[HistoryRow], min_rows: int = 3) -> list[list[HistoryRow]]:
    """Runs of consecutive rows with the same non-zero user count, at least `min_rows` long."""
    plateaus: list[list[HistoryRow]] = []
    current: list[HistoryRow] = []
    for row in rows:
        if current and row.users == current[-1].users:
            current.append(row)
            continue
        if len(current) >= min_rows and current[0].users > 0:
            plateaus.append(current)
        current = [row]
    if len(current) >= min_rows and current[0].users > 0:
        plateaus.append(current)
    return plateaus


def hold_rows(plateau: list[HistoryRow], transient_fraction: float) -> list[HistoryRow]:
    """The rows after the step's first `transient_fraction` of time; at least two rows."""
    start, end = plateau[0].t, plateau[-1].t
    cut = start + transient_fraction * (end - start)
    kept = [r for r in plateau if r.t >= cut]
    # Never the step's very first row: the interval ending there still belongs to the ramp.
    kept = [r for r in kept if r is not plateau[0]] or kept
    return kept if len(kept) >= 2 else plateau[-2:]


def _interval_rates(rows: list[HistoryRow]) -> list[float]:
    rates = []
    for a, b in zip(rows, rows[1:]):
        dt = b.t - a.t
        if dt > 0 and b.requests >= a.requests:
            rates.append((b.requests - a.requests) / dt)
    return rates


def _csv_percentile(history: LocustHistory, plateau: list[HistoryRow], attr: str) -> float | None:
    if history.windowed_percentiles:
        # Rows whose ~10 s window lies inside this step; else the step's last row.
        inside = [getattr(r, attr) for r in plateau if r.t - LOCUST_PERCENTILE_WINDOW_S >= plateau[0].t - 1]
        inside = [v for v in inside if v is not None]
        if inside:
            return statistics.median(inside)
    return getattr(plateau[-1], attr)


def _resource_fields(samples: Samples, start: float, end: float, meta: dict) -> dict:
    """CPU (cores, averaged over [start, end]) and memory of the target and generator groups."""
    out: dict = {}
    sidecar = samples.scrapes("sidecar")
    if not sidecar:
        return out
    node_cpu = series(sidecar, NODE_CPU)
    host_cores = meta.get("host_cores")
    if host_cores is None:
        cpus = {labels.get("cpu") for s in sidecar[-1:] for name, labels, _ in s.samples if name == NODE_CPU}
        host_cores = len(cpus) or None
    out["host_cores"] = host_cores
    busy = counter_increase(node_cpu, start, end)
    idle = counter_increase(series(sidecar, NODE_CPU, {"mode": "idle"}), start, end)
    if busy and idle and busy[1] >= 0.5:
        out["host_cpu_busy_cores"] = (busy[0] - idle[0]) / busy[1]
    for prefix, group in (("target", meta.get("target_group", "target")), ("generator", meta.get("generator_group", "locust"))):
        cpu = counter_increase(series(sidecar, CPU, {"groupname": group}), start, end)
        if cpu and cpu[1] >= 0.5:  # a moment of samples (the run's last instant) says nothing
            out[f"{prefix}_cpu_cores"] = cpu[0] / cpu[1]
        procs = [v for t, v in series(sidecar, PROCS, {"groupname": group}) if start <= t <= end]
        if procs:
            out[f"{prefix}_procs"] = statistics.median(procs)
        if prefix == "target":
            mem = [v for t, v in series(sidecar, MEMORY, {"groupname": group, "memtype": "resident"}) if start <= t <= end]
            if mem:
                out["target_memory_bytes"] = statistics.median(mem)
    # Cores a group can use: one Python process never uses more than one core.
    workers = meta.get("target_workers")
    if workers is None and out.get("target_procs"):
        # gunicorn: an idle master plus its workers.
        workers = max(1, out["target_procs"] - 1) if out["target_procs"] > 1 else 1
    if workers and host_cores:
        out["target_cores_available"] = float(min(host_cores, workers))
    gen_procs = meta.get("generator_processes") or out.get("generator_procs")
    if gen_procs and host_cores:
        out["generator_cores_available"] = float(min(host_cores, gen_procs))
    return out


def _gauge(scrape, name: str) -> float | None:
    return next((v for n, _, v in scrape.samples if n == name), None)


def _histogram_p(samples: Samples, start: float, end: float, users: int, q: float) -> float | None:
    """Quantile (ms) of Locust's request histogram over [start, end]: bucket deltas, not cumulative."""
    scrapes = [s for s in samples.scrapes("locust") if start <= s.t < end + 1 and _gauge(s, "locust_users") == users]
    if len(scrapes) < 2:
        return None
    first = histogram_buckets(scrapes[0], LOCUST_HISTOGRAM)
    last = histogram_buckets(scrapes[-1], LOCUST_HISTOGRAM)
    if not first or not last or last.get(float("inf"), 0) < first.get(float("inf"), 0):
        return None  # missing, or stats were reset inside the hold
    delta = {le: last[le] - first.get(le, 0.0) for le in last}
    value = histogram_quantile(q, delta)
    return None if value is None else value * 1000.0


def _mean_response_ms(samples: Samples, hold: list[HistoryRow], users: int) -> float | None:
    """Mean response time over the hold: histogram _sum/_count deltas, else the CSV's running average."""
    scrapes = [s for s in samples.scrapes("locust")
               if hold[0].t <= s.t < hold[-1].t + 1 and _gauge(s, "locust_users") == users]
    if len(scrapes) >= 2:
        total = [sum(v for n, _, v in sc.samples if n == LOCUST_HISTOGRAM + "_sum") for sc in (scrapes[0], scrapes[-1])]
        count = [sum(v for n, _, v in sc.samples if n == LOCUST_HISTOGRAM + "_count") for sc in (scrapes[0], scrapes[-1])]
        if count[1] > count[0] and total[1] >= total[0]:
            return 1000.0 * (total[1] - total[0]) / (count[1] - count[0])
    a, b = hold[0], hold[-1]
    if a.avg_ms is not None and b.avg_ms is not None and b.requests > a.requests:
        return (b.avg_ms * b.requests - a.avg_ms * a.requests) / (b.requests - a.requests)
    return None


def summarize_steps(history: LocustHistory, samples: Samples | None = None, meta: dict | None = None,
                    transient_fraction: float = 0.3, min_rows: int = 3) -> list[StepSummary]:
    """Per-step summaries of a run, resource fields filled when samples are present."""
    samples = samples or Samples()
    meta = {**(samples.meta if samples else {}), **(meta or {})}
    steps = []
    for index, plateau in enumerate(detect_plateaus(history.rows, min_rows=min_rows)):
        hold = hold_rows(plateau, transient_fraction)
        rates = _interval_rates(hold)
        requests = max(0, hold[-1].requests - hold[0].requests)
        # Mean over the hold. Per-second counts of a few requests are integers, so their median
        # is off by up to half a request per second; the mean is not. Locust's exporter samples
        # carry exact timestamps; the CSV's are whole seconds, so it is the fallback.
        # Only scrapes that saw this step's user count: CSV timestamps are truncated to the second.
        same_level = [sc for sc in samples.scrapes("locust")
                      if hold[0].t <= sc.t < hold[-1].t + 1 and _gauge(sc, "locust_users") == plateau[0].users]
        exact = counter_increase(series(same_level, "locust_requests_total"), hold[0].t, hold[-1].t + 1)
        if exact and exact[1] >= 1.0:
            rps = exact[0] / exact[1]
        else:
            span = hold[-1].t - hold[0].t
            rps = requests / span if span > 0 else 0.0
        failures = max(0, hold[-1].failures - hold[0].failures)
        p95 = _histogram_p(samples, hold[0].t, hold[-1].t, plateau[0].users, 0.95)
        p50 = _histogram_p(samples, hold[0].t, hold[-1].t, plateau[0].users, 0.50)
        if p95 is not None:
            source = "locust_histogram"
        else:
            source = "locust_csv_window" if history.windowed_percentiles else "locust_csv_cumulative"
            p95 = _csv_percentile(history, plateau, "p95_ms")
        if p50 is None:
            p50 = _csv_percentile(history, plateau, "p50_ms")
        step = StepSummary(
            index=index,
            users=plateau[0].users,
            start=plateau[0].t,
            hold_start=hold[0].t,
            end=hold[-1].t,
            rps=rps,
            rps_median=statistics.median(rates) if rates else 0.0,
            requests=requests,
            failures=failures,
            error_ratio=(failures / requests) if requests else 0.0,
            p50_ms=p50,
            p95_ms=p95,
            p95_source=source,
            mean_response_ms=_mean_response_ms(samples, hold, plateau[0].users),
        )
        for key, value in _resource_fields(samples, hold[0].t, hold[-1].t, meta).items():
            setattr(step, key, value)
        steps.append(step)
    return steps


def resource_timeline(samples: Samples, meta: dict | None = None) -> dict[str, list[tuple[float, float]]]:
    """Per-second series for the report: CPU in cores, memory in bytes, host busy cores."""
    meta = {**samples.meta, **(meta or {})}
    sidecar = samples.scrapes("sidecar")
    out: dict[str, list[tuple[float, float]]] = {}
    if not sidecar:
        return out
    target, generator = meta.get("target_group", "target"), meta.get("generator_group", "locust")
    out["target_cpu_cores"] = rate_series(series(sidecar, CPU, {"groupname": target}))
    out["generator_cpu_cores"] = rate_series(series(sidecar, CPU, {"groupname": generator}))
    out["target_memory_bytes"] = series(sidecar, MEMORY, {"groupname": target, "memtype": "resident"})
    out["generator_memory_bytes"] = series(sidecar, MEMORY, {"groupname": generator, "memtype": "resident"})
    total = rate_series(series(sidecar, NODE_CPU))
    idle = rate_series(series(sidecar, NODE_CPU, {"mode": "idle"}))
    idle_at = dict(idle)
    out["host_cpu_busy_cores"] = [(t, v - idle_at[t]) for t, v in total if t in idle_at]
    return out


__all__ = ["StepSummary", "detect_plateaus", "hold_rows", "summarize_steps", "resource_timeline", "value_at"]
