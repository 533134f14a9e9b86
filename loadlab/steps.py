"""Turn a run's per-second history into per-step summaries (the analysis' input).

A step is a plateau of Locust's user count (the step shape holds each level; a preset
holds its final level). The first part of each step is a transient (users still
connecting, queues filling), so every figure is taken over the rest of it, the *hold*.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

from loadlab.contract.cores import (
    GENERATOR_IDLE_PROCESSES_DISTRIBUTED,
    TARGET_IDLE_PROCESSES,
    busy_processes,
    cores_available,
    steal_share,
)
from loadlab.contract.histograms import counter_increase, rate_series
from loadlab.contract.names import GENERATOR_GROUP, LOCUST_JOB, SIDECAR_JOB, TARGET_GROUP, TARGET_SIDECAR_SOURCE
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS
from loadlab.history import HistoryRow, LocustHistory, Samples, Scrape, quantile_between, scrape_value, series

# Locust's "current" percentiles cover about this many seconds (locust.stats.CURRENT_RESPONSE_TIME_PERCENTILE_WINDOW).
LOCUST_PERCENTILE_WINDOW_S = 10

CPU = "namedprocess_namegroup_cpu_seconds_total"
MEMORY = "namedprocess_namegroup_memory_bytes"
PROCS = "namedprocess_namegroup_num_procs"
RUN_DELAY = "namedprocess_namegroup_run_delay_seconds_total"
NODE_CPU = "node_cpu_seconds_total"
LOCUST_HISTOGRAM = "locust_request_duration_seconds"
STEAL = {"mode": "steal"}


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
    # Cores' worth of time the target's threads were runnable but waiting for a CPU (the sidecar's
    # run delay): high while its CPU use is low means other processes took the CPU it wanted.
    target_cpu_wait_cores: float | None = None
    # Server-side latency over the hold, from the target's own http_request_duration_seconds
    # (loadlab.server_latency); None without target metrics.
    server_p95_ms: float | None = None
    server_mean_ms: float | None = None
    # With several --target-metrics: the requests/s the API's machines counted, summed (loadlab.targets).
    server_rps: float | None = None
    # Why this step's target resources are unknown although the run sampled them elsewhere: a
    # remote source that did not answer during its hold (loadlab.remote.apply_outages).
    resource_gap: str | None = None
    # 95% confidence intervals [low, high] (loadlab.uncertainty); None when the hold is too short
    rps_ci: tuple[float, float | None] | None = None
    p95_ms_ci: tuple[float, float | None] | None = None
    # With --remote-workers: each load machine's generator CPU over the hold (loadlab.generators):
    # {"instance", "cpu_cores", "procs", "cores_available", "host_cores"}; None on one machine.
    generator_machines: list[dict] | None = None
    # With several --target-sidecar: each API machine's target CPU over the hold (loadlab.targets):
    # {"instance", "cpu_cores", "procs", "cores_available", "host_cores", ...}; the target_* and
    # host_* fields above are then the fleet's sums. None with one machine.
    target_machines: list[dict] | None = None
    # The share of the host's CPU time the hypervisor took over the hold (a VM's steal time,
    # node_cpu_seconds_total mode="steal" over the host's cores): the target's host (a fleet: its
    # machines' shares weighted by their usable cores), and the generator's own host. A group that
    # wants every core it may use gets only (1 - share) of them (`loadlab.contract.cores.cpu_limited`).
    # None when the sidecar has no steal series (not Linux) or no host metrics.
    host_cpu_steal_share: float | None = None
    generator_host_cpu_steal_share: float | None = None

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


LOCUST_RUNNING = "locust_running"  # the exporter's gauge: 1 while Locust spawns or runs users


def after_stop(rows: list[HistoryRow], scrapes: list[Scrape]) -> list[HistoryRow]:
    """The history rows with users that Locust wrote after its test had stopped, by its exporter's
    own word (`locust_running`, in the `scrapes` of the lab's sampler); no step is cut from them.

    Locust's CSV writer goes on after its test stops: while a master waits for its workers to stop
    and while the exporter lingers, it writes the user count its master still holds, which is stale
    (a worker whose goodbye has not been read yet still counts; with two workers that is about half
    the users). Those rows carry no requests, and three of them would read as a step with nothing
    served, and so as a break. A row is dropped when its second may have begun after a scrape that
    saw the test stopped, until a scrape sees a test run again. Without the gauge (a plain Locust
    CSV, an older run) none is."""
    stopped: list[tuple[float, float]] = []  # [first scrape that saw it stopped, next scrape that saw it run)
    ran, since = False, None
    for t, value in series(scrapes, LOCUST_RUNNING):
        if value == 1:
            if since is not None:
                stopped.append((since, t))
            ran, since = True, None
        elif ran and since is None:
            since = t
    if since is not None:
        stopped.append((since, float("inf")))
    # CSV timestamps are whole seconds: a row was written during [t, t + 1).
    return [row for row in rows if row.users > 0 and any(row.t + 1 > start and row.t < end for start, end in stopped)]


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


Point = tuple[float, float]
ROLES = ("target", "generator")


@dataclass
class ResourceSeries:
    """The sidecar's series a run's analysis reads, built once (`resource_series`) and shared by
    the step summaries (sliced per step) and the report's charts (`resource_timeline`).

    The host fields are the target's machine. With a remote target (`--target-sidecar`) the
    generator runs elsewhere: its machine's cores and CPU are the `generator_host_*` fields
    (None: the same machine as the target)."""

    host_cores: int | None
    host_cpu: list[Point]  # node_cpu_seconds_total summed over every CPU and mode
    host_idle: list[Point]  # the same, mode="idle"
    cpu: dict[str, list[Point]]  # process group CPU seconds, by role ("target", "generator")
    procs: dict[str, list[Point]]
    memory: dict[str, list[Point]]  # resident bytes
    generator_host_cores: int | None = None
    generator_host_cpu: list[Point] | None = None
    generator_host_idle: list[Point] | None = None
    wait: dict[str, list[Point]] = field(default_factory=dict)  # run delay seconds, by role (a sidecar that has it)
    host_steal: list[Point] = field(default_factory=list)  # node_cpu_seconds_total mode="steal", every CPU
    generator_host_steal: list[Point] | None = None


def _host_cores(scrapes: list[Scrape]) -> int | None:
    """The CPUs a sidecar's host metrics count (its last scrape)."""
    cpus = {labels.get("cpu") for s in scrapes[-1:] for name, labels, _ in s.samples if name == NODE_CPU}
    return len(cpus) or None


def resource_series(samples: Samples, meta: dict | None = None) -> ResourceSeries | None:
    """The resource series of a run (None without sidecar samples).

    Two sidecars (a remote target): the target's group and its host (cores, CPU) come from the
    `target_sidecar` source, the generator's group and host from the lab's own `sidecar`."""
    meta = meta or {}
    local = samples.scrapes(SIDECAR_JOB)
    remote = samples.scrapes(TARGET_SIDECAR_SOURCE)
    if not local and not remote:
        return None
    target_group = meta.get("target_group") or TARGET_GROUP
    groups = {"target": target_group, "generator": GENERATOR_GROUP}
    sources = {"target": remote if remote or meta.get("target_sidecar") else local, "generator": local}
    local_cores = meta.get("host_cores")
    if local_cores is None and local:
        local_cores = _host_cores(local)
    if not (remote or meta.get("target_sidecar")):
        return ResourceSeries(
            host_cores=local_cores,
            host_cpu=series(local, NODE_CPU),
            host_idle=series(local, NODE_CPU, {"mode": "idle"}),
            cpu={role: series(local, CPU, {"groupname": groups[role]}) for role in ROLES},
            procs={role: series(local, PROCS, {"groupname": groups[role]}) for role in ROLES},
            memory={role: series(local, MEMORY, {"groupname": groups[role], "memtype": "resident"}) for role in ROLES},
            wait={role: series(local, RUN_DELAY, {"groupname": groups[role]}) for role in ROLES},
            host_steal=series(local, NODE_CPU, STEAL),
        )
    return ResourceSeries(
        host_cores=meta.get("target_host_cores") or (_host_cores(remote) if remote else None),
        host_cpu=series(remote, NODE_CPU),
        host_idle=series(remote, NODE_CPU, {"mode": "idle"}),
        cpu={role: series(sources[role], CPU, {"groupname": groups[role]}) for role in ROLES},
        procs={role: series(sources[role], PROCS, {"groupname": groups[role]}) for role in ROLES},
        memory={role: series(sources[role], MEMORY, {"groupname": groups[role], "memtype": "resident"})
                for role in ROLES},
        wait={role: series(sources[role], RUN_DELAY, {"groupname": groups[role]}) for role in ROLES},
        generator_host_cores=local_cores,
        generator_host_cpu=series(local, NODE_CPU),
        generator_host_idle=series(local, NODE_CPU, {"mode": "idle"}),
        host_steal=series(remote, NODE_CPU, STEAL),
        generator_host_steal=series(local, NODE_CPU, STEAL),
    )


def _inside(points: list[Point], start: float, end: float) -> list[float]:
    return [v for t, v in points if start <= t <= end]


def window_increase(points: list[Point], start: float, end: float) -> tuple[float, float] | None:
    """(increase, seconds) of a CPU counter over a step's hold: from its samples inside the hold, else
    (a sampler that fell behind on a busy host, one sample per 1.5 s in a 2.5 s hold) from the two
    samples around it, when they span at most the hold plus one second on each side."""
    inside = counter_increase(points, start, end)
    if inside is not None:
        return inside
    before = [(t, v) for t, v in points if t <= start]
    after = [(t, v) for t, v in points if t >= end]
    if not before or not after or before[-1][0] < start - 1.0 or after[0][0] > end + 1.0:
        return None
    return counter_increase([before[-1], after[0]], before[-1][0], after[0][0])


def steal_over(points: list[Point], start: float, end: float, host_cores: int | None) -> float | None:
    """The share of a host's CPU time stolen by its hypervisor over [start, end] (`steal_share`)."""
    steal = window_increase(points, start, end)
    if not steal or steal[1] < 0.5:
        return None
    share = steal_share(steal[0] / steal[1], host_cores)
    return None if share is None else round(share, 4)


def _resource_fields(res: ResourceSeries, start: float, end: float, meta: dict) -> dict:
    """CPU (cores, averaged over [start, end]) and memory of the target and generator groups."""
    out: dict = {"host_cores": res.host_cores}
    host_cores = res.host_cores
    busy = window_increase(res.host_cpu, start, end)
    idle = window_increase(res.host_idle, start, end)
    if busy and idle and busy[1] >= 0.5:
        out["host_cpu_busy_cores"] = (busy[0] - idle[0]) / busy[1]
    out["host_cpu_steal_share"] = steal_over(res.host_steal, start, end, host_cores)
    for role in ROLES:
        cpu = window_increase(res.cpu[role], start, end)
        if cpu and cpu[1] >= 0.5:  # a moment of samples (the run's last instant) says nothing
            out[f"{role}_cpu_cores"] = cpu[0] / cpu[1]
        procs = _inside(res.procs[role], start, end)
        if procs:
            out[f"{role}_procs"] = statistics.median(procs)
        if role == "target":
            mem = _inside(res.memory[role], start, end)
            if mem:
                out["target_memory_bytes"] = statistics.median(mem)
            wait = counter_increase(res.wait.get(role, []), start, end)
            if wait and wait[1] >= 0.5:
                out["target_cpu_wait_cores"] = wait[0] / wait[1]
    # Cores a group can use (loadlab.contract.cores): the workers the run was told about, else its
    # busy processes as sampled.
    workers = meta.get("target_workers")
    if workers is None and out.get("target_procs"):
        workers = busy_processes(out["target_procs"], TARGET_IDLE_PROCESSES)
    gen_procs = meta.get("generator_processes")
    if gen_procs is None and out.get("generator_procs"):
        distributed = out["generator_procs"] > 1
        gen_procs = busy_processes(out["generator_procs"], GENERATOR_IDLE_PROCESSES_DISTRIBUTED if distributed else 0)
    gen_host_cores = res.generator_host_cores if res.generator_host_cores is not None else host_cores
    out["generator_host_cpu_steal_share"] = (out["host_cpu_steal_share"] if res.generator_host_steal is None
                                             else steal_over(res.generator_host_steal, start, end, gen_host_cores))
    for role, busy, cores in (("target", workers, host_cores), ("generator", gen_procs, gen_host_cores)):
        available = cores_available(cores, busy)
        if available is not None:
            out[f"{role}_cores_available"] = available
    return out


def hold_scrapes(scrapes: list[Scrape], hold_start: float, hold_end: float, users: int) -> list[Scrape]:
    """The exporter's scrapes inside a hold that saw its user count (CSV timestamps are truncated to
    the second, so the hold's last second is included)."""
    return [sc for sc in scrapes
            if hold_start <= sc.t < hold_end + 1 and scrape_value(sc, "locust_users") == users]


def _histogram_p(scrapes: list[Scrape], q: float) -> float | None:
    """Quantile (ms) of Locust's request histogram between the first and the last of `scrapes`."""
    if len(scrapes) < 2:
        return None
    value = quantile_between(q, scrapes[0], scrapes[-1], LOCUST_HISTOGRAM)
    return None if value is None else value * 1000.0


def _mean_response_ms(scrapes: list[Scrape], hold: list[HistoryRow]) -> float | None:
    """Mean response time over the hold: histogram _sum/_count deltas, else the CSV's running average."""
    if len(scrapes) >= 2:
        total = [scrape_value(sc, LOCUST_HISTOGRAM + "_sum") or 0.0 for sc in (scrapes[0], scrapes[-1])]
        count = [scrape_value(sc, LOCUST_HISTOGRAM + "_count") or 0.0 for sc in (scrapes[0], scrapes[-1])]
        if count[1] > count[0] and total[1] >= total[0]:
            return 1000.0 * (total[1] - total[0]) / (count[1] - count[0])
    a, b = hold[0], hold[-1]
    if a.avg_ms is not None and b.avg_ms is not None and b.requests > a.requests:
        return (b.avg_ms * b.requests - a.avg_ms * a.requests) / (b.requests - a.requests)
    return None


def summarize_steps(history: LocustHistory, samples: Samples | None = None, meta: dict | None = None,
                    transient_fraction: float = DEFAULT_THRESHOLDS.step_transient_fraction, min_rows: int = 3,
                    resources: ResourceSeries | None = None) -> list[StepSummary]:
    """Per-step summaries of a run, resource fields filled when samples are present.

    `resources`: the run's `resource_series`, when the caller already built it (else built here).
    """
    samples = samples or Samples()
    meta = meta or {}
    if resources is None:
        resources = resource_series(samples, meta)
    steps = []
    stale = {row.t for row in after_stop(history.rows, samples.scrapes(LOCUST_JOB))}
    plateaus = [[row for row in plateau if row.t not in stale] for plateau in detect_plateaus(history.rows, min_rows)]
    for index, plateau in enumerate(p for p in plateaus if len(p) >= min_rows):
        hold = hold_rows(plateau, transient_fraction)
        rates = _interval_rates(hold)
        requests = max(0, hold[-1].requests - hold[0].requests)
        same_level = hold_scrapes(samples.scrapes("locust"), hold[0].t, hold[-1].t, plateau[0].users)
        # Mean over the hold. Per-second counts of a few requests are integers, so their median
        # is off by up to half a request per second; the mean is not. Locust's exporter samples
        # carry exact timestamps; the CSV's are whole seconds, so it is the fallback.
        exact = counter_increase(series(same_level, "locust_requests_total"), hold[0].t, hold[-1].t + 1)
        if exact and exact[1] >= 1.0:
            rps = exact[0] / exact[1]
        else:
            span = hold[-1].t - hold[0].t
            rps = requests / span if span > 0 else 0.0
        failures = max(0, hold[-1].failures - hold[0].failures)
        p95 = _histogram_p(same_level, 0.95)
        p50 = _histogram_p(same_level, 0.50)
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
            mean_response_ms=_mean_response_ms(same_level, hold),
        )
        if resources is not None:
            for key, value in _resource_fields(resources, hold[0].t, hold[-1].t, meta).items():
                setattr(step, key, value)
        steps.append(step)
    return steps


