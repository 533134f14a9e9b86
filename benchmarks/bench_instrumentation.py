"""Throughput cost of target_app's Prometheus instrumentation, measured side by side.

Starts the same app twice, `--no-metrics` (bare) and with metrics (instrumented), same number
of gunicorn workers, and drives GET /healthz on each with wrk in alternating rounds (bare first
in even rounds, instrumented first in odd ones) so drift in machine load hits both alike.
Prints each round, the throughput of each, and the ratio instrumented/bare (goal: >= 0.95).
Then it loads both servers at once (same noise at the same moment for both) and prints that
ratio too, and the workers' CPU time per request of each server (from psutil), which a busy
machine disturbs less than wall-clock throughput.

    .venv/bin/python benchmarks/bench_instrumentation.py [--workers 2] [--rounds 6] [--duration 5]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from loadlab.processes import Component, LabError, Supervisor, free_port


def start_server(sup: Supervisor, name: str, workers: int, workdir: Path, extra: list[str]) -> tuple[Component, int]:
    port = free_port()
    server = sup.start(Component(
        name, [sys.executable, "-m", "target_app", "--port", str(port), "--workers", str(workers),
               "--db", str(workdir / f"{name}.db"), "--hash-profile", "lab", *extra],
        workdir / f"{name}.log", ready_url=f"http://127.0.0.1:{port}/healthz"))
    server.wait_ready()
    return server, port


def wrk_command(wrk_path: str, port: int, duration: int, connections: int) -> list[str]:
    return [wrk_path, "-t1", f"-c{connections}", f"-d{duration}s", f"http://127.0.0.1:{port}/healthz"]


def wrk(wrk_path: str, port: int, duration: int, connections: int) -> tuple[float, int]:
    """(requests per second, requests) of one wrk run; non-2xx answers make the run invalid."""
    out = subprocess.run(wrk_command(wrk_path, port, duration, connections),
                         capture_output=True, text=True, check=True, timeout=duration + 30).stdout
    return requests_per_second(out, port), int(re.search(r"(\d+) requests in", out).group(1))


def wrk_both(wrk_path: str, ports: list[int], duration: int, connections: int) -> list[float]:
    """Requests per second of wrk runs on all `ports` at the same time."""
    runs = [subprocess.Popen(wrk_command(wrk_path, port, duration, connections), stdout=subprocess.PIPE, text=True)
            for port in ports]
    return [requests_per_second(run.communicate(timeout=duration + 30)[0], port) for run, port in zip(runs, ports)]


def requests_per_second(out: str, port: int) -> float:
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw error answers from port {port}:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise SystemExit(f"could not read wrk output:\n{out}")
    return float(match.group(1))


def server_cpu_seconds(server: Component) -> float:
    """User + system CPU seconds used so far by the server's worker processes."""
    total = 0.0
    for child in psutil.Process(server.pid).children():
        times = child.cpu_times()
        total += times.user + times.system
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description="instrumented vs bare throughput of target_app on /healthz")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    wrk_path = shutil.which("wrk")
    if not wrk_path:
        raise SystemExit("wrk not found on PATH: install it with `apt-get install wrk`")

    workdir = Path(tempfile.mkdtemp(prefix="bench_instrumentation-"))
    sup = Supervisor()  # stops every server started, by PID group, however main() ends
    servers: dict[str, tuple[Component, int]] = {}
    try:
        servers["bare"] = start_server(sup, "bare", args.workers, workdir, ["--no-metrics"])
        servers["instrumented"] = start_server(sup, "instrumented", args.workers, workdir, [])
        for _, port in servers.values():  # warm up: imports, first connections, page cache
            wrk(wrk_path, port, 2, args.connections)
        print(f"cpus={os.cpu_count()} workers={args.workers} rounds={args.rounds} x {args.duration}s "
              f"connections={args.connections} loadavg(1m) at start={os.getloadavg()[0]:.2f}")
        results: dict[str, list[float]] = {"bare": [], "instrumented": []}
        cpu = {"bare": 0.0, "instrumented": 0.0}
        served = {"bare": 0, "instrumented": 0}
        for round_no in range(args.rounds):
            order = ["bare", "instrumented"] if round_no % 2 == 0 else ["instrumented", "bare"]
            for name in order:
                server, port = servers[name]
                cpu_before = server_cpu_seconds(server)
                rate, requests = wrk(wrk_path, port, args.duration, args.connections)
                cpu[name] += server_cpu_seconds(server) - cpu_before
                served[name] += requests
                results[name].append(rate)
            print(f"round {round_no + 1}: bare {results['bare'][-1]:8.1f} req/s   "
                  f"instrumented {results['instrumented'][-1]:8.1f} req/s   "
                  f"ratio {results['instrumented'][-1] / results['bare'][-1]:.3f}")
        bare, instrumented = (statistics.mean(results[k]) for k in ("bare", "instrumented"))
        per_round = [i / b for i, b in zip(results["instrumented"], results["bare"])]
        print(f"mean throughput: bare {bare:.1f} req/s, instrumented {instrumented:.1f} req/s")
        print(f"ratio instrumented/bare: {instrumented / bare:.3f} (of means), "
              f"{statistics.median(per_round):.3f} (median of rounds); goal >= 0.95")
        # Simultaneous runs: both servers share the CPUs under the very same noise at the same
        # moment, so the ratio is close to the ratio of CPU per request.
        together: dict[str, list[float]] = {"bare": [], "instrumented": []}
        for _ in range(max(2, args.rounds // 2)):
            rates = wrk_both(wrk_path, [servers["bare"][1], servers["instrumented"][1]], args.duration, args.connections)
            together["bare"].append(rates[0])
            together["instrumented"].append(rates[1])
        both_bare, both_instrumented = (sum(together[k]) for k in ("bare", "instrumented"))
        print(f"simultaneous runs ({len(together['bare'])} x {args.duration}s, both servers loaded at once): "
              f"bare {both_bare / len(together['bare']):.1f} req/s, "
              f"instrumented {both_instrumented / len(together['bare']):.1f} req/s, "
              f"ratio {both_instrumented / both_bare:.3f}")
        cpu_bare, cpu_instrumented = (cpu[k] / served[k] * 1e6 for k in ("bare", "instrumented"))
        print(f"worker CPU per request over the alternating rounds: bare {cpu_bare:.1f} us, "
              f"instrumented {cpu_instrumented:.1f} us, ratio bare/instrumented {cpu_bare / cpu_instrumented:.3f} "
              f"(the throughput ratio a CPU-bound server would show, little disturbed by other load)")
        print(f"loadavg(1m) at end={os.getloadavg()[0]:.2f}")
    finally:
        sup.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except LabError as exc:  # a server that did not start: its log's last lines are in the message
        raise SystemExit(str(exc)) from None
