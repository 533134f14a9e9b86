"""Real Locust runs against the real target: the spec's commands, the exporter's totals in every
mode (standalone, --processes, master + workers), unique registrations, cleanup and step hunt."""

from __future__ import annotations

import csv
import re
import subprocess

import pytest

from locust_tests.plugins.cleanup import delete_users
from tests.helpers import PYTHON, REPO_ROOT, free_port, require_binary
from tests.locust_tests.conftest import LocustRun, Target, locust_args, run_locust

LOCUSTFILES = REPO_ROOT / "tests" / "locust_tests" / "locustfiles"
LINGER = "2"  # seconds the exporter serves the final totals; the test scrapes every 0.2 s


def headless(launch, tmp_path_factory, target, scenario: str, name: str, *args: str,
             env: dict[str, str] | None = None, timeout: float = 60) -> LocustRun:
    """`locust -f <scenario> --headless ARGS` with its exporter on a free port, scraped until it exits."""
    out = tmp_path_factory.mktemp(name)
    port = free_port()
    proc = launch(locust_args(scenario, "--headless", "--host", target.url, "--only-summary",
                              "--csv", str(out / name), "--html", str(out / f"{name}.html"),
                              "--exporter-port", str(port), "--exporter-linger", LINGER, *args), name, env)
    return run_locust(proc, f"http://127.0.0.1:{port}/metrics", timeout, csv_prefix=out / name)


def assert_exporter_equals_csv(run: LocustRun, returncode: int = 0) -> None:
    assert run.returncode == returncode, run.log[-3000:]
    row = run.aggregated()
    assert int(row["Request Count"]) > 0
    assert run.metric_sum("locust_requests_total") == int(row["Request Count"])
    assert run.metric_sum("locust_request_failures_total") == int(row["Failure Count"])
    assert run.metric_sum("locust_request_duration_seconds_count") == int(row["Request Count"])
    assert run.metric_sum("locust_errors_total") == int(row["Failure Count"])


# --- the spec's registration command, standalone ---------------------------------------------

@pytest.fixture(scope="module")
def registration_run(launch, tmp_path_factory, target) -> LocustRun:
    return headless(launch, tmp_path_factory, target, "registration_test", "registration",
                    "--users", "50", "--spawn-rate", "10", "--run-time", "6s", "--run-id", "standalone1",
                    env={"LAB_ADMIN_TOKEN": target.token})


def test_registration_command_exits_0_without_failures(registration_run):
    assert registration_run.returncode == 0, registration_run.log[-3000:]
    assert int(registration_run.aggregated()["Failure Count"]) == 0


def test_plain_users_flags_run_without_a_shape(registration_run):
    assert "Shape test" not in registration_run.log
    assert 'All users spawned: {"RegisteringUser": 50} (50 total users)' in registration_run.log


def test_registration_command_writes_csv_and_html(registration_run):
    prefix = registration_run.csv_prefix
    for suffix in ("_stats.csv", "_stats_history.csv", "_failures.csv", "_exceptions.csv"):
        assert (prefix.parent / f"{prefix.name}{suffix}").stat().st_size > 0
    assert "/client_registeration" in (prefix.parent / f"{prefix.name}.html").read_text()


def test_exporter_totals_equal_the_csv_standalone(registration_run):
    assert_exporter_equals_csv(registration_run)
    assert registration_run.metric_sum("locust_workers", registration_run.scrapes[0]) == 0


def test_scrape_passes_promtool_check_metrics(registration_run, tmp_path):
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=registration_run.scrape, text=True,
                            capture_output=True, timeout=30)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr)


def test_cleanup_deletes_exactly_the_users_the_run_registered(registration_run, target):
    registered = int(registration_run.aggregated()["Request Count"])
    deleted = [int(n) for n in re.findall(r"cleanup: deleted (\d+) users starting with lt_standalone1_",
                                          registration_run.log)]
    assert sum(deleted) == registered
    assert delete_users(target.url, "lt_standalone1_", target.token) == 0  # nothing left behind


def deleted_at_cleanup(run: LocustRun, prefix: str) -> int:
    return sum(int(n) for n in re.findall(rf"cleanup: deleted (\d+) users starting with {prefix}", run.log))