def resource_timeline(resources: ResourceSeries | None) -> dict[str, list[Point]]:
    """Per-second series for the report: CPU in cores, memory in bytes, host busy cores."""
    if resources is None:
        return {}
    out: dict[str, list[Point]] = {
        "target_cpu_cores": rate_series(resources.cpu["target"]),
        "generator_cpu_cores": rate_series(resources.cpu["generator"]),
        "target_memory_bytes": resources.memory["target"],
        "generator_memory_bytes": resources.memory["generator"],
    }
    total = rate_series(resources.host_cpu)
    idle_at = dict(rate_series(resources.host_idle))
    out["host_cpu_busy_cores"] = [(t, v - idle_at[t]) for t, v in total if t in idle_at]
    if resources.generator_host_cpu is not None and resources.generator_host_idle is not None:
        # Two machines: the generator's chart shows its own host, not the target's.
        total = rate_series(resources.generator_host_cpu)
        idle_at = dict(rate_series(resources.generator_host_idle))
        out["generator_host_cpu_busy_cores"] = [(t, v - idle_at[t]) for t, v in total if t in idle_at]
    return out


__all__ = ["StepSummary", "ResourceSeries", "detect_plateaus", "hold_rows", "steal_over", "summarize_steps",
           "resource_series", "resource_timeline", "after_stop"]
