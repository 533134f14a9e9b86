"""Benchmark: how the step hunt's cost grows with the knee, adaptive against fixed steps.

For ground-truth servers whose knee is known (tests/loadlab/ground_truth_app.py: W sleeping
workers of service time S, users thinking Z, so X = W/S and N* = W(S+Z)/S) at about 25, 50 and
100 users, the script runs the real `loadlab run login-step --host ...` three ways, one after the
other on the same server:

  adaptive      the default hunt (x2 while linear, refine around the knee, confirm the break)
  fixed +10     today's default equal steps of 10 users
  fixed +B      equal steps as fine as the adaptive hunt's bracket around its knee (B users): the
                fixed hunt that resolves the knee as precisely

and prints, for each, the users of every step in the order they ran, the number of steps, the
hunt's own time (Locust's first loaded second to its last), the whole command's wall time, and the
verdict's knee and capacity against the truth; then the adaptive hunt's time as a fraction of each
fixed hunt's. The truth of each run is what its server served (tests/loadlab/served.py): X = W/D with
D the server's own mean time per login (S plus what a busy host adds), N* = X (R0 + Z); the nominal
W/S and W(S+Z)/S are printed beside it. All three share the step hold (--step-time, default 5 s), so the times compare the
hunts, not the holds. Z is 1.0 s so that even the largest knee needs only 100 req/s, which one
Locust process on a shared 2-core machine generates without running out of CPU.

    .venv/bin/python benchmarks/bench_hunt.py [--knees 25,50,100] [--step-time 5] [--no-fine]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the ground truth's helpers live in tests/loadlab

from loadlab.history import read_stats_history  # noqa: E402
from loadlab.processes import Component, free_port  # noqa: E402
from tests.loadlab.served import ServedTruth, served_truth  # noqa: E402

SERVICE_MS = 160.0
THINK_S = 1.0
# Knee (users) -> workers: N* = W (S + Z) / S = 7.25 W.
WORKERS = {25: 4, 50: 8, 100: 16}


@dataclass
class Hunt:
    label: str
    users: list[int]
    hunt_s: float
    wall_s: float
    knee: float | None
    capacity: float | None
    brk: int | None
    truth: ServedTruth

    def bracket(self) -> int | None:
        """Users between the measured steps on either side of the verdict's knee."""
        if self.knee is None:
            return None
        below = [u for u in self.users if u < self.knee]
        above = [u for u in self.users if u >= self.knee]
        return min(above) - max(below) if below and above else None


