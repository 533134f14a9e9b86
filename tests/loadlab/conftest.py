"""Fixtures for the lab tests: a ground-truth server, running the real `loadlab` command, and the
simulated machines of the scale-out tests (an API machine with its sidecar, a load balancer, a
remote Locust worker started from the command the lab prints, a load machine's sidecar)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.helpers import PYTHON, REPO_ROOT, VENV_BIN, ManagedProcess, free_port, wait_for_http

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


# ------------------------------------------------------------------ simulated machines (loopback addresses)


def api_machine(spawn, ground_truth, address: str, service_ms: float) -> tuple[str, str, str]:
    """A one-worker ground-truth API on its own loopback address (another machine of a fleet), and a
    sidecar beside it: (API URL, sidecar URL, metrics URL)."""
    api = ground_truth(1, service_ms, "burn", host=address)
    port = free_port(address)
    car = spawn([PYTHON, "-m", "monitoring.sidecar", "--host", address, "--port", str(port), "--group-pid",
                 f"target={api.pid}"], name=f"sidecar-{address}")
    sidecar = f"http://{address}:{port}/metrics"
    wait_for_http(sidecar, timeout=30, proc=car)
    return api.url, sidecar, f"{api.url}/metrics"


def load_balancer(spawn, backends: list[str], max_seconds: int) -> str:
    """tests/loadlab/round_robin_lb.py on 127.0.0.1 in front of `backends`; its URL."""
    port = free_port()
    lb = spawn([sys.executable, "-m", "tests.loadlab.round_robin_lb", "--port", str(port),
                *(arg for url in backends for arg in ("--backend", url)), "--max-seconds", str(max_seconds)],
               name="round-robin-lb")
    host = f"http://127.0.0.1:{port}"
    wait_for_http(f"{host}/healthz", timeout=30, proc=lb)
    return host


WORKER_LINE = "worker     "  # how the lab prints the command to run on each load machine


def printed_command(lab: ManagedProcess, timeout: float = 90) -> str:
    """The worker command the lab printed, once it has."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in lab.log().splitlines():
            if line.startswith(WORKER_LINE):
                return line[len(WORKER_LINE):]
        assert lab.proc.poll() is None, lab.log()
        time.sleep(0.2)
    pytest.fail(f"loadlab printed no worker command in {timeout} s:\n{lab.log()}")


def start_worker(spawn, command: str, name: str) -> ManagedProcess:
    """Run the printed command as a shell would: leading NAME=VALUE words are its environment;
    `locust` is found on PATH (the instructions say: the checkout's .venv/bin on PATH). `spawn`
    stops it by PID when the test ends, pass or fail."""
    words = shlex.split(command)
    env = {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    while "=" in words[0] and not words[0].startswith("-"):
        name_, value = words.pop(0).split("=", 1)
        env[name_] = value
    assert words[0] == "locust", command
    return spawn(words, name=name, env=env, cwd=Path("/"))  # not the checkout: the command must say where


def start_machine_sidecar(spawn, address: str, pid_file: Path) -> str:
    """A sidecar on a simulated load machine (its own loopback address). On a real machine its group
    would be a regex of the worker's command line; here the workers share one kernel, so each
    sidecar follows its own worker by PID file (the lab's own sidecar follows Locust the same way)."""
    port = free_port(address)
    proc = spawn([PYTHON, "-m", "monitoring.sidecar", "--host", address, "--port", str(port),
                  "--pid-file", f"locust={pid_file}"], name=f"sidecar-{address}")
    url = f"http://{address}:{port}/metrics"
    wait_for_http(url, timeout=30, proc=proc)
    return url


def run_remote_workers(spawn, lab: ManagedProcess, pid_files: list[Path],
                       timeout: float = 180) -> tuple[str, list[ManagedProcess], Path]:
    """One worker per PID file, started from the command `lab` printed as a user would on each load
    machine; then the lab's run to its successful end: (the command, the workers, the run directory)."""
    command = printed_command(lab)
    workers = []
    for i, pid_file in enumerate(pid_files, 1):
        workers.append(start_worker(spawn, command, f"worker-{i}"))
        pid_file.write_text(f"{workers[-1].pid}\n")  # what the machine's sidecar follows
    code = lab.wait(timeout=timeout)
    output = lab.log()
    assert code == 0, output
    assert f"{len(pid_files)} of {len(pid_files)} remote workers connected" in output, output
    return command, workers, run_dir_of(lab)


def run_dir_of(lab: ManagedProcess) -> Path:
    line = next(line for line in lab.log().splitlines() if line.startswith("run directory "))
    return Path(line.removeprefix("run directory ").strip())


def lab_pids(run_dir: Path) -> list[int]:
    meta = json.loads((run_dir / "run.json").read_text())
    return [c["pid"] for c in meta["components"]] + meta.get("pids", [])
