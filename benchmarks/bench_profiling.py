"""Capacity of the bundled target with and without `--profile`'s sampling, measured side by side.

Starts the bundled target (gunicorn, 2 workers by default, the default password-hash profile, so
/client_login is CPU-bound as in a real run) and saturates POST /client_login with wrk in
alternating rounds: bare, then profiled (the two py-spy recorders `loadlab run --profile` runs
during a step's hold, `loadlab.stacks.Recorder`, on the arbiter and its workers at the
default rate, one py-spy per process), then the other order, so drift in the machine's load hits both alike. Saturated
throughput is the capacity. Prints each round, the median capacity of each, the ratio
profiled/bare (goal: >= 0.95) and the CPU py-spy itself used.

    .venv/bin/python benchmarks/bench_profiling.py [--workers 2] [--rounds 6] [--duration 10] [--rate 50]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from loadlab import stacks
from loadlab.processes import Component, free_port

USER = {"username": "bench_profiling", "email": "bench_profiling@example.com", "password": "correct horse battery"}


def start_target(workers: int, workdir: Path) -> tuple[Component, int]:
    port = free_port()
    proc = Component("target", [sys.executable, "-m", "target_app", "--port", str(port), "--workers", str(workers),
                                "--db", str(workdir / "target.db"), "--hash-profile", "default"],
                     workdir / "target.log", ready_url=f"http://127.0.0.1:{port}/healthz").start()
    proc.wait_ready()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/client_registeration", data=json.dumps(USER).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201, response.status
    return proc, port


def wrk_login(wrk: str, port: int, duration: int, connections: int, script: Path) -> tuple[float, int]:
    """(successful logins per second, logins) over `duration` seconds, `connections` clients without think time."""
    out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(script),
                          f"http://127.0.0.1:{port}/client_login"],
                         capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw failed logins; the measurement is not valid:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), int(re.search(r"(\d+) requests in", out).group(1))


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per measurement")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rate", type=int, default=stacks.DEFAULT_RATE, help="py-spy samples/s per recorder")
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("wrk not found on PATH: install it (Debian: apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="bench-profiling-") as tmp:
        workdir = Path(tmp)
        script = workdir / "login.lua"
        script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                          f"wrk.body = {json.dumps(json.dumps({k: USER[k] for k in ('username', 'password')}))}\n")
        proc, port = start_target(args.workers, workdir)
        try:
            stacks.check_attach(proc.pid)
            wrk_login(wrk, port, 3, args.connections, script)  # warm-up: every worker forked, caches filled
            results: dict[str, list[float]] = {"bare": [], "profiled": []}
            spy_cores: list[float] = []
            ratios: list[float] = []
            cpu_per_request: dict[str, list[float]] = {"bare": [], "profiled": []}
            samples = 0
            print(f"bundled target, {args.workers} workers, default hash; wrk -c{args.connections}, "
                  f"{args.duration} s per measurement; py-spy {args.rate} samples/s x 2 recorders")
            for r in range(args.rounds):
                order = ("bare", "profiled") if r % 2 == 0 else ("profiled", "bare")
                line = []
                for config in order:
                    recorder = None
                    if config == "profiled":
                        recorder = stacks.GroupRecorder(stacks.process_tree(proc.pid), workdir / "profiles",
                                                        f"round-{r}", rate=args.rate).start()
                        time.sleep(1.0)  # py-spy attached and sampling before the load starts
                        before, t0 = cpu_seconds(recorder.spy_pids()), time.monotonic()
                    target = stacks.process_tree(proc.pid)
                    target_before = cpu_seconds(target)
                    rps, done = wrk_login(wrk, port, args.duration, args.connections, script)
                    cpu_per_request[config].append((cpu_seconds(target) - target_before) / max(done, 1))
                    if recorder is not None:
                        spy_cores.append((cpu_seconds(recorder.spy_pids()) - before) / (time.monotonic() - t0))
                        found = recorder.stop()
                        samples += sum(found["cpu"].values())
                        if recorder.errors:
                            raise SystemExit(f"py-spy failed, the profiled figure is not valid: {recorder.errors}")
                    results[config].append(rps)
                    line.append(f"{config} {rps:6.1f} req/s")
                ratios.append(results["profiled"][-1] / results["bare"][-1])
                print(f"round {r + 1}: " + "   ".join(line) + f"   ratio {ratios[-1]:.3f}", flush=True)
        finally:
            proc.stop()
    bare, profiled = statistics.median(results["bare"]), statistics.median(results["profiled"])
    if samples == 0:
        raise SystemExit("py-spy recorded no on-CPU sample: the profiled runs measured nothing")
    print(f"\ncapacity, median of {args.rounds} rounds: bare {bare:.1f} req/s, profiled {profiled:.1f} req/s")
    print(f"ratio profiled/bare: {profiled / bare:.3f} of the medians, {statistics.median(ratios):.3f} median of the "
          f"rounds' ratios (goal >= 0.95)")
    spy = statistics.median(spy_cores)
    demand = {k: statistics.median(v) * 1000 for k, v in cpu_per_request.items()}
    print(f"py-spy's own CPU while profiling: {spy:.3f} cores (2 recorders per process); {samples} on-CPU samples")
    print(f"target CPU per login: bare {demand['bare']:.1f} ms, profiled {demand['profiled']:.1f} ms")
    # The same ratio from CPU accounting, which other work on a shared machine disturbs far less than
    # wall-clock throughput: a CPU-bound target on C cores serves C / D per second, and profiling leaves
    # it C - (py-spy's cores) at a demand D' per login.
    cores = min(psutil.cpu_count() or 1, args.workers)
    estimate = (demand["bare"] / demand["profiled"]) * (cores - spy) / cores
    print(f"capacity ratio from CPU accounting ({cores} cores): {estimate:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
