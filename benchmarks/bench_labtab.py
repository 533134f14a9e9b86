"""Cost of the Lab tab to Locust: its throughput with the tab open and refreshing vs closed, side by side.

One Locust process runs the exporter benchmark's load (50 request names, no think time, so Locust
itself is busy) against the bundled target (lab hash, 2 gunicorn workers), with the Lab plugin
loaded and `LOADLAB_RUN_DIR` pointing at a run directory where this script, in the lab's place,
writes `live.json` and the panel drawn from it (`live.html`) every 3 s, with the largest view the lab
writes (every series at its 600-point cap, 20 finished steps), so every refresh serves a new panel. Locust's own UI is "open" all the
time: /stats/requests every 2 s, as its browser page asks (those answers carry the Lab tab's rows).
The run is cut into windows that alternate between the Lab page closed and the Lab page open
(its panel fetched every 3 s, as the page does), so drift in the machine's load hits both alike.
For each window: requests completed (Locust's exporter, scraped at the window's edges) per second
and per CPU-second of the Locust process.

Prints every window, then the ratios open/closed of the medians and of the totals (goal: >= 0.98),
and how long a panel refresh and a stats request took, timed by the client.

On a shared machine the windows' throughput swings with everyone else's load, so a second part
measures the cost itself: an idle Locust (no users) answers a burst of refreshes, each with a new
live.json and live.html, and the CPU its process used beyond its idle rate (measured just before,
for as long) is divided by the refreshes: Locust's CPU per refresh of the Lab page, and per stats
request of its own UI with the Lab tab's rows added. At one refresh per 3 s that is the share of a
core the open tab takes from a saturated Locust.

    .venv/bin/python benchmarks/bench_labtab.py [--windows 20] [--window 9] [--users 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil
from bench_locust_exporter import NAMES_LOCUSTFILE, start  # the same load and process helper

from loadlab.contract.live import LIVE_FILE, LIVE_PANEL_FILE, RUN_DIR_ENV, SCHEMA, SERIES
from loadlab.live import MAX_POINTS, write_atomically
from loadlab.processes import LabError, free_port
from locust_tests.plugins import labview

REPO = Path(__file__).resolve().parent.parent
EXPORTER_IMPORT = "from locust_tests.plugins import exporter  # noqa: F401"


def biggest_view(now: float) -> dict:
    """A live view as large as the lab writes: every series at the point cap, 20 finished steps."""
    t0, span = now - 1200.0, 1200.0
    times = [round(t0 + span * i / MAX_POINTS, 2) for i in range(MAX_POINTS)]
    series = {key: [[t, round(1.0 + (i % 50) / 7, 4)] for i, t in enumerate(times)] for key in SERIES}
    steps = [{"step": i + 1, "users": 10 * (i + 1), "start": t0 + 60 * i, "rps": 4.5 * (i + 1), "p95_ms": 80.0 + i,
              "error_ratio": 0.0, "target_cpu_cores": 0.1 * i, "target_cores_available": 2.0,
              "generator_cpu_cores": 0.05 * i, "generator_cores_available": 1.0, "slo_met": True, "slo_detail": ""}
             for i in range(20)]
    summary = ["knee: ~94.4 users (first flat step 100 users, 45.42 req/s, p95 399.8 ms)",
               "break: 120 users (44.9 req/s, p95 953.7 ms, errors 0.00%): latency_p95 over the SLO",
               "capacity: 46.34 req/s", "limiting resource: target_cpu (the target used 1.89 of its 2 usable cores)",
               "first signal: throughput_plateau at 100 users"]
    return {"schema": SCHEMA, "source": "lab", "generated_at": now, "state": "running",
            "current": {"step": 21, "users": 210, "since": now - 20}, "steps": steps, "summary": summary,
            "knee": {"time": t0 + 540, "users": 94.4}, "break": {"time": t0 + 660, "users": 120},
            "series": series, "cores_available": {"target": 2.0, "generator": 1.0}, "missing": {}, "notes": [],
            "slo": {"latency_p95_ms": 500.0, "error_ratio": 0.01}, "report": None, "t0": t0, "t1": now}


def write_live(run_dir: Path) -> None:
    """What the lab writes every 3 s: the view, and the panel it draws from it (in its own process)."""
    view = biggest_view(time.time())
    write_atomically(run_dir / LIVE_PANEL_FILE, labview.panel(view))
    write_atomically(run_dir / LIVE_FILE, view)


def timed_get(url: str) -> tuple[float, bytes] | None:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
    except OSError:
        return None
    return (time.perf_counter() - started) * 1000, body


class Browser(threading.Thread):
    """Locust's UI (/stats/requests every 2 s) and the lab rewriting live.json/live.html every 3 s, all along;
    the Lab page's refresh (/lab/panel every 3 s) while `lab_open` is set."""

    def __init__(self, ui: str, run_dir: Path) -> None:
        super().__init__(daemon=True)
        self.ui, self.run_dir = ui, run_dir
        self.lab_open = threading.Event()
        self.done = threading.Event()
        self.stats_ms: list[float] = []
        self.panel_ms: list[float] = []
        self.refreshes = 0

    def run(self) -> None:
        next_stats = next_panel = time.monotonic()
        while not self.done.wait(0.05):
            now = time.monotonic()
            if now >= next_stats:
                if (got := timed_get(f"{self.ui}/stats/requests")) is not None:
                    self.stats_ms.append(got[0])
                next_stats += 2.0
            if now >= next_panel:
                write_live(self.run_dir)
                if self.lab_open.is_set() and (got := timed_get(f"{self.ui}/lab/panel")) is not None:
                    self.panel_ms.append(got[0])
                    self.refreshes += 1
                next_panel += 3.0


