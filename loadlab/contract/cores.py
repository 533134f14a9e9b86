"""How many cores a process group can use: the denominator of every CPU-saturation judgement.

One Python process (a gunicorn sync worker, a Locust process) runs its Python code on one core
at a time, so a group can use at most min(host cores, its busy processes). Which processes are
busy differs by role:

- the target: gunicorn's arbiter only supervises, so its workers are the processes minus one
  (a single-process server still counts as one);
- the generator: standalone, the one Locust process; distributed, the master only coordinates,
  so it does not count.

The Prometheus rules (`monitoring.rules`) express the same model in PromQL from these
constants; the analysis calls `cores_available`.
"""

from __future__ import annotations

import os

# Processes of the target group that never serve requests (gunicorn's arbiter).
TARGET_IDLE_PROCESSES = 1
# Processes of a distributed generator that never generate load (Locust's master).
GENERATOR_IDLE_PROCESSES_DISTRIBUTED = 1


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), the default worker count everywhere."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def busy_processes(procs: float, idle: int) -> float:
    """Processes doing the work: all of them minus the idle ones, at least one."""
    return max(1.0, procs - idle)


def cores_available(host_cores: int | None, busy: float | None) -> float | None:
    """min(host cores, busy processes); None when either is unknown."""
    if not host_cores or not busy:
        return None
    return float(min(host_cores, busy))


def steal_share(steal_cores: float | None, host_cores: float | None) -> float | None:
    """The share of a host's CPU time its hypervisor took (node_cpu_seconds_total mode="steal", in
    cores, over the host's cores), clamped to [0, 1]; None when either is unknown."""
    if steal_cores is None or not host_cores:
        return None
    return min(1.0, max(0.0, steal_cores / host_cores))


def obtainable_cores(available: float, steal: float | None) -> float:
    """The cores a group that wants every core it may use can get on a host whose hypervisor takes
    the share `steal` of each CPU (a virtual machine's steal time). The kernel does not count stolen
    time as the group's CPU (nor as the run delay of a thread that was running when its vCPU was
    taken), so on a VM with 16% steal an always-runnable worker reads 0.84 of a core used and nothing
    waited: the line to judge it by is 0.84, not 1."""
    return available * (1.0 - (steal or 0.0))


def cpu_limited(used: float | None, wait: float | None, available: float | None, steal: float | None,
                fraction: float) -> bool:
    """A group is CPU-limited when the CPU it used plus the time its threads waited runnable for a
    CPU (run delay, in cores; None: not sampled) reaches `fraction` of the cores it can obtain."""
    if used is None or not available:
        return False
    return used + (wait or 0.0) >= fraction * obtainable_cores(available, steal)
