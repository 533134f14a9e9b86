"""The per-group metrics, under process-exporter's names so its dashboards work unchanged.

`GroupCollector.collect()` runs at scrape time: it asks the tracker for fresh
numbers and yields metric families; nothing is updated between scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .tracker import ProcessTracker


class GroupCollector(Collector):
    """namedprocess_namegroup_* for every group of a ProcessTracker."""

    def __init__(self, tracker: ProcessTracker) -> None:
        self.tracker = tracker

    def collect(self) -> Iterator[Metric]:
        stats = self.tracker.scan()
        # Names, labels and HELP texts are process-exporter's own, so its dashboards and
        # recording rules read these unchanged.
        cpu = CounterMetricFamily("namedprocess_namegroup_cpu_seconds", "Cpu user usage in seconds",
                                  labels=["groupname", "mode"])
        memory = GaugeMetricFamily("namedprocess_namegroup_memory_bytes", "number of bytes of memory in use",
                                   labels=["groupname", "memtype"])
        procs = GaugeMetricFamily("namedprocess_namegroup_num_procs", "number of processes in this group",
                                  labels=["groupname"])
        threads = GaugeMetricFamily("namedprocess_namegroup_num_threads", "Number of threads",
                                    labels=["groupname"])
        fds = GaugeMetricFamily("namedprocess_namegroup_open_filedesc",
                                "number of open file descriptors for this group", labels=["groupname"])
        oldest = GaugeMetricFamily("namedprocess_namegroup_oldest_start_time_seconds",
                                   "start time in seconds since 1970/01/01 of oldest process in group",
                                   labels=["groupname"])
        # Not one of process-exporter's: the kernel's run delay (schedstat), which tells a process
        # starved of CPU by the rest of the host from one waiting on I/O.
        run_delay = CounterMetricFamily("namedprocess_namegroup_run_delay_seconds",
                                        "Seconds the group's threads were runnable but waiting for a CPU",
                                        labels=["groupname"])
        for name, group in stats.items():
            cpu.add_metric([name, "user"], group.cpu_user)
            cpu.add_metric([name, "system"], group.cpu_system)
            memory.add_metric([name, "resident"], group.resident)
            memory.add_metric([name, "virtual"], group.virtual)
            procs.add_metric([name], group.num_procs)
            threads.add_metric([name], group.threads)
            fds.add_metric([name], group.open_fds)
            oldest.add_metric([name], group.oldest_start)
            run_delay.add_metric([name], group.run_delay)
        yield from (cpu, memory, procs, threads, fds, oldest, run_delay)
        yield CounterMetricFamily(
            "namedprocess_scrape_procread_errors",
            "incremented each time a tracked proc's metrics collection fails",
            value=self.tracker.procread_errors)
        yield CounterMetricFamily(
            "namedprocess_scrape_partial_errors",
            "incremented each time a tracked proc's metrics collection fails partially, "
            "e.g. unreadable open file descriptors",
            value=self.tracker.partial_errors)