def start_server(workers: int, tmp: Path) -> tuple[Component, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = Component(f"ground-truth-{workers}", [sys.executable, "-m", "tests.loadlab.ground_truth_app", "--port",
                                                   str(port), "--workers", str(workers), "--service-ms",
                                                   f"{SERVICE_MS:g}", "--mode", "sleep"],
                       tmp / f"ground-truth-{workers}.log", cwd=REPO, ready_url=f"{url}/healthz").start()
    server.wait_ready()
    return server, url


def hunt(label: str, server: Component, url: str, workers: int, out: Path, step_time: float,
         locust_args: list[str], n_star: float) -> Hunt:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LOGIN_USERS": "20",
           "MIN_WAIT_TIME": str(round(1000 * THINK_S) - 100), "MAX_WAIT_TIME": str(round(1000 * THINK_S) + 100)}
    args = [sys.executable, "-m", "loadlab.cli", "run", "login-step", "--host", url, "--target-pid", str(server.pid),
            "--target-workers", str(workers), "--prometheus", "off", "--out", str(out), "--",
            "--step-time", f"{step_time:g}s", "--max-users", "400", *locust_args]
    started = time.monotonic()
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    wall = time.monotonic() - started
    run_dir = next((Path(line.split("run directory ", 1)[1].strip()) for line in done.stdout.splitlines()
                    if line.startswith("run directory ")), None)
    if done.returncode != 0 or run_dir is None:
        raise SystemExit(f"{label}: loadlab run failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    verdict = json.loads((run_dir / "verdict.json").read_text())
    rows = read_stats_history(run_dir / "locust_stats_history.csv").rows
    first = next(r.t for r in rows if r.users > 0)
    knee = verdict["knee"]["users"] if verdict["knee"] else None
    brk = verdict["break"]["users"] if verdict["break"] else None
    truth = served_truth(run_dir, verdict, workers, THINK_S, n_star)
    return Hunt(label, [s["users"] for s in verdict["steps"]], rows[-1].t - first, wall, knee, verdict["capacity_rps"],
                brk, truth)


def show(h: Hunt) -> None:
    """One hunt's line; knee and capacity against the truth of its run."""
    x, n = h.truth.capacity_rps, h.truth.knee_users
    knee = "-" if h.knee is None else f"{h.knee:.1f} ({h.knee / n - 1:+.0%})"
    cap = "-" if h.capacity is None else f"{h.capacity:.1f} ({h.capacity / x - 1:+.0%})"
    print(f"  {h.label:<11} {len(h.users):3d} steps  hunt {h.hunt_s:5.0f} s  run {h.wall_s:5.0f} s  knee {knee:<14} "
          f"capacity {cap:<15} bracket {h.bracket() or '-'} users  break {h.brk or '-'}")
    print(f"  {'':<11} users as run: {' '.join(map(str, h.users))}; {h.truth}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--knees", default="25,50,100", help="comma-separated knees, from 25, 50, 100")
    parser.add_argument("--step-time", type=float, default=5.0, help="hold per step in seconds (default 5)")
    parser.add_argument("--no-fine", action="store_true", help="skip the fixed hunt at the adaptive hunt's resolution")
    args = parser.parse_args()
    knees = [int(k) for k in args.knees.split(",")]
    unknown = [k for k in knees if k not in WORKERS]
    if unknown:
        raise SystemExit(f"--knees {args.knees}: no ground-truth server for {unknown}; use 25, 50 or 100")
    print(f"step hold {args.step_time:g} s; ground truth: W sleeping workers, S = {SERVICE_MS:g} ms, Z = {THINK_S:g} s; "
          f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    summary = []
    with tempfile.TemporaryDirectory(prefix="bench-hunt-") as tmp:
        for knee in knees:
            workers = WORKERS[knee]
            x, n = workers / (SERVICE_MS / 1000), workers * (SERVICE_MS / 1000 + THINK_S) / (SERVICE_MS / 1000)
            print(f"\nknee ~{knee}: W={workers}: X = {x:g} req/s, N* = {n:g} users")
            server, url = start_server(workers, Path(tmp))
            try:
                out = Path(tmp) / f"reports-{knee}"
                hunts = [hunt("adaptive", server, url, workers, out, args.step_time, [], n),
                         hunt("fixed +10", server, url, workers, out, args.step_time, ["--step-users", "10"], n)]
                fine = hunts[0].bracket()
                if fine and not args.no_fine:
                    hunts.append(hunt(f"fixed +{fine}", server, url, workers, out, args.step_time,
                                      ["--step-users", str(fine)], n))
            finally:
                server.stop()
            # Figures in () are against each run's own truth (what its server served; the host's load
            # moves it between runs), printed on the line under it.
            for h in hunts:
                show(h)
            ratios = "  ".join(f"{h.label}: {hunts[0].hunt_s / h.hunt_s:.2f}" for h in hunts[1:])
            print(f"  adaptive hunt time / fixed hunt time: {ratios}")
            summary.append((knee, n, hunts))
    print("\nsteps / hunt seconds as the knee grows:")
    for knee, n, hunts in summary:
        print(f"  knee ~{knee}, N* = {n:5.1f}: " + "   ".join(f"{h.label} {len(h.users)} / {h.hunt_s:.0f} s" for h in hunts))
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
