"""Fixtures for the lab tests: a ground-truth server, and running the real `loadlab` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.helpers import REPO_ROOT, free_port, wait_for_http

LOADLAB = [sys.executable, "-m", "loadlab.cli"]


@dataclass
class GroundTruth:
    url: str
    pid: int
    workers: int
    service_s: float

    @property
    def capacity_rps(self) -> float:
        return self.workers / self.service_s

    def knee_users(self, think_s: float) -> float:
        return self.workers * (self.service_s + think_s) / self.service_s


def prioritize(pid: int) -> None:
    """Run the server and its workers at nice -10 when allowed (root, as in CI).

    X = W/S assumes every worker gets a whole core. On a machine shared with other CPU-heavy
    work the ground-truth server otherwise gets a share that changes from step to step
    (measured: 0.4-0.9 of a core at a load average of 10), and its "capacity" with it.
    Without permission it keeps its normal priority; the CPU test then compares with U/S.
    """
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            proc.nice(-10)
    except (psutil.AccessDenied, PermissionError):
        pass


@pytest.fixture
def ground_truth(spawn):
    """Start a ground-truth server: ground_truth(workers, service_ms, mode, *extra args) -> GroundTruth."""

    def start(workers: int, service_ms: float, mode: str, *extra: str, host: str = "127.0.0.1") -> GroundTruth:
        # `host`: another loopback address (127.0.0.2...) stands in for another machine (tests/loadlab/test_fleet.py).
        port = free_port(host)
        proc = spawn([sys.executable, "-m", "tests.loadlab.ground_truth_app", "--host", host, "--port", str(port),
                      "--workers", str(workers), "--service-ms", str(service_ms), "--mode", mode, *extra],
                     name=f"ground-truth-{mode}-{host}")
        url = f"http://{host}:{port}"
        wait_for_http(f"{url}/healthz", timeout=30, proc=proc)
        prioritize(proc.pid)
        return GroundTruth(url, proc.pid, workers, service_ms / 1000.0)

    return start


@dataclass
class LabRun:
    returncode: int
    output: str
    run_dir: Path | None

    def verdict(self) -> dict:
        assert self.run_dir is not None, self.output
        return json.loads((self.run_dir / "verdict.json").read_text())

    def meta(self) -> dict:
        return json.loads((self.run_dir / "run.json").read_text())

    def started_pids(self) -> list[int]:
        return [c["pid"] for c in self.meta()["components"]] + self.meta().get("pids", [])


def run_loadlab(args: list[str], out: Path, env: dict[str, str] | None = None, timeout: float = 240) -> LabRun:
    """Run the real `loadlab` CLI; the run directory is the one it printed."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([*LOADLAB, *args, "--out", str(out)] if "--" not in args else
                          [*LOADLAB, *args[:args.index("--")], "--out", str(out), *args[args.index("--"):]],
                          cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    run_dir = None
    for line in output.splitlines():
        if line.startswith("run directory "):
            run_dir = Path(line.split("run directory ", 1)[1].strip())
    return LabRun(proc.returncode, output, run_dir)


def assert_all_gone(pids: list[int]) -> None:
    alive = []
    for pid in set(pids):
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {proc.cmdline()[:4]}")
        except psutil.NoSuchProcess:
            pass
    assert not alive, f"processes left behind: {alive}"


def step_table(verdict: dict) -> str:
    rows = ["users  rps    p95ms  meanms  tgtCPU  genCPU  hostCPU  steal"]
    for s in verdict["steps"]:
        rows.append(f"{s['users']:5d} {s['rps']:6.1f} {s['p95_ms'] or 0:7.0f} {s['mean_response_ms'] or 0:7.0f} "
                    f"{s['target_cpu_cores'] or 0:7.2f} {s['generator_cpu_cores'] or 0:7.2f} "
                    f"{s['host_cpu_busy_cores'] or 0:7.2f} {s.get('host_cpu_steal_share') or 0:6.2f}")
    return "\n".join(rows + verdict["summary"])
