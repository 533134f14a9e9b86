"""The load generator's CPU on each load machine (`--generator-sidecar URL`, repeatable), with
`--remote-workers`: the `--target-sidecar` of the load machines.

    # on each load machine, beside its Locust worker:
    python -m monitoring.sidecar --host 0.0.0.0 --port 9256 --group 'locust=locust .*--worker'
    # on the lab's machine:
    loadlab run login-step --remote-workers 2 --generator-sidecar http://10.0.0.7:9256 \\
        --generator-sidecar http://10.0.0.8:9256

The sampler reads each as the source `generator_sidecar_<i>`. Per step, each machine's `locust`
group CPU and the cores it can use (its worker processes, at most its host's cores) go into the
step's `generator_machines`, beside the Locust master on this machine; the step's
`generator_cpu_cores` and `generator_cores_available` become their sums. The analysis judges each
machine on its own (`analysis.saturated_generator`): one saturated load machine makes the
measurement invalid, and the verdict names it.

With remote workers and no generator sidecar the remote generators' CPU is unknown: the steps'
generator CPU is left empty and the verdict says a generator limit is not ruled out, rather than
judge the generator by the master's CPU alone.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from loadlab import remote
from loadlab.contract.cores import cores_available
from loadlab.contract.names import GENERATOR_GROUP, SIDECAR_JOB
from loadlab.history import Samples, Scrape, series
from loadlab.processes import LabError
from loadlab.steps import CPU, NODE_CPU, PROCS, STEAL, StepSummary, steal_over, window_increase

SOURCE_PREFIX = remote.GENERATOR_SIDECAR_SOURCE
MASTER = "this machine (the Locust master and any local workers)"
SIDECAR_COMMAND = ("python -m monitoring.sidecar --host 0.0.0.0 --port 9256 --group 'locust=locust .*--worker'")


def sources(urls: Sequence[str]) -> dict[str, str]:
    """Sample source name -> URL, in the order the flags were given."""
    return {f"{SOURCE_PREFIX}_{i}": url for i, url in enumerate(urls, 1)}


def check(url: str, need_process: bool) -> int:
    """The sidecar answers with the `locust` group and host metrics; its host's cores. Before the
    workers start (`need_process` False) the group may be empty; once they all connected it must not."""
    try:
        samples = remote._fetch(url, "--generator-sidecar")  # the same scrape as a --target-sidecar's check
    except LabError as exc:
        raise LabError(f"{exc}: start a sidecar on that load machine: {SIDECAR_COMMAND}") from None
    groups = {labels.get("groupname", ""): value for name, labels, value in samples if name == remote.PROCS}
    if GENERATOR_GROUP not in groups:
        raise LabError(f"--generator-sidecar {url} has no process group {GENERATOR_GROUP!r} (its groups: "
                       f"{', '.join(sorted(groups)) or 'none'}): start it with --group "
                       f"'{GENERATOR_GROUP}=locust .*--worker' (a regex of the worker's command line)")
    if need_process and groups[GENERATOR_GROUP] < 1:
        raise LabError(f"--generator-sidecar {url}: group {GENERATOR_GROUP!r} has no process although every worker "
                       f"connected: its regex matches no Locust worker on that machine, so its CPU would read as "
                       f"idle; check it there with `python -m monitoring.sidecar --once --group "
                       f"'{GENERATOR_GROUP}=REGEX'`")
    cpus = {labels.get("cpu") for name, labels, _ in samples if name == remote.NODE_CPU}
    if not cpus:
        raise LabError(f"--generator-sidecar {url} serves no host metrics (node_cpu_seconds_total): the verdict needs "
                       f"the load machine's cores; start it without --no-host-metrics")
    return len(cpus)


def machine(instance: str, scrapes: list[Scrape], start: float, end: float, host_cores: int | None,
            group: str = GENERATOR_GROUP) -> dict:
    """One machine's figures of a process group over a step's hold (None where its samples do not
    reach); `loadlab.targets` reads the API's machines with it too."""
    cpu = window_increase(series(scrapes, CPU, {"groupname": group}), start, end)
    procs = [v for t, v in series(scrapes, PROCS, {"groupname": group}) if start <= t <= end]
    cores = host_cores or len({labels.get("cpu") for s in scrapes[-1:] for name, labels, _ in s.samples
                               if name == NODE_CPU}) or None
    busy = statistics.median(procs) if procs else None
    return {"instance": instance,
            "cpu_cores": round(cpu[0] / cpu[1], 4) if cpu and cpu[1] >= 0.5 else None,
            "procs": busy, "cores_available": cores_available(cores, busy), "host_cores": cores,
            "host_cpu_steal_share": steal_over(series(scrapes, NODE_CPU, STEAL), start, end, cores)}


