"""Cost of the Prometheus exporter inside Locust, and how much load one Locust process can make,
measured side by side in one run.

The load is a locustfile with 50 distinct request names (the worst case for the exporter, which
walks every name's response-time dict at each render) that imports the exporter like any user's
own locustfile would, against the bundled target (lab hash, 2 gunicorn workers), with no think
time, so Locust itself is busy.
1. Throughput: the same target and users in alternating rounds with the exporter on and scraped
   once a second, and with it off (--exporter-port 0). Prints each round and the ratios on/off of
   the median throughputs and of the median requests per CPU-second of the Locust process, its
   children (the exporter's server process) included, from when all users run to shortly before
   the end, so without start-up costs (goal: >= 0.98). On a shared, noisy machine the CPU-based
   ratio is the steadier of the two. Each exporter run also prints what its renders cost (the
   exporter logs it at exit).
2. Scrape time: the same locustfile runs while /metrics is scraped repeatedly, once with 1 s think
   time (a paced load, as in the scenarios) and once with none (Locust saturated); prints the
   p50/p99 of one scrape, timed by the client, HTTP included (goal: p99 <= 20 ms). Beside it, the
   same server process with the same body and no Locust behind it, scraped alternately: the floor
   this machine sets at that moment (a hypervisor that takes a vCPU for 20 ms shows there too).
3. Generator efficiency: the requests per second one Locust process sustains on the target's
   GET /healthz in open-model mode (a rate hunt, `--step-rate`, uniform arrivals, `--users` request
   slots: the highest step it sustained, and what it achieved at the first one it did not), beside
   the closed model (`--users` users without think time) and wrk (one thread, as many connections),
   in alternating rounds; prints each with the generator's CPU (share of one core, requests per
   CPU-second). wrk must be installed (`apt-get install wrk`, or scripts/system-deps.sh), or pass
   --skip-generator.
Prints the load average at the start and the end: the figures are only as quiet as the machine.

    .venv/bin/python benchmarks/bench_locust_exporter.py [--rounds 5] [--seconds 10] [--users 20]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import psutil

from loadlab.processes import Component, LabError, free_port
from locust_tests.plugins.metrics_server import READY, encode_frame

REPO = Path(__file__).resolve().parent.parent
METRICS_SERVER = REPO / "locust_tests" / "plugins" / "metrics_server.py"

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

# One request name on GET /healthz; the open-model plugin is inactive unless --step-rate/--arrival-rate.
HEALTHZ_LOCUSTFILE = '''
from locust import FastHttpUser, task
from locust_tests.plugins import arrivals, shapes  # noqa: F401  (the open model and the hunt's options)

class Healthz(FastHttpUser):
    @task
    def healthz(self):
        self.client.get("/healthz", name="/healthz")
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


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def tree_cpu_seconds(process: psutil.Process) -> float:
    """CPU seconds of `process` and its children (the exporter's server process)."""
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += cpu_seconds(member)
        except psutil.Error:
            pass
    return total


def run_round(host: str, workdir: Path, name: str, seconds: float, users: int, exporter: bool) -> tuple[float, float]:
    """(requests/s, requests per CPU-second of the Locust process and its children) of one run.
    The CPU is measured once all users run until shortly before the end, so start-up (imports,
    starting the exporter's server process) is left out: the steady cost is what a long run pays."""
    port = free_port() if exporter else 0
    log = workdir / f"{name}.log"
    run = locust(host, workdir, name, seconds, users, port)
    assert run.proc is not None
    process = psutil.Process(run.proc.pid)
    scrapes = 0
    spawned: tuple[float, float] | None = None
    core: float | None = None
    next_scrape = time.monotonic()
    try:
        while run.poll() is None:
            now = time.monotonic()
            if spawned is None and "All users spawned" in log.read_text(errors="replace"):
                spawned = (now, tree_cpu_seconds(process))
            elif spawned is not None and core is None and now - spawned[0] >= max(1.0, seconds - 3):
                core = (tree_cpu_seconds(process) - spawned[1]) / (now - spawned[0])
            # scrape once a second, as a Prometheus with a 1 s interval would
            if exporter and now >= next_scrape:
                next_scrape += 1
                if scrape_ms(f"http://127.0.0.1:{port}/metrics") is not None:
                    scrapes += 1
            time.sleep(0.1)
    finally:
        run.stop()
    if run.poll() != 0 or core is None:
        raise SystemExit(f"locust run {name} exited with {run.poll()}"
                         + ("" if core is not None else " before its CPU could be measured") + f"; see {log}")
    rps = float(aggregated(workdir, name)["Requests/s"])
    per_cpu = rps / core
    rendering = ""
    if exporter:  # the exporter logs the CPU its renders took: a direct, low-noise figure of its cost
        match = re.search(r"exporter: (\d+) renders took ([\d.]+) s of CPU", log.read_text(errors="replace"))
        if not match:
            raise SystemExit(f"locust run {name}: no render summary from the exporter in {log}")
        renders, render_cpu = int(match.group(1)), float(match.group(2))
        rendering = (f"  ({scrapes} scrapes; {renders} renders, {1000 * render_cpu / renders:.1f} ms of CPU each, "
                     f"{100 * render_cpu / seconds / core:.1f} % of Locust's CPU)")
    print(f"  {name:>14}: {rps:8.1f} req/s, {per_cpu:7.1f} requests per Locust CPU-second{rendering}", flush=True)
    return rps, per_cpu


def bare_metrics_server(body: bytes) -> tuple[subprocess.Popen, str]:
    """The exporter's own server process (metrics_server.py) serving `body`, with no Locust behind it:
    what a scrape costs on this machine at this moment, whatever Locust does."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(64)
    process = subprocess.Popen([sys.executable, "-I", "-S", str(METRICS_SERVER), str(listening.fileno())],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(listening.fileno(),))
    url = f"http://127.0.0.1:{listening.getsockname()[1]}/metrics"
    listening.close()
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(encode_frame(body))
    process.stdin.flush()
    if process.stdout.read(len(READY)) != READY:
        raise SystemExit("the bare metrics server did not start")
    return process, url


def scrape_timing(host: str, workdir: Path, name: str, seconds: float, users: int,
                  think_time: float) -> tuple[list[float], list[float]]:
    """Times of one scrape of the exporter, and of the same server process with no Locust behind it
    (same body), scraped alternately so the machine's hiccups hit both alike. Which goes first after
    each pause alternates too: on an idle VM the first request after a pause pays for waking it."""
    port = free_port()
    run = locust(host, workdir, name, seconds, users, port, think_time)
    url = f"http://127.0.0.1:{port}/metrics"
    times: list[float] = []
    floor: list[float] = []
    bare: subprocess.Popen | None = None
    try:
        run.wait_ready()
        time.sleep(min(5.0, seconds / 3))  # let all 50 names appear with a spread of latencies
        with urllib.request.urlopen(url, timeout=5) as response:
            bare, bare_url = bare_metrics_server(response.read())
        pair = ((url, times), (bare_url, floor))
        while run.poll() is None:
            for target, into in pair:
                ms = scrape_ms(target)
                if ms is not None:
                    into.append(ms)
            pair = pair[::-1]
            time.sleep(0.05)
    finally:
        run.stop()
        if bare is not None and bare.stdin is not None:
            bare.stdin.close()  # the end of its frames: it exits
            bare.wait(timeout=10)
    if len(times) < 20:
        raise SystemExit(f"only {len(times)} scrapes succeeded; see {workdir / (name + '.log')}")
    return times, floor


def healthz_locustfile(workdir: Path) -> Path:
    path = workdir / "healthz.py"
    path.write_text(HEALTHZ_LOCUSTFILE)
    return path


def locust_closed_healthz(host: str, workdir: Path, name: str, seconds: float, users: int) -> tuple[float, float]:
    """(requests/s, share of one core) of one Locust process, closed model, on GET /healthz. The CPU
    share is taken once all users run until shortly before the end, so start-up is left out."""
    log = workdir / f"{name}.log"
    run = start(name, [sys.executable, "-m", "locust", "-f", str(healthz_locustfile(workdir)), "--headless",
                       "--only-summary", "-u", str(users), "-r", str(users), "-t", f"{seconds:g}s", "--host", host,
                       "--csv", str(workdir / name)], workdir, env={"PYTHONPATH": str(REPO)})
    try:
        assert run.proc is not None
        process = psutil.Process(run.proc.pid)
        deadline = time.monotonic() + 30
        while "All users spawned" not in log.read_text(errors="replace"):
            if run.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"locust run {name} did not spawn its users; see {log}")
            time.sleep(0.05)
        cpu0, wall0 = cpu_seconds(process), time.monotonic()
        time.sleep(max(1.0, seconds - 3))
        core = (cpu_seconds(process) - cpu0) / (time.monotonic() - wall0)
        run.proc.wait(timeout=seconds + 30)
    finally:
        run.stop()
    row = aggregated(workdir, name)
    if run.poll() != 0 or int(row["Failure Count"]):
        raise SystemExit(f"locust run {name} exited with {run.poll()} and {row['Failure Count']} failures; see {log}")
    return float(row["Requests/s"]), core


STEP_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\].*rate step (\d+): offered ([\d.]+)/s "
                       r"\(([\d.]+) arrivals/s scheduled\), achieved ([\d.]+) req/s, late (\d+), dropped (\d+).* -> "
                       r"(sustained|NOT SUSTAINED)", re.M)


def locust_open_healthz(host: str, workdir: Path, name: str, users: int, step_rate: float, max_rate: float,
                        step_s: float) -> tuple[float, float, float, float]:
    """One Locust process's rate hunt on GET /healthz (uniform arrivals, `users` request slots):
    (highest sustained rate, its share of one core over that step's hold, requests per CPU-second
    there, throughput achieved at the first step not sustained). The hunt judges each step as the
    verdict does (throughput within 5 % of the arrivals, none dropped, latency not growing, SLO)."""
    log = workdir / f"{name}.log"
    run = start(name, [sys.executable, "-m", "locust", "-f", str(healthz_locustfile(workdir)), "--headless",
                       "--only-summary", "--host", host, "--step-rate", f"{step_rate:g}", "--max-rate",
                       f"{max_rate:g}", "--step-time", f"{step_s:g}s", "--max-concurrency", str(users),
                       "--arrivals", "uniform", "--csv", str(workdir / name)],
                workdir, env={"PYTHONPATH": str(REPO)})
    cpu: list[tuple[float, float]] = []  # (epoch seconds, CPU seconds of the Locust process so far)
    try:
        assert run.proc is not None
        process = psutil.Process(run.proc.pid)
        deadline = time.monotonic() + (max_rate / step_rate + 2) * step_s + 60
        while run.poll() is None and time.monotonic() < deadline:
            try:
                cpu.append((time.time(), cpu_seconds(process)))
            except psutil.Error:
                break
            time.sleep(0.25)
    finally:
        run.stop()
    steps = [(datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp(), float(m[3]), float(m[5]), m[8] == "sustained")
             for m in STEP_LINE.finditer(log.read_text(errors="replace"))]
    sustained = [step for step in steps if step[3]]
    broken = [step for step in steps if not step[3]]
    if not sustained or not broken:
        raise SystemExit(f"locust run {name}: the hunt {'sustained no step' if not sustained else 'never broke'} "
                         f"(step {step_rate:g}/s up to {max_rate:g}/s); see {log}")
    top = max(sustained, key=lambda step: step[1])
    # CPU over the step's second half (its log line comes at the step's end): its steady part.
    ended, begun = top[0], top[0] - step_s / 2
    inside = [c for c in cpu if begun <= c[0] <= ended]
    if len(inside) < 2:
        raise SystemExit(f"locust run {name}: too few CPU samples over the {top[1]:g}/s step")
    core = (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
    return top[1], core, top[2] / core, broken[0][2]


def wrk_healthz(wrk: str, host: str, workdir: Path, name: str, seconds: float,
                connections: int) -> tuple[float, float]:
    """(requests/s, share of one core) of one wrk run on GET /healthz (one thread, as Locust has one)."""
    log = workdir / f"{name}.log"
    run = start(name, [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", f"{host}/healthz"], workdir)
    try:
        assert run.proc is not None
        _, status, usage = os.wait4(run.proc.pid, 0)  # wait4: the exit status and the CPU wrk used
        run.proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        run.stop()
    out = log.read_text()
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if run.poll() != 0 or not match or "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk run {name} failed or saw errors (exit {run.poll()}):\n{out}")
    return float(match.group(1)), (usage.ru_utime + usage.ru_stime) / seconds


def generator_efficiency(wrk: str, host: str, workdir: Path, rounds: int, seconds: float, users: int,
                         step_rate: float, max_rate: float, step_s: float) -> None:
    print(f"generator efficiency on GET /healthz: {users} request slots (Locust open model: rate hunt +{step_rate:g}/s "
          f"per {step_s:g} s step, uniform arrivals), {users} users without think time (Locust closed model), "
          f"{users} connections (wrk, one thread), {seconds:g} s runs:", flush=True)
    runs: dict[str, list[tuple[float, float]]] = {"locust open": [], "locust closed": [], "wrk": []}
    ceilings: list[float] = []
    tools = list(runs)
    for r in range(rounds):
        for tool in (tools if r % 2 == 0 else tools[::-1]):  # alternate, so drift hits all alike
            name = f"g{r}-{tool.replace(' ', '-')}"
            extra = ""
            if tool == "locust open":
                rps, core, _, ceiling = locust_open_healthz(host, workdir, name, users, step_rate, max_rate, step_s)
                ceilings.append(ceiling)
                extra = f"  (highest step sustained; {ceiling:.0f} req/s achieved at the first not sustained)"
            elif tool == "locust closed":
                rps, core = locust_closed_healthz(host, workdir, name, seconds, users)
            else:
                rps, core = wrk_healthz(wrk, host, workdir, name, seconds, users)
            runs[tool].append((rps, core))
            print(f"  {name:>16}: {rps:8.1f} req/s, generator CPU {core * 100:5.1f} % of one core, "
                  f"{rps / core:8.0f} requests per CPU-second{extra}", flush=True)
    medians: dict[str, tuple[float, float, float]] = {}
    for tool, results in runs.items():
        medians[tool] = (statistics.median(x[0] for x in results), statistics.median(x[1] for x in results),
                         statistics.median(x[0] / x[1] for x in results))
        rps, core, per_cpu = medians[tool]
        print(f"median {tool}: {rps:.1f} req/s, {core * 100:.0f} % of one core, {per_cpu:.0f} requests per "
              f"CPU-second", flush=True)
        if core < 0.9:  # then something else set the pace: say so rather than call it a ceiling
            print(f"  {tool} used {core * 100:.0f} % of one core: it was not the limit here (the target and "
                  f"whatever else shares the machine were), so its req/s is a lower bound of its ceiling", flush=True)
    (open_rps, _, open_per_cpu), (wrk_rps, _, wrk_per_cpu) = medians["locust open"], medians["wrk"]
    print(f"one Locust process, open model / wrk: throughput {open_rps / wrk_rps:.3f} ({open_rps:.1f} vs "
          f"{wrk_rps:.1f} req/s); requests per generator CPU-second {open_per_cpu / wrk_per_cpu:.3f} "
          f"({open_per_cpu:.0f} vs {wrk_per_cpu:.0f}); achieved while overloaded: median "
          f"{statistics.median(ceilings):.0f} req/s. One Locust process at a full core would sustain about "
          f"{open_per_cpu:.0f} arrivals/s on /healthz: add workers (--processes, --workers) above that", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="pairs of runs, exporter on/off (default 5)")
    parser.add_argument("--seconds", type=float, default=10, help="length of each run (default 10)")
    parser.add_argument("--users", type=int, default=20, help="simulated users, no think time (default 20)")
    parser.add_argument("--step-rate", type=float, default=100,
                        help="generator efficiency: the open-model hunt's step, arrivals/s (default 100)")
    parser.add_argument("--max-rate", type=float, default=6000, help="... its last step (default 6000)")
    parser.add_argument("--step-time", type=float, default=5, help="... and its seconds per step (default 5)")
    parser.add_argument("--skip-generator", action="store_true",
                        help="leave out the generator-efficiency comparison with wrk")
    parser.add_argument("--only-generator", action="store_true", help="run the generator-efficiency part alone")
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if not wrk and not args.skip_generator:
        raise SystemExit("wrk not found on PATH: install it (apt-get install wrk), or pass --skip-generator")
    print(f"cpus={os.cpu_count()} load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
          flush=True)

    with tempfile.TemporaryDirectory(prefix="bench_locust_exporter-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        host = f"http://127.0.0.1:{port}"
        target = start("target", [sys.executable, "-m", "target_app", "--port", str(port), "--workers", "2",
                                  "--db", str(workdir / "users.db"), "--hash-profile", "lab"],
                       workdir, ready_url=host + "/healthz")
        try:
            target.wait_ready()
            if not args.only_generator:
                exporter_figures(host, workdir, args.rounds, args.seconds, args.users)
            if wrk and not args.skip_generator:
                generator_efficiency(wrk, host, workdir, max(2, args.rounds // 2 + 1), args.seconds, args.users,
                                     args.step_rate, args.max_rate, args.step_time)
        finally:
            target.stop()
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    return 0


def exporter_figures(host: str, workdir: Path, rounds: int, seconds: float, users: int) -> None:
    print(f"throughput, 50 request names, {users} users without think time, {seconds:g} s per run:")
    on: list[tuple[float, float]] = []
    off: list[tuple[float, float]] = []
    for r in range(rounds):
        # Alternate which goes first, so drift in machine load hits both alike.
        order = (True, False) if r % 2 == 0 else (False, True)
        for exporter in order:
            name = f"r{r}-{'exporter' if exporter else 'no-exporter'}"
            (on if exporter else off).append(run_round(host, workdir, name, seconds, users,
                                                       exporter))
    for i, what in ((0, "throughput (req/s)"), (1, "efficiency (requests per Locust CPU-second)")):
        with_exporter = statistics.median(x[i] for x in on)
        without = statistics.median(x[i] for x in off)
        # Each round's two runs are back to back, so their ratio cancels slow drift in what else the
        # machine does; its median is the steadier figure when single runs swing.
        pairs = sorted(a[i] / b[i] for a, b in zip(on, off))
        print(f"median {what}: with exporter scraped 1/s {with_exporter:.1f}, without {without:.1f}, "
              f"ratio {with_exporter / without:.3f}; median of the {len(pairs)} rounds' ratios "
              f"{statistics.median(pairs):.3f} (each {' '.join(f'{x:.3f}' for x in pairs)}) (goal >= 0.98)", flush=True)

    # The loop renders the exposition and a separate process serves it: measure one scrape under
    # a paced load (1 s think time, as in the scenarios) and under the saturating one above.
    for label, think in (("paced load, 1 s think time", 1.0), ("saturating load, no think time", 0.0)):
        times, floor = scrape_timing(host, workdir, f"scrape-{think:g}", max(20.0, seconds * 2), users,
                                     think)
        q, f = statistics.quantiles(times, n=100), statistics.quantiles(floor, n=100)
        print(f"/metrics with 50 request names, {label}: {len(times)} scrapes, p50 {q[49]:.1f} ms, "
              f"p99 {q[98]:.1f} ms (goal p99 <= 20 ms); the same server with no Locust behind it, scraped "
              f"alternately: p50 {f[49]:.1f} ms, p99 {f[98]:.1f} ms (this machine's floor)", flush=True)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except LabError as exc:  # a process that did not start: its log's last lines are in the message
        raise SystemExit(str(exc)) from None
