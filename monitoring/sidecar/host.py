"""Host metrics under node_exporter's names (the handful a load test needs), read with psutil."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# node_exporter's modes; psutil's guest/guest_nice are already included in user/nice
# by the kernel, and node_exporter reports them in a separate metric we do not need.
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


class HostCollector(Collector):
    """node_cpu_seconds_total, node_memory_Mem{Total,Available}_bytes, node_network_*_bytes_total, node_load1."""

    def collect(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily("node_cpu_seconds", "Seconds the CPUs spent in each mode.",
                                  labels=["cpu", "mode"])
        for index, times in enumerate(psutil.cpu_times(percpu=True)):
            for mode in CPU_MODES:
                value = getattr(times, mode, None)
                if value is not None:  # modes missing on other kernels/platforms are left out
                    cpu.add_metric([str(index), mode], value)
        yield cpu

        memory = psutil.virtual_memory()  # `available` is the kernel's MemAvailable on Linux
        yield GaugeMetricFamily("node_memory_MemTotal_bytes", "Memory information field MemTotal_bytes.",
                                value=memory.total)
        yield GaugeMetricFamily("node_memory_MemAvailable_bytes",
                                "Memory information field MemAvailable_bytes.", value=memory.available)

        receive = CounterMetricFamily("node_network_receive_bytes", "Network device statistic receive_bytes.",
                                      labels=["device"])
        transmit = CounterMetricFamily("node_network_transmit_bytes",
                                       "Network device statistic transmit_bytes.", labels=["device"])
        for device, counters in sorted(psutil.net_io_counters(pernic=True).items()):
            receive.add_metric([device], counters.bytes_recv)
            transmit.add_metric([device], counters.bytes_sent)
        yield receive
        yield transmit

        yield GaugeMetricFamily("node_load1", "1m load average.", value=os.getloadavg()[0])