def pooled_steal(machines: list[dict]) -> float | None:
    """The machines' steal shares weighted by their usable cores: the share of the cores they can
    use together that their hypervisors took (None when any machine's share or cores is unknown)."""
    known = [(m["cores_available"], m.get("host_cpu_steal_share")) for m in machines]
    if not known or any(not cores or share is None for cores, share in known):
        return None
    return round(sum(cores * share for cores, share in known) / sum(cores for cores, _ in known), 4)


def apply(steps: list[StepSummary], samples: Samples, meta: Mapping) -> list[str]:
    """Fill each step's `generator_machines` of a run with remote workers; notes for the verdict."""
    if not meta.get("remote_workers"):
        return []
    urls = meta.get("generator_sidecars") or {}
    if not urls:
        for step in steps:
            step.generator_cpu_cores = step.generator_cores_available = None
        return ["note: the remote load generators' CPU was not sampled (no --generator-sidecar), so a generator "
                "limit is not ruled out: start a sidecar beside each worker and pass --generator-sidecar URL"] if steps else []
    local = samples.scrapes(SIDECAR_JOB)
    for step in steps:
        machines = [machine(MASTER, local, step.hold_start, step.end, meta.get("host_cores"))]
        # Its busy generator processes are the ones the run started here (the master aggregates, idle).
        machines[0]["cores_available"] = cores_available(machines[0]["host_cores"], meta.get("generator_processes"))
        machines += [machine(url, samples.scrapes(source), step.hold_start, step.end, None)
                     for source, url in urls.items()]
        step.generator_machines = machines
        known = all(m["cpu_cores"] is not None and m["cores_available"] for m in machines)
        step.generator_cpu_cores = sum(m["cpu_cores"] for m in machines) if known else None
        step.generator_cores_available = sum(m["cores_available"] for m in machines) if known else None
        step.generator_host_cpu_steal_share = pooled_steal(machines)
    return [busiest(steps), *unknown(steps)] if steps else []


def unknown(steps: list[StepSummary], machines: str = "generator_machines",
            what: str = "generator CPU", consequence: str = "a saturated load generator there is not ruled out") -> list[str]:
    """Notes for the machines whose sidecar gave no CPU for some steps (it stopped answering, or its
    worker was not yet in its group): a generator limit there is not ruled out. `machines`: the
    steps' field of per-machine figures (`target_machines` for an API's fleet, `loadlab.targets`)."""
    missing: dict[str, list[int]] = {}
    for step in steps:
        for m in getattr(step, machines) or []:
            if m["cpu_cores"] is None:
                missing.setdefault(m["instance"], []).append(step.users)
    return [f"note: no {what} from {name} during the steps at {', '.join(map(str, users))} users: {consequence}"
            for name, users in missing.items()]


def busiest(steps: list[StepSummary], machines: str = "generator_machines", what: str = "generator CPU per load machine",
            whose: str = "the load machines' sidecars") -> str:
    """The verdict's note: each machine's highest CPU of any step, against its usable cores."""
    peaks: dict[str, dict] = {}
    for step in steps:
        for m in getattr(step, machines) or []:
            if m["cpu_cores"] is not None and m["cpu_cores"] >= peaks.get(m["instance"], {}).get("cpu_cores", -1.0):
                peaks[m["instance"]] = m
    parts = [f"{name} {m['cpu_cores']:.2f} of {m['cores_available']:g} usable cores" if m["cores_available"]
             else f"{name} {m['cpu_cores']:.2f} cores (usable cores unknown)" for name, m in peaks.items()]
    return (f"note: {what}, at its busiest step: " + "; ".join(parts) if parts else
            f"note: no {what.split(' per ')[0]} samples from {whose} during any step's hold")


__all__ = ["MASTER", "SOURCE_PREFIX", "apply", "busiest", "check", "machine", "pooled_steal", "sources", "unknown"]