def cpu_per_request(cpu: psutil.Process, url: str, run_dir: Path, n: int) -> float:
    """Seconds of the process' CPU per GET `url` (a fresh live.json/live.html before each), idle rate removed."""
    def used() -> float:
        return sum(cpu.cpu_times()[:2])

    started, c0 = time.monotonic(), used()
    for _ in range(n):
        write_live(run_dir)
        if timed_get(url) is None:
            raise SystemExit(f"{url} did not answer")
    busy_s, busy_cpu = time.monotonic() - started, used() - c0
    started, c0 = time.monotonic(), used()
    while time.monotonic() - started < busy_s:  # the same time again, idle, with the same file writes
        write_live(run_dir)
        time.sleep(busy_s / n)
    idle_cpu = used() - c0
    return max(0.0, busy_cpu - idle_cpu) / n


def requests_total(exporter: str) -> float:
    got = timed_get(exporter)
    if got is None:
        raise SystemExit(f"{exporter} did not answer")
    return sum(float(line.rsplit(" ", 1)[1]) for line in got[1].decode().splitlines()
               if line.startswith("locust_requests_total{"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=20, help="windows, alternately tab closed and open (default 20)")
    parser.add_argument("--window", type=float, default=9.0, help="seconds per window (default 9: three refreshes)")
    parser.add_argument("--users", type=int, default=20, help="simulated users, no think time (default 20)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_labtab-") as tmp:
        workdir = Path(tmp)
        run_dir = workdir / "run"
        run_dir.mkdir()
        write_live(run_dir)
        print(f"live.json as large as the lab writes it: {len(json.dumps(biggest_view(time.time()))) / 1024:.0f} KiB")
        port = free_port()
        host = f"http://127.0.0.1:{port}"
        target = start("target", [sys.executable, "-m", "target_app", "--port", str(port), "--workers", "2",
                                  "--db", str(workdir / "users.db"), "--hash-profile", "lab"],
                       workdir, ready_url=host + "/healthz")
        locust = None
        try:
            target.wait_ready()
            locustfile = workdir / "with_tab.py"
            locustfile.write_text(NAMES_LOCUSTFILE.replace(
                EXPORTER_IMPORT, f"{EXPORTER_IMPORT}\nfrom locust_tests.plugins import labtab  # noqa: F401"))
            web, exporter_port = free_port(), free_port()
            ui, exporter = f"http://127.0.0.1:{web}", f"http://127.0.0.1:{exporter_port}/metrics"
            seconds = args.windows * args.window + 10
            locust = start("locust", [sys.executable, "-m", "locust", "-f", str(locustfile), "--autostart",
                                      "--autoquit", "0", "-u", str(args.users), "-r", str(args.users),
                                      "-t", f"{seconds:g}s", "--host", host, "--web-host", "127.0.0.1",
                                      "--web-port", str(web), "--exporter-port", str(exporter_port)],
                           workdir, env={"PYTHONPATH": str(REPO), "BENCH_THINK_TIME": "0", RUN_DIR_ENV: str(run_dir)},
                           ready_url=exporter)
            locust.wait_ready()
            assert locust.pid is not None
            cpu = psutil.Process(locust.pid)
            browser = Browser(ui, run_dir)
            browser.start()
            time.sleep(5)  # every user running
            print(f"{args.users} users without think time, 50 request names, {args.window:g} s windows; Locust's UI "
                  f"polled every 2 s throughout:")
            rows: dict[bool, list[tuple[float, float, float, float]]] = {False: [], True: []}
            for w in range(args.windows):
                is_open = w % 2 == 1
                browser.lab_open.set() if is_open else browser.lab_open.clear()
                refreshes = browser.refreshes
                t0, n0, c0 = time.monotonic(), requests_total(exporter), sum(cpu.cpu_times()[:2])
                time.sleep(args.window)
                t1, n1, c1 = time.monotonic(), requests_total(exporter), sum(cpu.cpu_times()[:2])
                rows[is_open].append((n1 - n0, t1 - t0, c1 - c0, browser.refreshes - refreshes))
                print(f"  window {w:2d} tab {'open  ' if is_open else 'closed'}: {(n1 - n0) / (t1 - t0):7.1f} req/s, "
                      f"{(n1 - n0) / (c1 - c0):7.1f} requests per Locust CPU-second"
                      + (f", {browser.refreshes - refreshes} refreshes" if is_open else ""), flush=True)
            browser.done.set()
            for label, rate in (("throughput (req/s)", lambda r: r[0] / r[1]),
                                ("efficiency (requests per Locust CPU-second)", lambda r: r[0] / r[2])):
                opened = statistics.median(rate(r) for r in rows[True])
                closed = statistics.median(rate(r) for r in rows[False])
                print(f"median {label}: tab open {opened:.1f}, closed {closed:.1f}, ratio {opened / closed:.3f} "
                      f"(goal >= 0.98)")
            totals = {k: [sum(r[i] for r in v) for i in range(3)] for k, v in rows.items()}
            print(f"over all windows: throughput ratio {(totals[True][0] / totals[True][1]) / (totals[False][0] / totals[False][1]):.3f}, "
                  f"efficiency ratio {(totals[True][0] / totals[True][2]) / (totals[False][0] / totals[False][2]):.3f}")
            for label, times in (("/lab/panel", browser.panel_ms), ("/stats/requests (with the tab's rows)",
                                                                    browser.stats_ms)):
                if len(times) >= 2:
                    q = statistics.quantiles(times, n=100)
                    print(f"{label}: {len(times)} requests under load, p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms")
            locust.stop()
            locust = None

            # Part 2: the cost itself, on an idle Locust (its web UI up, no users), with and without the tab.
            plain = workdir / "without_tab.py"
            plain.write_text(NAMES_LOCUSTFILE)
            cost: dict[str, float] = {}
            for name, path in (("with the tab", locustfile), ("without", plain)):
                web = free_port()
                ui = f"http://127.0.0.1:{web}"
                locust = start(f"idle-{name.split()[0]}", [
                    sys.executable, "-m", "locust", "-f", str(path), "--host", host, "--web-host", "127.0.0.1",
                    "--web-port", str(web), "--exporter-port", "0"],
                    workdir, env={"PYTHONPATH": str(REPO), "BENCH_THINK_TIME": "0", RUN_DIR_ENV: str(run_dir)},
                    ready_url=f"{ui}/")
                locust.wait_ready()
                assert locust.pid is not None
                idle = psutil.Process(locust.pid)
                timed_get(f"{ui}/stats/requests")
                cost[f"stats {name}"] = cpu_per_request(idle, f"{ui}/stats/requests", run_dir, 200)
                if name == "with the tab":
                    timed_get(f"{ui}/lab/panel")
                    cost["panel"] = cpu_per_request(idle, f"{ui}/lab/panel", run_dir, 200)
                locust.stop()
                locust = None
            panel = cost["panel"]
            rows = cost["stats with the tab"] - cost["stats without"]
            per_s = panel / 3 + rows / 2
            print(f"Locust CPU per Lab page refresh (a new panel each time): {panel * 1000:.2f} ms")
            print(f"Locust CPU per stats request of its own UI: {cost['stats with the tab'] * 1000:.2f} ms with the Lab "
                  f"tab's rows (a new live.json each time), {cost['stats without'] * 1000:.2f} ms without")
            print(f"the open tab (a refresh every 3 s, the rows every 2 s): {per_s * 100:.2f} % of a core; a saturated "
                  f"Locust keeps {1 - per_s:.4f} of its throughput (goal >= 0.98)")
        finally:
            if locust is not None:
                locust.stop()
            target.stop()
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except LabError as exc:  # a process that did not start: its log's last lines are in the message
        raise SystemExit(str(exc)) from None
