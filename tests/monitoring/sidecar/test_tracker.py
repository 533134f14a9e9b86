"""ProcessTracker in-process: the paths a scrape every second does not reach."""

from __future__ import annotations

import os
import re
import signal
import threading
import uuid

import pytest

from monitoring.sidecar import GroupSpec, ProcessTracker
from monitoring.sidecar import tracker as tracker_module

from .conftest import wait_until


def test_after_a_long_scrape_gap_handles_are_rechecked_and_cpu_still_never_drops(monkeypatch, workload):
    monkeypatch.setattr(tracker_module, "IDENTITY_RECHECK_AFTER_SECONDS", 0.0)  # every scan is "after a gap"
    tag = f"gap-{uuid.uuid4().hex[:8]}"
    tracker = ProcessTracker([GroupSpec("g", cmdline=(re.compile(f"--tag {tag}"),))])
    first = workload("idle", "--tag", tag, "--cpu-seconds", "0.3")
    workload("idle", "--tag", tag, "--cpu-seconds", "0.3")
    cpu: list[float] = []

    def scan_procs() -> int:
        stats = tracker.scan()["g"]
        cpu.append(stats.cpu_user + stats.cpu_system)
        return stats.num_procs

    wait_until(lambda: scan_procs() == 2 and cpu[-1] >= 0.5, 15, "two members that burned their CPU")
    os.kill(first.pid, signal.SIGKILL)
    first.proc.wait(5)
    wait_until(lambda: scan_procs() == 1, 10, "the killed member to leave")
    assert cpu == sorted(cpu) and cpu[-1] >= 0.5
    assert first.pid not in tracker.members()["g"]


def test_concurrent_scrapes_share_one_tracker_safely(workload):
    root = workload("tree", "--children", "3")
    tracker = ProcessTracker([GroupSpec("t", pids=(root.pid,))])
    wait_until(lambda: tracker.scan()["t"].num_procs == 4, 15, "the root and its three children")
    errors: list[BaseException] = []
    results: list[int] = []

    def scrape_many() -> None:
        try:
            for _ in range(30):
                results.append(tracker.scan()["t"].num_procs)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=scrape_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert results == [4] * 120


def test_a_tracker_needs_a_group():
    with pytest.raises(ValueError, match="at least one group"):
        ProcessTracker([])
