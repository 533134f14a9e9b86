"""What the target's gevent workers cost against gunicorn's sync workers, measured side by side.

Starts the same app twice with the same number of workers, once with gunicorn's `sync` worker
and once with the target's `HeaderTimeoutGeventWorker` (target_app/worker.py), and drives each
with wrk in alternating rounds (the order flips every round, so drift in machine load hits both):
- GET /healthz, the cheapest request: the worker class's own cost per request shows here, as
  workers' CPU time per request (psutil) and throughput;
- POST /client_login with the `default` hash profile: the login capacity, which the lab's
  breaking point measures. Then both servers are loaded at once, so both share the same noise.
Prints every round and the ratios gevent/sync.

    .venv/bin/python benchmarks/bench_worker_class.py [--workers 2] [--rounds 4] [--duration 5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import psutil

from loadlab.processes import Component, free_port

CLASSES = {"sync": "sync", "gevent": "target_app.worker.HeaderTimeoutGeventWorker"}
# serve() with only the worker class differing; argv: port, database, workers, worker class.
LAUNCH = ("import functools, sys\n"
          "from target_app import create_app\n"
          "from target_app.server import serve\n"
          "serve(functools.partial(create_app, {'DATABASE': sys.argv[2], 'HASH_PROFILE': 'default'}),\n"
          "      '127.0.0.1', int(sys.argv[1]), int(sys.argv[3]), gunicorn_options={'worker_class': sys.argv[4]})\n")
USER = {"username": "bench_user", "email": "bench_user@example.com", "password": "correct horse battery"}
REPO_ROOT = Path(__file__).resolve().parent.parent


def start_server(name: str, workers: int, workdir: Path) -> tuple[Component, int]:
    port = free_port()
    proc = Component(name, [sys.executable, "-c", LAUNCH, str(port), str(workdir / f"{name}.db"), str(workers),
                            CLASSES[name]], workdir / f"{name}.log", cwd=REPO_ROOT,
                     ready_url=f"http://127.0.0.1:{port}/healthz").start()
    proc.wait_ready()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/client_registeration", data=json.dumps(USER).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
    return proc, port


def wrk_command(port: int, path: str, duration: int, connections: int, script: Path | None) -> list[str]:
    extra = ["-s", str(script)] if script else []
    return ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", *extra,
            f"http://127.0.0.1:{port}{path}"]


def requests_per_second(out: str, port: int) -> tuple[float, int]:
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors from port {port}: the figures would be wrong:\n{out}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    if not rate or not count:
        raise SystemExit(f"could not read wrk output:\n{out}")
    return float(rate.group(1)), int(count.group(1))


def workers_cpu_seconds(proc: Component) -> float:
    return sum(t.user + t.system for t in (c.cpu_times() for c in psutil.Process(proc.pid).children()))


def alternate(servers: dict, path: str, rounds: int, duration: int, connections: int,
              script: Path | None) -> dict[str, dict[str, float]]:
    rates: dict[str, list[float]] = {name: [] for name in servers}
    cpu = {name: 0.0 for name in servers}
    served = {name: 0 for name in servers}
    for round_no in range(rounds):
        order = list(servers) if round_no % 2 == 0 else list(reversed(servers))
        for name in order:
            proc, port = servers[name]
            before = workers_cpu_seconds(proc)
            out = subprocess.run(wrk_command(port, path, duration, connections, script), capture_output=True,
                                 text=True, check=True, timeout=duration + 30).stdout
            rate, count = requests_per_second(out, port)
            cpu[name] += workers_cpu_seconds(proc) - before
            served[name] += count
            rates[name].append(rate)
        print(f"  round {round_no + 1}: " + "   ".join(f"{n} {rates[n][-1]:8.1f} req/s" for n in servers)
              + f"   ratio gevent/sync {rates['gevent'][-1] / rates['sync'][-1]:.3f}")
    return {name: {"rate": statistics.mean(rates[name]), "cpu_ms": cpu[name] / served[name] * 1000}
            for name in servers}


def main() -> None:
    parser = argparse.ArgumentParser(description="gevent (target) vs sync gunicorn workers, side by side")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found on PATH: install it with `apt-get install wrk`")
    workdir = Path(tempfile.mkdtemp(prefix="bench_worker_class-"))
    script = workdir / "login.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = '{json.dumps({k: USER[k] for k in ('username', 'password')})}'\n")
    servers: dict[str, tuple[Component, int]] = {}
    try:
        for name in CLASSES:
            servers[name] = start_server(name, args.workers, workdir)
        print(f"cpus={os.cpu_count()} workers={args.workers} rounds={args.rounds} x {args.duration}s "
              f"loadavg(1m) at start={os.getloadavg()[0]:.2f}")
        print("GET /healthz, 16 connections:")
        health = alternate(servers, "/healthz", args.rounds, args.duration, 16, None)
        print(f"  mean: sync {health['sync']['rate']:.1f} req/s, gevent {health['gevent']['rate']:.1f} req/s, "
              f"ratio {health['gevent']['rate'] / health['sync']['rate']:.3f}; worker CPU per request: "
              f"sync {health['sync']['cpu_ms'] * 1000:.0f} us, gevent {health['gevent']['cpu_ms'] * 1000:.0f} us")
        print("POST /client_login (default hash), 8 connections:")
        login = alternate(servers, "/client_login", args.rounds, args.duration, 8, script)
        print(f"  mean: sync {login['sync']['rate']:.1f} req/s, gevent {login['gevent']['rate']:.1f} req/s, "
              f"ratio {login['gevent']['rate'] / login['sync']['rate']:.3f}; worker CPU per login: "
              f"sync {login['sync']['cpu_ms']:.1f} ms, gevent {login['gevent']['cpu_ms']:.1f} ms")
        runs = [subprocess.Popen(wrk_command(port, "/client_login", args.duration * 2, 8, script),
                                 stdout=subprocess.PIPE, text=True) for _, port in servers.values()]
        together = [requests_per_second(run.communicate(timeout=args.duration * 2 + 30)[0], port)[0]
                    for run, (_, port) in zip(runs, servers.values())]
        print(f"  both loaded at once ({args.duration * 2}s): sync {together[0]:.1f} req/s, gevent {together[1]:.1f} "
              f"req/s, ratio {together[1] / together[0]:.3f}")
        print(f"loadavg(1m) at end={os.getloadavg()[0]:.2f}")
    finally:
        for proc, _ in servers.values():
            proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
