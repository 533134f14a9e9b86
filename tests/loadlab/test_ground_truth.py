"""The verdict against servers whose breaking point is known from operational laws.

Each test starts a ground-truth server (W workers, service time S), runs the real
`loadlab run login-step --host ... --target-pid ...` against it (Locust, the sidecar via its
CLI, the lab's sampler), and compares the verdict with X = W/S and N* = W(S+Z)/S. The hunt is the
adaptive one unless the test gives --step-users (the fixed hunt); the adaptive tests run both
on one server and compare their verdicts and their steps.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import threading
import time
import urllib.request
from dataclasses import dataclass

import psutil
import pytest

from loadlab.history import read_stats_history
from tests.loadlab.conftest import LabRun, assert_all_gone, run_loadlab, step_table
from tests.loadlab.served import ServedTruth, served_truth

# Think time Z: uniform between 0.4 and 0.6 s, so 0.5 s on average.
THINK = {"MIN_WAIT_TIME": "400", "MAX_WAIT_TIME": "600", "LOGIN_USERS": "20"}
Z = 0.5
STEP_S = 5  # every hunt here holds each step 5 s unless it says otherwise

# Each test measures capacity and knee against X = W/S: run alone (make test's serial group).
pytestmark = pytest.mark.serial


@dataclass
class Hunted:
    verdict: dict
    run: LabRun
    wall_s: float  # the whole `loadlab run`, start-up and analysis included
    step_s: float = STEP_S  # each step's hold (--step-time)

    @property
    def hunt_s(self) -> float:
        """The hunt itself: from Locust's first row with users to its last row."""
        rows = read_stats_history(self.run.run_dir / "locust_stats_history.csv").rows
        first = next(r.t for r in rows if r.users > 0)
        return rows[-1].t - first

    @property
    def drain_s(self) -> float:
        """Seconds the hunt held 0 users between steps (the adaptive hunt's back-off)."""
        rows = read_stats_history(self.run.run_dir / "locust_stats_history.csv").rows
        loaded = [i for i, r in enumerate(rows) if r.users > 0]
        return float(sum(1 for r in rows[loaded[0]: loaded[-1]] if r.users == 0)) if loaded else 0.0

    @property
    def users(self) -> list[int]:
        return [s["users"] for s in self.verdict["steps"]]

    def bracket(self) -> tuple[int, int]:
        """The two measured steps the adaptive hunt bracketed its knee with, as its last line says
        (`adaptive hunt: done after N steps: ...; knee ~105.3 users, between 104 and 108 users`)."""
        log = (self.run.run_dir / "logs" / "locust.log").read_text()
        found = re.search(r"adaptive hunt: done after .*; knee ~[\d.]+ users, between (\d+) and (\d+) users", log)
        assert found, log[-3000:]
        return int(found.group(1)), int(found.group(2))


def think(z: float) -> dict[str, str]:
    """The suite's think time, uniform within 0.1 s of `z` (so `z` on average)."""
    return {**THINK, "MIN_WAIT_TIME": str(round(1000 * z) - 100), "MAX_WAIT_TIME": str(round(1000 * z) + 100)}


def hunt_run(gt, tmp_path, *locust_args: str, think_s: float = Z, timeout: float = 240,
             env: dict[str, str] | None = None, step_s: float = STEP_S) -> Hunted:
    started = time.monotonic()
    run = run_loadlab(["run", "login-step", "--host", gt.url, "--target-pid", str(gt.pid), "--target-workers",
                       str(gt.workers), "--prometheus", "off", "--", "--step-time", f"{step_s:g}s", *locust_args],
                      tmp_path / "reports", env={**think(think_s), **(env or {})}, timeout=timeout)
    wall = time.monotonic() - started
    assert run.returncode == 0, run.output
    assert_all_gone(run.started_pids())
    verdict = run.verdict()
    print(f"\nW={gt.workers} S={gt.service_s * 1000:g} ms Z={think_s:g} s: X={gt.capacity_rps:g} req/s, "
          f"N*={gt.knee_users(think_s):g}; "
          f"{' '.join(locust_args)}\n" + step_table(verdict))
    return Hunted(verdict, run, wall, step_s)


def hunt(gt, tmp_path, step_users: int, max_users: int, *extra: str):
    return hunt_run(gt, tmp_path, "--step-users", str(step_users), "--max-users", str(max_users), *extra).verdict


