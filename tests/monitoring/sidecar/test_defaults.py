"""With no flags, the sidecar finds the bundled target (gunicorn master + workers) and nothing else."""

from __future__ import annotations

import os

import psutil

from monitoring.sidecar import ProcessTracker, default_groups
from tests.helpers import PYTHON, free_port, wait_for_http

from .conftest import wait_until


def test_default_groups_find_the_real_target_and_its_gunicorn_workers(spawn, tmp_path):
    port = free_port()
    target = spawn([PYTHON, "-m", "target_app", "--port", str(port), "--workers", "2",
                    "--db", str(tmp_path / "target.db"), "--hash-profile", "lab"], name="target")
    wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=30, proc=target)
    wait_until(lambda: len(psutil.Process(target.pid).children(recursive=True)) >= 2, 15, "two workers")
    tree = {target.pid} | {p.pid for p in psutil.Process(target.pid).children(recursive=True)}

    tracker = ProcessTracker(default_groups())
    tracker.scan()
    members = tracker.members()
    # Other engineers' targets may run on this shared machine too, so check ours are in, not the count.
    assert tree <= set(members["target"]), f"target tree {tree}, found {members['target']}"
    assert not tree & set(members["locust"])
    # This pytest (whose arguments name tests/monitoring/sidecar) and the tracker's own process are never members.
    for pid in (os.getpid(), os.getppid()):
        assert pid not in members["target"] and pid not in members["locust"]