def test_requests_in_flight_when_the_run_ends_are_counted(launch, tmp_path_factory, target):
    # No think time: when the run ends, nearly every user is in the middle of a registration. Each
    # finishes it (the suite's --stop-timeout) instead of being killed with the request in flight,
    # so Locust counts every user the server created; with --stop-timeout 0 it counts fewer.
    run = headless(launch, tmp_path_factory, target, "registration_test", "inflight",
                   "--users", "20", "--spawn-rate", "20", "--run-time", "3s", "--run-id", "inflight1",
                   env={"LAB_ADMIN_TOKEN": target.token, "MIN_WAIT_TIME": "0", "MAX_WAIT_TIME": "0"})
    assert run.returncode == 0, run.log[-3000:]
    registered = int(run.aggregated()["Request Count"])
    assert registered > 20
    assert deleted_at_cleanup(run, "lt_inflight1_") == registered, run.log[-3000:]


def test_failures_and_errors_are_exported_exactly(launch, tmp_path_factory):
    # Nothing listens on the host: every request fails with a connection error.
    closed = Target(f"http://127.0.0.1:{free_port()}", "", None)
    run = headless(launch, tmp_path_factory, closed, "registration_test", "failing",
                   "--users", "5", "--spawn-rate", "5", "--run-time", "3s", "--skip-preflight")
    assert_exporter_equals_csv(run, returncode=1)  # Locust exits 1 when requests failed
    assert int(run.aggregated()["Failure Count"]) == int(run.aggregated()["Request Count"])
    assert 'error="registration: expected 201, got no response (ConnectionRefusedError)"' in run.scrape


# --- the login scenario by preset name --------------------------------------------------------

@pytest.fixture(scope="module")
def login_run(launch, tmp_path_factory, target) -> LocustRun:
    # baseline = 100 users at 10/s for 5 minutes; time-scaled to 6 s.
    return headless(launch, tmp_path_factory, target, "login_test", "login", "--scenario", "baseline",
                    "--time-scale", "0.02")


def test_login_preset_exits_0_with_every_login_getting_a_token(login_run):
    assert login_run.returncode == 0, login_run.log[-3000:]
    row = login_run.aggregated()
    assert int(row["Request Count"]) > 0 and int(row["Failure Count"]) == 0
    assert (login_run.csv_prefix.parent / "login.html").stat().st_size > 0


def test_login_preset_is_the_baseline_shape(login_run):
    assert "scenario baseline: 100 users at 10/s for 6 s" in login_run.log
    assert "Shape test completed" in login_run.log
    assert "seeding: 100 test users ready" in login_run.log


# --- distributed: --processes 2, and a master with 2 workers -------------------------------------

@pytest.fixture(scope="module")
def processes_run(launch, tmp_path_factory, target) -> LocustRun:
    port = str(free_port())  # never Locust's default 5557: other tests may run Locust meanwhile
    return headless(launch, tmp_path_factory, target, "registration_test", "processes",
                    "--users", "40", "--spawn-rate", "20", "--run-time", "5s", "--processes", "2",
                    "--master-bind-port", port, "--master-port", port, "--run-id", "procs1", "--keep-users",
                    env={"LAB_ADMIN_TOKEN": target.token})


def test_exporter_totals_equal_the_csv_with_processes(processes_run):
    assert_exporter_equals_csv(processes_run)


def test_registration_across_processes_has_no_conflicts(processes_run, target):
    row = processes_run.aggregated()
    assert int(row["Failure Count"]) == 0 and "409" not in processes_run.failures_csv()
    # --keep-users kept them: every request created its own user, all under this run's prefix.
    assert delete_users(target.url, "lt_procs1_", target.token) == int(row["Request Count"])


