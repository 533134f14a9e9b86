"""An API served by a fleet: `--target-sidecar URL` and `--target-metrics URL`, repeated, one of
each on every machine of the API behind its load balancer.

    loadlab run login-step --host http://LB:8000 \\
        --target-sidecar http://10.0.0.5:9256 --target-sidecar http://10.0.0.6:9256 \\
        --target-metrics http://10.0.0.5:9101 --target-metrics http://10.0.0.6:9101

The first sidecar is read as today's source `target_sidecar` (a single one behaves exactly as
before); the others as `target_sidecar_2`, `target_sidecar_3`... (`sidecar_sources`); the API's
metrics as `target`, `target_metrics_2`... (`metrics_sources`). Per step, each machine's target
group CPU, processes and the cores it can use go into the step's `target_machines` (the
`generator_machines` of the API's side, read by the same `generators.machine`); the step's
`target_cpu_cores`, `target_cores_available`, memory, processes and host figures become the
fleet's sums. The analysis judges the fleet and each machine on its own
(`analysis.saturated_target`): a fleet at 60% with one machine at 100% is limited by that
machine (a slower machine, or an uneven load balancer), and the verdict names it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from loadlab import generators
from loadlab.contract.cores import TARGET_IDLE_PROCESSES, busy_processes, cores_available
from loadlab.contract.names import TARGET_GROUP, TARGET_JOB, TARGET_SIDECAR_SOURCE
from loadlab.history import Samples, series
from loadlab.steps import MEMORY, NODE_CPU, RUN_DELAY, StepSummary, _inside, window_increase

METRICS_PREFIX = "target_metrics"
# The step's fields that become the fleet's sums (None when a machine's figure is unknown).
SUMMED = {"target_cpu_cores": "cpu_cores", "target_cores_available": "cores_available", "target_procs": "procs",
          "target_memory_bytes": "memory_bytes", "target_cpu_wait_cores": "cpu_wait_cores",
          "host_cpu_busy_cores": "host_cpu_busy_cores", "host_cores": "host_cores"}


def sidecar_sources(urls: Sequence[str]) -> dict[str, str]:
    """Sample source -> URL of the API's sidecars, in the order the flags were given."""
    return {TARGET_SIDECAR_SOURCE if i == 1 else f"{TARGET_SIDECAR_SOURCE}_{i}": url for i, url in enumerate(urls, 1)}


def metrics_sources(urls: Sequence[str]) -> dict[str, str]:
    """Sample source -> URL of the API's own /metrics, one per machine."""
    return {TARGET_JOB if i == 1 else f"{METRICS_PREFIX}_{i}": url for i, url in enumerate(urls, 1)}


def is_sidecar(source: str) -> bool:
    return source == TARGET_SIDECAR_SOURCE or source.startswith(TARGET_SIDECAR_SOURCE + "_")


def is_metrics(source: str) -> bool:
    return source == TARGET_JOB or source.startswith(METRICS_PREFIX + "_")


def metrics_of(meta: Mapping) -> list[str]:
    """The sources of the API's metrics a run sampled: `target`, then the fleet's others."""
    remote = meta.get("remote_sources")
    extra = sorted((s for s in remote if is_metrics(s) and s != TARGET_JOB), key=_order) if isinstance(remote, dict) else []
    return [TARGET_JOB, *extra]


def _order(source: str) -> int:
    tail = source.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 1


def _machine(url: str, samples: Samples, source: str, step: StepSummary, meta: Mapping) -> dict:
    """One API machine's figures over a step's hold (None where its samples do not reach)."""
    scrapes = samples.scrapes(source)
    group = meta.get("target_group") or TARGET_GROUP
    start, end = step.hold_start, step.end
    cores = (meta.get("target_sidecar_cores") or {}).get(source)
    m = generators.machine(url, scrapes, start, end, cores, group)
    # Cores it can use: --target-workers (per machine) when given, else its busy processes as sampled.
    workers = meta.get("target_workers")
    if workers is None and m["procs"]:
        workers = busy_processes(m["procs"], TARGET_IDLE_PROCESSES)
    m["cores_available"] = cores_available(m["host_cores"], workers)
    memory = _inside(series(scrapes, MEMORY, {"groupname": group, "memtype": "resident"}), start, end)
    m["memory_bytes"] = sorted(memory)[len(memory) // 2] if memory else None
    wait = window_increase(series(scrapes, RUN_DELAY, {"groupname": group}), start, end)
    m["cpu_wait_cores"] = round(wait[0] / wait[1], 4) if wait and wait[1] >= 0.5 else None
    busy = window_increase(series(scrapes, NODE_CPU), start, end)
    idle = window_increase(series(scrapes, NODE_CPU, {"mode": "idle"}), start, end)
    m["host_cpu_busy_cores"] = round((busy[0] - idle[0]) / busy[1], 4) if busy and idle and busy[1] >= 0.5 else None
    return m


def apply(steps: list[StepSummary], samples: Samples, meta: Mapping) -> list[str]:
    """Fill each step's `target_machines` of a run with several --target-sidecar, and make the step's
    target figures the fleet's sums; notes for the verdict. One sidecar (or none): nothing to do."""
    urls = meta.get("target_sidecars")
    if not isinstance(urls, dict) or len(urls) < 2:
        return []
    for step in steps:
        machines = [_machine(url, samples, source, step, meta) for source, url in urls.items()]
        step.target_machines = machines
        for field, key in SUMMED.items():
            values = [m[key] for m in machines]
            if key in ("cpu_wait_cores", "memory_bytes", "host_cpu_busy_cores") and all(v is None for v in values):
                total = None  # a sidecar without that figure at all (e.g. no run delay): unknown, not a gap
            else:
                total = round(sum(values), 4) if all(v is not None for v in values) else None
            setattr(step, field, total)
        step.host_cpu_steal_share = generators.pooled_steal(machines)
    return notes(steps) if steps else []


def notes(steps: list[StepSummary]) -> list[str]:
    """The verdict's notes: each API machine's busiest step, and the machines whose CPU is unknown."""
    return [generators.busiest(steps, "target_machines", "target CPU per API machine", "the API machines' sidecars"),
            *generators.unknown(steps, "target_machines", "target CPU",
                                "the fleet's CPU and its resource verdict there are unknown")]


__all__ = ["METRICS_PREFIX", "apply", "is_metrics", "is_sidecar", "metrics_of", "metrics_sources", "notes",
           "sidecar_sources"]
