"""Cost of the Prometheus exporter inside Locust, measured side by side in one run.

The load is a locustfile with 50 distinct request names (the worst case for the exporter, which
walks every name's response-time dict at each scrape) that imports the exporter like any user's
own locustfile would, against the bundled target (lab hash, 2 gunicorn workers), with no think
time, so Locust itself is busy.
1. Throughput: the same target and users in alternating rounds with the exporter on and scraped
   once a second, and with it off (--exporter-port 0). Prints each round and the ratios on/off of
   the median throughputs and of the median requests per CPU-second of the Locust process (goal:
   >= 0.98). On a shared, noisy machine the CPU-based ratio is the steadier of the two.
2. Scrape time: the same locustfile runs while /metrics is scraped repeatedly, once with 1 s think
   time (a paced load, as in the scenarios) and once with none (Locust saturated); prints the
   p50/p99 of one scrape, timed by the client, HTTP included (goal: p99 <= 20 ms).

    .venv/bin/python benchmarks/bench_locust_exporter.py [--rounds 3] [--seconds 10] [--users 20]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from loadlab.processes import Component, LabError, free_port

REPO = Path(__file__).resolve().parent.parent

NAMES_LOCUSTFILE = '''
import os
import random

from locust import FastHttpUser, constant, task
from locust_tests.plugins import exporter  # noqa: F401  (the exporter, as in any user's locustfile)

class FiftyNames(FastHttpUser):
    wait_time = constant(float(os.environ["BENCH_THINK_TIME"]))

    @task
    def call(self):
        # 50 request names (as 50 routes would give); mixed endpoints give mixed latencies.
        n = random.randrange(50)
        if n % 2:
            self.client.get("/healthz", name=f"/route{n:02d}")
        else:
            with self.client.post("/client_login", json={"username": "nobody", "password": "wrong-password"},
                                  name=f"/route{n:02d}", catch_response=True) as response:
                if response.status_code == 401:  # the expected answer: a hash was checked
                    response.success()
'''


def start(name: str, args: list[str], workdir: Path, env: dict[str, str] | None = None,
          ready_url: str | None = None) -> Component:
    """A process in its own session, its output in `workdir/<name>.log`; the caller stops it."""
    return Component(name, args, workdir / f"{name}.log", env={**os.environ, **(env or {})}, cwd=REPO,
                     ready_url=ready_url).start()


def scrape_ms(url: str) -> float | None:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
    except OSError:
        return None
    return (time.perf_counter() - started) * 1000


def locust(host: str, workdir: Path, name: str, seconds: float, users: int, exporter_port: int,
           think_time: float = 0.0) -> Component:
    locustfile = workdir / "fifty_names.py"
    if not locustfile.exists():
        locustfile.write_text(NAMES_LOCUSTFILE)
    return start(name, [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--only-summary",
                        "-u", str(users), "-r", str(users), "-t", f"{seconds:g}s", "--host", host,
                        "--csv", str(workdir / name), "--exporter-port", str(exporter_port)],
                 workdir, env={"PYTHONPATH": str(REPO), "BENCH_THINK_TIME": str(think_time)},
                 ready_url=f"http://127.0.0.1:{exporter_port}/metrics" if exporter_port else None)


def aggregated(workdir: Path, name: str) -> dict[str, str]:
    with open(workdir / f"{name}_stats.csv", newline="") as handle:
        return next(r for r in csv.DictReader(handle) if r["Name"] == "Aggregated")


def run_round(host: str, workdir: Path, name: str, seconds: float, users: int, exporter: bool) -> tuple[float, float]:
    """(requests/s, requests per CPU-second of the Locust process) of one run."""
    port = free_port() if exporter else 0
    run = locust(host, workdir, name, seconds, users, port)
    proc = run.proc
    scrapes = 0
    try:
        while True:
            # wait4 instead of poll: it also returns the CPU time the Locust process used.
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            # scrape once a second, as a Prometheus with a 1 s interval would
            if exporter and scrape_ms(f"http://127.0.0.1:{port}/metrics") is not None:
                scrapes += 1
            time.sleep(1)
    finally:
        run.stop()
    if proc.returncode != 0:
        raise SystemExit(f"locust run {name} exited with {proc.returncode}; see {workdir / (name + '.log')}")
    row = aggregated(workdir, name)
    rps = float(row["Requests/s"])
    per_cpu = int(row["Request Count"]) / (usage.ru_utime + usage.ru_stime)
    print(f"  {name:>14}: {rps:8.1f} req/s, {per_cpu:7.1f} requests per Locust CPU-second"
          + (f"  ({scrapes} scrapes)" if exporter else ""), flush=True)
    return rps, per_cpu


def scrape_timing(host: str, workdir: Path, name: str, seconds: float, users: int, think_time: float) -> list[float]:
    port = free_port()
    run = locust(host, workdir, name, seconds, users, port, think_time)
    url = f"http://127.0.0.1:{port}/metrics"
    times: list[float] = []
    try:
        run.wait_ready()
        time.sleep(min(5.0, seconds / 3))  # let all 50 names appear with a spread of latencies
        while run.poll() is None:
            ms = scrape_ms(url)
            if ms is not None:
                times.append(ms)
            time.sleep(0.05)
    finally:
        run.stop()
    if len(times) < 20:
        raise SystemExit(f"only {len(times)} scrapes succeeded; see {workdir / (name + '.log')}")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="pairs of runs, exporter on/off (default 5)")
    parser.add_argument("--seconds", type=float, default=10, help="length of each run (default 10)")
    parser.add_argument("--users", type=int, default=20, help="simulated users, no think time (default 20)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_locust_exporter-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        host = f"http://127.0.0.1:{port}"
        target = start("target", [sys.executable, "-m", "target_app", "--port", str(port), "--workers", "2",
                                  "--db", str(workdir / "users.db"), "--hash-profile", "lab"],
                       workdir, ready_url=host + "/healthz")
        try:
            target.wait_ready()
            print(f"throughput, 50 request names, {args.users} users without think time, {args.seconds:g} s per run:")
            on: list[tuple[float, float]] = []
            off: list[tuple[float, float]] = []
            for r in range(args.rounds):
                # Alternate which goes first, so drift in machine load hits both alike.
                order = (True, False) if r % 2 == 0 else (False, True)
                for exporter in order:
                    name = f"r{r}-{'exporter' if exporter else 'no-exporter'}"
                    (on if exporter else off).append(run_round(host, workdir, name, args.seconds, args.users,
                                                               exporter))
            for i, what in ((0, "throughput (req/s)"), (1, "efficiency (requests per Locust CPU-second)")):
                with_exporter = statistics.median(x[i] for x in on)
                without = statistics.median(x[i] for x in off)
                print(f"median {what}: with exporter scraped 1/s {with_exporter:.1f}, without {without:.1f}, "
                      f"ratio {with_exporter / without:.3f} (goal >= 0.98)", flush=True)

            # A Prometheus scrape is answered by Locust's event loop between requests: measure it under
            # a paced load (1 s think time, as in the scenarios) and under the saturating one above.
            for label, think in (("paced load, 1 s think time", 1.0), ("saturating load, no think time", 0.0)):
                times = scrape_timing(host, workdir, f"scrape-{think:g}", max(20.0, args.seconds * 2), args.users,
                                      think)
                q = statistics.quantiles(times, n=100)
                print(f"/metrics with 50 request names, {label}: {len(times)} scrapes, p50 {q[49]:.1f} ms, "
                      f"p99 {q[98]:.1f} ms (goal p99 <= 20 ms)", flush=True)
        finally:
            target.stop()
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except LabError as exc:  # a process that did not start: its log's last lines are in the message
        raise SystemExit(str(exc)) from None