def test_a_workers_late_final_report_still_counts(launch, tmp_path_factory, target):
    # The worker's final report comes 1.5 s after the master's quit message; Locust's own master
    # quits 0.5 s after it, and the requests since the worker's last report were lost.
    port = str(free_port())
    out = tmp_path_factory.mktemp("late")
    exporter = free_port()
    proc = launch([PYTHON, "-m", "locust", "-f", str(LOCUSTFILES / "late_final_report.py"), "--headless",
                   "--host", target.url, "--only-summary", "--csv", str(out / "late"), "--exporter-port", str(exporter),
                   "--exporter-linger", LINGER, "--users", "20", "--spawn-rate", "20", "--run-time", "3s",
                   "--processes", "1", "--master-bind-port", port, "--master-port", port, "--run-id", "late1",
                   "--keep-users"], "late", {"LAB_ADMIN_TOKEN": target.token})
    run = run_locust(proc, f"http://127.0.0.1:{exporter}/metrics", 60, csv_prefix=out / "late")
    assert_exporter_equals_csv(run)
    assert delete_users(target.url, "lt_late1_", target.token) == int(run.aggregated()["Request Count"])


@pytest.fixture(scope="module")
def master_workers_run(launch, tmp_path_factory, target) -> LocustRun:
    port = str(free_port())
    for n in range(2):
        launch(locust_args("registration_test", "--worker", "--master-port", port), f"worker{n}")
    return headless(launch, tmp_path_factory, target, "registration_test", "master",
                    "--users", "40", "--spawn-rate", "20", "--run-time", "5s", "--master", "--expect-workers", "2",
                    "--master-bind-host", "127.0.0.1", "--master-bind-port", port, "--run-id", "mw1")


def test_exporter_totals_equal_the_csv_with_master_and_workers(master_workers_run):
    assert_exporter_equals_csv(master_workers_run)
    assert max(master_workers_run.metric_sum("locust_workers", s) for s in master_workers_run.scrapes) == 2


def test_the_masters_history_counts_a_workers_requests_every_second(launch, tmp_path_factory, target):
    # Locust's workers report every 3 s, so with one worker the master's per-second totals (its CSV
    # history, the exporter) would rise in one row of three; the suite's workers report every second.
    port = str(free_port())
    launch(locust_args("registration_test", "--worker", "--master-port", port), "worker-1s")
    run = headless(launch, tmp_path_factory, target, "registration_test", "master1", "--users", "10",
                   "--spawn-rate", "10", "--run-time", "7s", "--master", "--expect-workers", "1",
                   "--master-bind-host", "127.0.0.1", "--master-bind-port", port, "--run-id", "mw1s")
    assert run.returncode == 0, run.log[-3000:]
    with open(f"{run.csv_prefix}_stats_history.csv", newline="") as handle:
        totals = [int(row["Total Request Count"]) for row in csv.DictReader(handle) if row["Name"] == "Aggregated"]
    # The rows while the load ran: from the first count to the first row with the final total.
    running = totals[next(i for i, t in enumerate(totals) if t > 0): totals.index(totals[-1]) + 1]
    rises = sum(1 for a, b in zip(running, running[1:]) if b > a)
    assert len(running) >= 5 and rises >= 0.7 * (len(running) - 1), totals


def test_registration_across_workers_has_no_conflicts(master_workers_run):
    row = master_workers_run.aggregated()
    assert int(row["Failure Count"]) == 0 and "409" not in master_workers_run.failures_csv()


# --- the step hunt stops itself ---------------------------------------------------------------

def test_step_hunt_stops_one_step_after_the_break(launch, tmp_path_factory, target):
    # An SLO no request can meet (p95 <= 1 ms) breaks at step 1; the hunt runs step 2, then stops.
    run = headless(launch, tmp_path_factory, target, "login_test", "step", "--scenario", "step",
                   "--step-users", "5", "--step-time", "3s", "--max-users", "100", "--csv-full-history",
                   env={"SLO_P95_MS": "1"})
    assert run.returncode == 0, run.log[-3000:]
    assert "step 1: 5 users" in run.log and "BREACH" in run.log
    assert "the SLO broke at step 1 (5 users); stopping" in run.log
    with open(f"{run.csv_prefix}_stats_history.csv", newline="") as handle:
        assert max(int(row["User Count"]) for row in csv.DictReader(handle)) == 10
    assert max(run.metric_sum("locust_step", s) for s in run.scrapes) == 2
