"""The run delay the sidecar exports: time a group's threads were runnable but waited for a CPU.

A thread that always wants the CPU is either running or waiting in the run queue, so over any
interval a group of N such threads shows (CPU seconds + run delay) = N x the wall time, however
busy the machine is. Three busy processes pinned to one core wait for it two thirds of the time;
sleeping processes neither run nor wait."""

from __future__ import annotations

import sys
import time

import pytest

from tests.helpers import PYTHON

from .conftest import group_cpu, value, wait_until

# N children pinned to one CPU, each busy until FILE exists (at most 30 s: a bounded loop).
BUSY = """
import os, sys, time
n, stop = int(sys.argv[1]), sys.argv[2]
cpu = min(os.sched_getaffinity(0))
for _ in range(n):
    if os.fork() == 0:
        os.sched_setaffinity(0, {cpu})
        end = time.monotonic() + 30
        while not os.path.exists(stop) and time.monotonic() < end:
            pass
        os._exit(0)
time.sleep(40)
"""
SLEEP = "import time; time.sleep(40)"


@pytest.mark.serial  # run delay against wall time, scraped 3 s apart: run alone
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="schedstat is Linux's")
def test_busy_threads_on_one_core_wait_for_it_and_sleeping_ones_do_not(sidecar, spawn, tmp_path):
    stop = tmp_path / "stop"
    busy = spawn([PYTHON, "-c", BUSY, "3", str(stop)], name="busy")
    sleeping = spawn([PYTHON, "-c", SLEEP], name="sleeping")
    car = sidecar("--group-pid", f"busy={busy.pid}", "--group-pid", f"sleeping={sleeping.pid}")
    try:
        wait_until(lambda: car.procs("busy") == 4, 15, "the three busy children to be tracked")
        time.sleep(0.5)
        first, t0 = car.scrape(), time.monotonic()
        time.sleep(3.0)
        last, t1 = car.scrape(), time.monotonic()
    finally:
        stop.write_text("")
    wall = t1 - t0

    def grew(samples_before, samples_after, group: str) -> tuple[float, float]:
        cpu = group_cpu(samples_after, group) - group_cpu(samples_before, group)
        name = "namedprocess_namegroup_run_delay_seconds_total"
        wait = value(samples_after, name, groupname=group) - value(samples_before, name, groupname=group)
        return cpu, wait

    cpu, wait = grew(first, last, "busy")
    # One core shared by three: about 1 core of CPU and 2 cores' worth of waiting (less CPU and more
    # waiting when other work runs on that core too), and always 3 threads' worth in total.
    assert wait >= 1.5 * wall, f"cpu {cpu:.2f} s, waited {wait:.2f} s in {wall:.2f} s"
    assert (cpu + wait) / wall == pytest.approx(3.0, rel=0.15), f"cpu {cpu:.2f} s, waited {wait:.2f} s in {wall:.2f} s"
    cpu, wait = grew(first, last, "sleeping")
    assert cpu + wait < 0.05 * wall
