"""The verdict against servers whose breaking point is known from operational laws.

Each test starts a ground-truth server (W workers, service time S), runs the real
`loadlab run login-step --host ... --target-pid ...` against it (Locust, the sidecar via its
CLI, the lab's sampler), and compares the verdict with X = W/S and N* = W(S+Z)/S.
"""

from __future__ import annotations

import statistics

import pytest

from tests.loadlab.conftest import assert_all_gone, run_loadlab, step_table

# Think time Z: uniform between 0.4 and 0.6 s, so 0.5 s on average.
THINK = {"MIN_WAIT_TIME": "400", "MAX_WAIT_TIME": "600", "LOGIN_USERS": "20"}
Z = 0.5


def hunt(gt, tmp_path, step_users: int, max_users: int, *extra: str):
    run = run_loadlab(["run", "login-step", "--host", gt.url, "--target-pid", str(gt.pid), "--target-workers",
                       str(gt.workers), "--prometheus", "off", "--",
                       "--step-users", str(step_users), "--step-time", "5s", "--max-users", str(max_users), *extra],
                      tmp_path / "reports", env=THINK, timeout=180)
    assert run.returncode == 0, run.output
    assert_all_gone(run.started_pids())
    verdict = run.verdict()
    print(f"\nW={gt.workers} S={gt.service_s * 1000:g} ms: X={gt.capacity_rps:g} req/s, N*={gt.knee_users(Z):g}\n"
          + step_table(verdict))
    return verdict


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


@pytest.mark.timeout(240)
def test_cpu_burning_server_is_cpu_limited(ground_truth, tmp_path):
    # X = 20 req/s, N* = 11 users. S = 50 ms: gunicorn, Flask and the instrumentation burn ~3-4 ms
    # of CPU per request besides S (measured: 24 ms per request with S = 20 ms).
    gt = ground_truth(workers=1, service_ms=50, mode="burn")
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
    print(f"cores the target got from the knee to the break: {workers:.2f} -> expected "
          f"X = {workers / gt.service_s:.1f} req/s, N* = {workers * (gt.service_s + Z) / gt.service_s:.1f} users")
    assert verdict["capacity_rps"] == pytest.approx(workers / gt.service_s, rel=0.10), detail
    assert verdict["knee"]["users"] == pytest.approx(workers * (gt.service_s + Z) / gt.service_s, rel=0.15), detail


@pytest.mark.timeout(240)
def test_run_capped_below_the_knee_reports_no_breaking_point(ground_truth, tmp_path):
    gt = ground_truth(workers=4, service_ms=100, mode="sleep")
    cap = int(0.7 * gt.knee_users(Z))  # 16 users
    verdict = hunt(gt, tmp_path, 4, cap)
    detail = step_table(verdict)
    assert max(s["users"] for s in verdict["steps"]) == cap, detail
    assert verdict["breaking_point_reached"] is False, detail
    assert verdict["knee"] is None and verdict["break"] is None, detail
