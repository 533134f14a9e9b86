"""Throughput cost of the Prometheus instrumentation (`loadlab.instrument`, as the bundled target
uses it), measured side by side, with 1 and with 2 gunicorn workers in one run.

For each worker count, starts the target twice, `--no-metrics` (bare) and with metrics
(instrumented), same number of gunicorn workers, and drives GET /healthz on each with wrk in alternating rounds (bare first
in even rounds, instrumented first in odd ones) so drift in machine load hits both alike.
Prints each round, the throughput of each, and the ratio instrumented/bare (goal: >= 0.95), with a
95 % confidence interval from the rounds (a paired design: each round is one bare and one
instrumented run back to back, so slow drift in the machine's load cancels within a round).
Then it loads both servers at once (same noise at the same moment for both) and prints that
ratio too, and the workers' CPU time per request of each server (from psutil), which a busy
machine disturbs less than wall-clock throughput. A final table puts the worker counts side by side.

    .venv/bin/python benchmarks/bench_instrumentation.py [--workers 1 2] [--rounds 10] [--duration 3]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from loadlab.processes import Component, LabError, Supervisor, free_port
from loadlab.uncertainty import t_quantile


def ratio_interval(ratios: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(geometric mean, low, high) of per-round ratios: a t interval on their logs, exponentiated."""
    logs = [math.log(r) for r in ratios]
    mean = statistics.mean(logs)
    if len(logs) < 2:
        return math.exp(mean), math.nan, math.nan
    half = t_quantile(0.5 + level / 2, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def verdict(low: float, point: float, goal: float = 0.95) -> str:
    if low >= goal:
        return "met (the whole interval)"
    return "met by the estimate, not by the whole interval" if point >= goal else "missed"


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


def measure(args: argparse.Namespace, wrk_path: str, workers: int, workdir: Path) -> dict[str, float]:
    """Bare and instrumented servers with `workers` workers, side by side; their figures."""
    sup = Supervisor()  # stops every server started, by PID group, however this ends
    servers: dict[str, tuple[Component, int]] = {}
    try:
        servers["bare"] = start_server(sup, f"bare-w{workers}", workers, workdir, ["--no-metrics"])
        servers["instrumented"] = start_server(sup, f"instrumented-w{workers}", workers, workdir, [])
        for _, port in servers.values():  # warm up: imports, first connections, page cache
            wrk(wrk_path, port, 2, args.connections)
        print(f"\n== {workers} worker(s): cpus={os.cpu_count()} rounds={args.rounds} x {args.duration}s "
              f"connections={args.connections} loadavg(1m) at start={os.getloadavg()[0]:.2f}")
        results: dict[str, list[float]] = {"bare": [], "instrumented": []}
        cpu = {"bare": 0.0, "instrumented": 0.0}
        served = {"bare": 0, "instrumented": 0}
        cpu_per_request: dict[str, list[float]] = {"bare": [], "instrumented": []}
        for round_no in range(args.rounds):
            order = ["bare", "instrumented"] if round_no % 2 == 0 else ["instrumented", "bare"]
            for name in order:
                server, port = servers[name]
                cpu_before = server_cpu_seconds(server)
                rate, requests = wrk(wrk_path, port, args.duration, args.connections)
                used = server_cpu_seconds(server) - cpu_before
                cpu[name] += used
                served[name] += requests
                cpu_per_request[name].append(used / requests)
                results[name].append(rate)
            print(f"round {round_no + 1}: bare {results['bare'][-1]:8.1f} req/s   "
                  f"instrumented {results['instrumented'][-1]:8.1f} req/s   "
                  f"ratio {results['instrumented'][-1] / results['bare'][-1]:.3f}")
        bare, instrumented = (statistics.mean(results[k]) for k in ("bare", "instrumented"))
        per_round = [i / b for i, b in zip(results["instrumented"], results["bare"])]
        cpu_rounds = [b / i for b, i in zip(cpu_per_request["bare"], cpu_per_request["instrumented"])]
        # Simultaneous runs: both servers share the CPUs under the very same noise at the same
        # moment, so the ratio is close to the ratio of CPU per request.
        together: dict[str, list[float]] = {"bare": [], "instrumented": []}
        for _ in range(max(2, args.rounds // 2)):
            rates = wrk_both(wrk_path, [servers["bare"][1], servers["instrumented"][1]], args.duration, args.connections)
            together["bare"].append(rates[0])
            together["instrumented"].append(rates[1])
        cpu_bare, cpu_instrumented = (cpu[k] / served[k] * 1e6 for k in ("bare", "instrumented"))
        figures = {
            "bare": bare, "instrumented": instrumented, "ratio": instrumented / bare,
            "median_round_ratio": statistics.median(per_round),
            "simultaneous_ratio": sum(together["instrumented"]) / sum(together["bare"]),
            "cpu_us_bare": cpu_bare, "cpu_us_instrumented": cpu_instrumented,
            "cpu_ratio": cpu_bare / cpu_instrumented, "loadavg_end": os.getloadavg()[0],
        }
        figures["round_ratio"], figures["round_low"], figures["round_high"] = ratio_interval(per_round)
        figures["cpu_round_ratio"], figures["cpu_low"], figures["cpu_high"] = ratio_interval(cpu_rounds)
        print(f"mean throughput: bare {bare:.1f} req/s, instrumented {instrumented:.1f} req/s; "
              f"worker CPU per request: bare {cpu_bare:.1f} us, instrumented {cpu_instrumented:.1f} us")
        return figures
    finally:
        sup.stop_all()


def inprocess_cost_us(batches: int = 40, per_batch: int = 2000) -> tuple[float, float]:
    """(bare, instrumented) CPU microseconds per GET /healthz through Flask's WSGI app in this
    process, multiprocess mode on, alternating batches, the median of each: the instrumentation's
    own cost, which other load disturbs much less than a server's throughput."""
    import io
    import statistics as stats

    from loadlab.multiproc import enable_multiprocess_metrics, memory_tmp_dir
    enable_multiprocess_metrics(tempfile.mkdtemp(prefix="bench_instrumentation-mp-", dir=memory_tmp_dir()))
    from prometheus_client import CollectorRegistry

    from loadlab.instrument import instrument
    from target_app import create_app

    apps = {}
    db_dir = tempfile.mkdtemp(prefix="bench_instrumentation-db-")
    for name in ("bare", "instrumented"):
        app = create_app({"METRICS": False, "DATABASE": os.path.join(db_dir, f"{name}.db"), "HASH_PROFILE": "lab"})
        if name == "instrumented":
            instrument(app, CollectorRegistry())
        apps[name] = app.wsgi_app
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/healthz", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "SERVER_PROTOCOL": "HTTP/1.1", "QUERY_STRING": ""}
    costs: dict[str, list[float]] = {"bare": [], "instrumented": []}
    for _ in range(batches):
        for name, wsgi in apps.items():
            start = time.thread_time()
            for _ in range(per_batch):
                wsgi(dict(environ), lambda status, headers, exc_info=None: None).close()
            costs[name].append((time.thread_time() - start) / per_batch * 1e6)
    shutil.rmtree(db_dir, ignore_errors=True)
    shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    return stats.median(costs["bare"]), stats.median(costs["instrumented"])


def main() -> None:
    parser = argparse.ArgumentParser(description="instrumented vs bare throughput of target_app on /healthz")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="gunicorn worker counts to measure, one after the other (default: 1 2)")
    parser.add_argument("--rounds", type=int, default=10, help="paired rounds per worker count (default: 10)")
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run (default: 3)")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    wrk_path = shutil.which("wrk")
    if not wrk_path:
        raise SystemExit("wrk not found on PATH: install it with `apt-get install wrk`")

    workdir = Path(tempfile.mkdtemp(prefix="bench_instrumentation-"))
    try:
        figures = {w: measure(args, wrk_path, w, workdir) for w in args.workers}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    # Side by side: the ratio instrumented/bare (goal >= 0.95) with each worker count.
    print("\nworkers  bare req/s  instr. req/s  ratio (of means)  median of rounds  simultaneous  "
          "CPU/request bare/instr.  loadavg at end")
    for w, f in figures.items():
        print(f"{w:>7}  {f['bare']:10.1f}  {f['instrumented']:12.1f}  {f['ratio']:16.3f}  {f['median_round_ratio']:16.3f}  "
              f"{f['simultaneous_ratio']:12.3f}  {f['cpu_ratio']:23.3f}  {f['loadavg_end']:14.2f}")
    for w, f in figures.items():
        print(f"{w} worker(s): throughput ratio {f['round_ratio']:.3f} (95% CI {f['round_low']:.3f}-{f['round_high']:.3f}, "
              f"{args.rounds} paired rounds): {verdict(f['round_low'], f['round_ratio'])}; CPU per request "
              f"bare/instrumented {f['cpu_round_ratio']:.3f} (95% CI {f['cpu_low']:.3f}-{f['cpu_high']:.3f}): "
              f"{verdict(f['cpu_low'], f['cpu_round_ratio'])}")
    bare_us, instrumented_us = inprocess_cost_us()
    print(f"in one process (Flask's WSGI app, multiprocess mode): GET /healthz {bare_us:.1f} us bare, "
          f"{instrumented_us:.1f} us instrumented: the instrumentation costs {instrumented_us - bare_us:.1f} us of CPU "
          "a request")
    print("goal: ratio >= 0.95 with 1 and with 2 workers. Wall-clock ratios move with the machine's other load "
          "(loadavg above the CPU count means noise); CPU per request is the least disturbed figure.")


if __name__ == "__main__":
    try:
        main()
    except LabError as exc:  # a server that did not start: its log's last lines are in the message
        raise SystemExit(str(exc)) from None