@pytest.mark.timeout(240)
def test_sleeping_server_capacity_knee_and_concurrency_limit(ground_truth, tmp_path):
    # X = 40 req/s, N* = 24 users. S = 100 ms rather than 50: gunicorn, Flask and the
    # instrumentation add ~3 ms to every request (measured: 37.8 req/s with W=2, S=50 ms), which
    # is 6 % of 50 ms but 3 % of 100 ms.
    gt = ground_truth(workers=4, service_ms=100, mode="sleep")
    verdict = hunt(gt, tmp_path, step_users=4, max_users=44)
    detail = step_table(verdict)
    assert verdict["breaking_point_reached"] is True, detail
    assert verdict["capacity_rps"] == pytest.approx(gt.capacity_rps, rel=0.10), detail
    assert verdict["knee"]["users"] == pytest.approx(gt.knee_users(Z), rel=0.15), detail
    assert verdict["limiting_resource"] == "concurrency", detail


def cpu_per_login_s(gt, logins: int = 40) -> float:
    """CPU seconds the ground-truth server's processes spend per POST /client_login (its S plus what
    gunicorn, Flask and the instrumentation add), from psutil over `logins` sequential logins."""
    def cpu() -> float:
        procs = [psutil.Process(gt.pid), *psutil.Process(gt.pid).children(recursive=True)]
        return sum(t.user + t.system for t in (p.cpu_times() for p in procs))

    def login() -> None:
        req = urllib.request.Request(gt.url + "/client_login", data=b'{"username": "u", "password": "p"}',
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as response:
            assert response.status == 200

    login()  # warm
    before = cpu()
    for _ in range(logins):
        login()
    return (cpu() - before) / logins


@pytest.mark.timeout(240)
def test_cpu_burning_server_is_cpu_limited(ground_truth, tmp_path):
    # X = 20 req/s, N* = 11 users. S = 50 ms: gunicorn, Flask and the instrumentation burn ~3-4 ms
    # of CPU per request besides S (measured: 24 ms per request with S = 20 ms), so the truth uses D,
    # the worker's CPU per login measured by this test (psutil, sequential logins, before the run).
    gt = ground_truth(workers=1, service_ms=50, mode="burn")
    demand = cpu_per_login_s(gt)
    verdict = hunt(gt, tmp_path, 2, 22, "--no-stop-on-break")
    detail = step_table(verdict)
    assert verdict["breaking_point_reached"] is True, detail
    assert verdict["limiting_resource"] == "target_cpu", detail
    steps = verdict["steps"]
    host_busy = [s["host_cpu_busy_cores"] / s["host_cores"] for s in steps if s["host_cpu_busy_cores"] is not None]
    if statistics.median(host_busy) >= 0.9:
        # Other work held the host's CPUs (seen in a run beside three other test sessions: the worker
        # got 0.4-0.8 of a core, varying step to step). The truth of X is unknowable then; what must
        # hold is the cause (asserted above: target_cpu) and that no capacity is claimed beyond the
        # data: without a knee it is only the lower bound of the best step that met the SLO.
        print("host saturated by other work: checked the cause and the bound, not X")
        if verdict["knee"] is None:
            assert verdict["capacity_is_lower_bound"] and "at least" in "\n".join(verdict["summary"]), detail
        return
    # X = W/S assumes the worker gets a whole core. On a machine shared with other work it gets a
    # share (measured: 0.83-0.97 of a core step to step in a CI run; 0.4-0.9 at a load average of
    # 5-10), so the truth is the utilization law: X = U/S, with U the cores it got, measured by the
    # sidecar on the steps the capacity is taken from (knee up to the break), independently of
    # Locust's request counts. On a quiet machine U is ~1 and this is W/S.
    knee_step = next(i for i, s in enumerate(verdict["steps"]) if s["start"] == verdict["knee"]["time"])
    end = next((i for i, s in enumerate(verdict["steps"]) if verdict["break"] and s["start"] == verdict["break"]["time"]),
               len(verdict["steps"]))
    saturated = [s["target_cpu_cores"] for s in verdict["steps"][knee_step:max(end, knee_step + 1)]]
    workers = min(statistics.median(saturated), gt.workers)
    print(f"cores the target got from the knee to the break: {workers:.2f}, D = {demand * 1000:.1f} ms -> expected "
          f"X = {workers / demand:.1f} req/s, N* = {workers * (demand + Z) / demand:.1f} users")
    assert verdict["capacity_rps"] == pytest.approx(workers / demand, rel=0.10), detail
    assert verdict["knee"]["users"] == pytest.approx(workers * (demand + Z) / demand, rel=0.15), detail


@pytest.mark.timeout(240)
def test_run_capped_below_the_knee_reports_no_breaking_point(ground_truth, tmp_path):
    gt = ground_truth(workers=4, service_ms=100, mode="sleep")
    cap = int(0.7 * gt.knee_users(Z))  # 16 users
    verdict = hunt(gt, tmp_path, 4, cap)
    detail = step_table(verdict)
    assert max(s["users"] for s in verdict["steps"]) == cap, detail
    assert verdict["breaking_point_reached"] is False, detail
    assert verdict["knee"] is None and verdict["break"] is None, detail


def assert_ground_truth_verdict(verdict: dict, truth: ServedTruth, knee_tolerance: float,
                                capacity_tolerance: float) -> None:
    detail = step_table(verdict)
    knee_users = truth.knee_users
    assert verdict["breaking_point_reached"] is True, detail
    assert verdict["measurement_valid"] is True, detail
    assert verdict["capacity_rps"] == pytest.approx(truth.capacity_rps, rel=capacity_tolerance), detail
    assert verdict["knee"]["users"] == pytest.approx(knee_users, rel=knee_tolerance), detail
    assert verdict["limiting_resource"] == "concurrency", detail


def scheduled_s(hunted: Hunted) -> float:
    """The hunt's length as scheduled: its steps' holds plus its back-offs (Locust's own clock, not
    how busy this machine was; the measured times are printed beside it)."""
    return len(hunted.verdict["steps"]) * hunted.step_s + hunted.drain_s


def hunts_at_once(*hunts: tuple) -> list[Hunted]:
    """Run `hunt_run(*args, **kwargs)` for each (args, kwargs) at the same time, each on its own
    server (sleeping servers need no CPU, so they do not disturb each other); a failure re-raises."""
    done: list = [None] * len(hunts)

    def go(i: int, args: tuple, kwargs: dict) -> None:
        try:
            done[i] = hunt_run(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the test's thread below)
            done[i] = exc

    threads = [threading.Thread(target=go, args=(i, a, k)) for i, (a, k) in enumerate(hunts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for result in done:
        if isinstance(result, BaseException):
            raise result
    return done


@pytest.mark.timeout(300)
def test_adaptive_hunt_reaches_the_fixed_hunts_verdict_at_a_small_knee_and_is_no_slower(ground_truth, tmp_path):
    # The sleeping server above (X = 40 req/s, N* = 24 users), hunted both ways at once, on two
    # servers alike. The truth of each run is what its server served (tests/loadlab/served.py): X = W/D
    # with D the server's own time per login (S plus what the busy host adds), N* = X (R0 + Z).
    servers = [ground_truth(workers=4, service_ms=100, mode="sleep") for _ in range(2)]
    fixed, adaptive = hunts_at_once(((servers[0], tmp_path / "fixed", "--step-users", "4", "--max-users", "44"), {}),
                                    ((servers[1], tmp_path / "adaptive", "--max-users", "44"), {}))  # the default
    truths = [served_truth(h.run.run_dir, h.verdict, gt.workers, Z, gt.knee_users(Z))
              for h, gt in ((fixed, servers[0]), (adaptive, servers[1]))]
    print(f"small knee: fixed +4 users: {fixed.users}, hunt {fixed.hunt_s:.0f} s, run {fixed.wall_s:.0f} s; "
          f"{truths[0]} | adaptive: {adaptive.users}, hunt {adaptive.hunt_s:.0f} s (drained {adaptive.drain_s:.0f} s), "
          f"run {adaptive.wall_s:.0f} s; {truths[1]}")
    # The same verdict within the fixed hunt's tolerances (the test above): capacity 10 %, knee 15 %.
    assert_ground_truth_verdict(adaptive.verdict, truths[1], knee_tolerance=0.15, capacity_tolerance=0.10)
    for key in ("breaking_point_reached", "limiting_resource", "measurement_valid"):
        assert adaptive.verdict[key] == fixed.verdict[key], key
    assert adaptive.users[:2] == [10, 20]  # it grew geometrically, not by +4
    assert scheduled_s(adaptive) <= scheduled_s(fixed), (adaptive.users, fixed.users)


@pytest.mark.timeout(240)
def test_adaptive_hunt_finds_a_large_knee_in_a_third_of_the_fixed_hunts_time(ground_truth, tmp_path):
    # The example is W=16, S=80 ms, Z=0.5 s (X = 200 req/s, N* = 116). This 2-core machine,
    # shared with other test suites, does not serve 200 logins/s to the lab's own Locust without the
    # host's CPUs deciding the plateau (measured: 140-160 req/s, target 0.26 cores, host 2.0 busy).
    # The same knee at half the rate: W=16, S=160 ms, Z=1.0 s: X = 100 req/s, N* = 116 users.
    think_s, step_s = 1.0, STEP_S
    gt = ground_truth(workers=16, service_ms=160, mode="sleep")
    adaptive = hunt_run(gt, tmp_path / "adaptive", "--max-users", "400", think_s=think_s, step_s=step_s)
    verdict = adaptive.verdict
    # The truth of this run from what the server served (X = W/D, with D the time a worker is held per
    # login, accept to close; N* = X (R0 + Z); tests/loadlab/served.py).
    truth = served_truth(adaptive.run.run_dir, verdict, gt.workers, think_s, gt.knee_users(think_s))
    print(truth)
    # The tolerances: knee 10 %, capacity 5 %. Measured on a quiet machine, 5 s steps: capacity
    # +0.0, +0.4, -3.7 % while a step's rate was taken over scrape times, +2.7, +0.3, -0.6 % since it is
    # over the times the exporter's counts were current (knee +2.9, -0.1, -0.4 %).
    assert_ground_truth_verdict(verdict, truth, knee_tolerance=0.10, capacity_tolerance=0.05)
    # The fixed hunt that resolves the knee as finely has steps as far apart as the two steps the
    # adaptive hunt bracketed its knee with. Its length is counted, not run (benchmarks/bench_hunt.py
    # runs both and prints the wall times side by side): it runs every step up to the break this run
    # measured (the fewest users that breached the SLO) and one more, each as long as the adaptive
    # hunt's. The least it could run at all is every step up to the first past the knee and one more
    # to confirm it; both are printed.
    below, above = adaptive.bracket()
    step = above - below
    assert step <= 0.06 * truth.knee_users, f"the knee is bracketed by {below} and {above} users only"
    assert verdict["break"] is not None, step_table(verdict)
    fixed_steps = math.ceil(verdict["break"]["users"] / step) + 1
    least = math.ceil(truth.knee_users / step) + 1
    capacity_error = verdict["capacity_rps"] / truth.capacity_rps - 1
    print(f"large knee: adaptive {len(adaptive.users)} steps {adaptive.users}, knee between {below} and {above} "
          f"users; knee {verdict['knee']['users']:.1f} ({verdict['knee']['users'] / truth.knee_users - 1:+.1%}), "
          f"capacity {verdict['capacity_rps']:.1f} req/s ({capacity_error:+.1%}); hunt {adaptive.hunt_s:.0f} s "
          f"(drained {adaptive.drain_s:.0f} s), run {adaptive.wall_s:.0f} s, scheduled {scheduled_s(adaptive):.0f} s "
          f"| fixed +{step} users to the break at {verdict['break']['users']} users and one more: {fixed_steps} steps, "
          f"{fixed_steps * step_s} s (to confirm the knee alone at least {least} steps, {least * step_s} s) | adaptive / "
          f"fixed {scheduled_s(adaptive) / (fixed_steps * step_s):.2f} ({scheduled_s(adaptive) / (least * step_s):.2f} "
          f"against the least)")
    assert scheduled_s(adaptive) <= fixed_steps * step_s / 3, (adaptive.users, step, fixed_steps)


@pytest.mark.timeout(360)
def test_a_bad_breach_backs_off_and_lets_the_target_drain(ground_truth, tmp_path):
    # W=2, S=100 ms, Z=2 s (the bundled target's think time): X = 20 req/s, N* = 42 users. From 4
    # users the hunt doubles while linear, 4, 8, 16, 32, to 64: 1.5 N*, where the response time is
    # N/X - Z = 1.2 s, p95 past twice the SLO. It must back off (0 users for a while) before it
    # refines below, and never load that many users again. 8 s steps: a 2 s think time needs them.
    gt = ground_truth(workers=2, service_ms=100, mode="sleep")
    hunted = hunt_run(gt, tmp_path, "--start-users", "4", "--max-users", "200", think_s=2.0, step_s=8, timeout=300)
    users = hunted.users
    log = (hunted.run.run_dir / "logs" / "locust.log").read_text()
    bad = re.search(r"step (\d+) \((\d+) users\) breached badly .* backing off to 0 users for", log)
    assert bad, log[-3000:]
    step, level = int(bad.group(1)), int(bad.group(2))
    assert users[0] == 4 and level > gt.knee_users(2.0), users  # it overshot the knee by doubling
    assert len(users) > step and all(u < level for u in users[step:]), users  # refined below, never as high
    assert hunted.drain_s >= 1, "no second at 0 users between the steps"
    # The live phase went through the exporter to the sampler: "drain" while it drained.
    phases = {labels["phase"] for line in (hunted.run.run_dir / "samples.jsonl").read_text().splitlines()
              for name, labels, value in json.loads(line).get("samples", []) if name == "locust_hunt_phase" and value == 1}
    assert {"grow", "drain", "refine"} <= phases, phases
    assert hunted.verdict["knee"] is not None, step_table(hunted.verdict)
