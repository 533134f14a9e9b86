"""Open-model (arrival-rate) load in real Locust runs against the real target: the scheduled
arrivals, the totals on the exporter (standalone and with --processes 2, where the rate is split
and every worker's counts reach the master exactly), the rate hunt stopping itself, and bad flags."""

from __future__ import annotations

import re
import subprocess

import pytest

from loadlab.contract import openmodel as names
from tests.helpers import free_port, require_binary
from tests.locust_tests.conftest import LocustRun, locust_args, run_locust

WORKER_LINE = re.compile(r"open model: (worker \d+|this process) scheduled (\d+) arrivals \(([\d.]+) at the rate it "
                         r"was offered\), (\d+) late, (\d+) dropped")


def open_run(launch, tmp_path_factory, target, name: str, *args: str, env: dict[str, str] | None = None,
             timeout: float = 60) -> LocustRun:
    out = tmp_path_factory.mktemp(name)
    port = free_port()
    proc = launch(locust_args("login_test", "--headless", "--host", target.url, "--only-summary",
                              "--csv", str(out / name), "--exporter-port", str(port), "--exporter-linger", "2", *args),
                  name, {"LOGIN_USERS": "20", **(env or {})})
    return run_locust(proc, f"http://127.0.0.1:{port}/metrics", timeout, csv_prefix=out / name)


def peak(run: LocustRun, name: str) -> float:
    return max(run.metric_sum(name, scrape) for scrape in run.scrapes)


def assert_every_arrival_is_accounted_for(run: LocustRun) -> None:
    """The master's final totals: every scheduled arrival completed once (one request each in the
    login scenario) or was dropped, and the corrected histogram counted exactly Locust's requests."""
    assert run.returncode == 0, run.log[-3000:]
    requests = int(run.aggregated()["Request Count"])
    assert requests > 0 and int(run.aggregated()["Failure Count"]) == 0
    scheduled = run.metric_sum(names.ARRIVALS_SCHEDULED)
    dropped = run.metric_sum(names.ARRIVALS_DROPPED)
    assert scheduled == requests + dropped, (scheduled, requests, dropped)
    assert run.metric_sum(names.CORRECTED_DURATION + "_count") == requests
    assert run.metric_sum("locust_requests_total") == requests
    # Corrected = Locust's own response time + how late the arrival started: never less.
    assert run.metric_sum(names.CORRECTED_DURATION + "_sum") >= run.metric_sum("locust_request_duration_seconds_sum") - 1e-6


@pytest.fixture(scope="module")
def constant_run(launch, tmp_path_factory, target) -> LocustRun:
    return open_run(launch, tmp_path_factory, target, "constant", "--arrival-rate", "25", "--arrivals", "uniform",
                    "--max-concurrency", "8", "--run-time", "6s")


def test_constant_rate_offers_its_rate_with_its_slots(constant_run):
    assert peak(constant_run, names.ARRIVAL_RATE) == 25
    assert peak(constant_run, "locust_users") == 8  # the request slots
    assert "open model: 25 arrivals/s for 6 s; uniform arrivals, at most 8 requests in flight" in constant_run.log


def test_constant_rate_schedules_exactly_the_offered_arrivals(constant_run):
    (who, scheduled, expected, _late, _dropped), = WORKER_LINE.findall(constant_run.log)
    assert who == "this process"
    # Uniform arrivals: the count is the rate times the time it was offered, to the arrival.
    assert abs(int(scheduled) - float(expected)) <= 1, constant_run.log[-2000:]
    assert int(scheduled) == constant_run.metric_sum(names.ARRIVALS_SCHEDULED)
    assert float(expected) > 25 * 3  # offered for most of the 6 s


def test_constant_rate_totals_are_exact(constant_run):
    assert_every_arrival_is_accounted_for(constant_run)


def test_open_model_scrape_passes_promtool_check_metrics(constant_run):
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=constant_run.scrape, text=True,
                            capture_output=True, timeout=30)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


@pytest.fixture(scope="module")
def processes_run(launch, tmp_path_factory, target) -> LocustRun:
    port = str(free_port())
    return open_run(launch, tmp_path_factory, target, "openprocs", "--arrival-rate", "30", "--arrivals", "uniform",
                    "--max-concurrency", "10", "--run-time", "6s", "--processes", "2",
                    "--master-bind-port", port, "--master-port", port)


def test_distributed_rate_is_split_over_the_processes(processes_run):
    assert peak(processes_run, names.ARRIVAL_RATE) == 30
    assert peak(processes_run, "locust_workers") == 2
    assert "open model: offering 30 arrivals/s over 2 load processes (15, 15 per s)" in processes_run.log


def test_distributed_totals_reach_the_master_exactly(processes_run):
    workers = WORKER_LINE.findall(processes_run.log)
    assert sorted(w for w, *_ in workers) == ["worker 0", "worker 1"], processes_run.log[-3000:]
    for _who, scheduled, expected, _late, _dropped in workers:
        assert abs(int(scheduled) - float(expected)) <= 1  # each worker issued exactly its share
    assert sum(int(s) for _, s, *_ in workers) == processes_run.metric_sum(names.ARRIVALS_SCHEDULED)
    assert sum(int(late) for *_, late, _ in workers) == processes_run.metric_sum(names.ARRIVALS_LATE)
    assert_every_arrival_is_accounted_for(processes_run)


def test_rate_hunt_stops_one_step_after_the_first_step_not_sustained(launch, tmp_path_factory, target):
    # An SLO no request can meet (p95 <= 1 ms) fails step 1; the hunt runs step 2, then stops. 5 s steps: at 3 s
    # a loaded host once left too few samples of a step (the exporter renders up to once a second).
    run = open_run(launch, tmp_path_factory, target, "ratehunt", "--scenario", "rate-step", "--step-rate", "5",
                   "--step-time", "5s", "--max-rate", "100", env={"SLO_P95_MS": "1"})
    assert run.returncode == 0, run.log[-3000:]
    # The SLO's reason, whatever else a loaded host adds before it (e.g. "corrected latency grew ...").
    assert re.search(r"rate step 1: offered 5/s .* -> NOT SUSTAINED \(.*corrected p95 \d+ ms > 1 ms\)", run.log), \
        run.log[-3000:]
    assert "rate hunt: not sustained at step 1 (5 arrivals/s); stopping" in run.log
    assert peak(run, names.ARRIVAL_RATE) == 10
    assert peak(run, "locust_step") == 2
    assert_every_arrival_is_accounted_for(run)


@pytest.mark.parametrize(("args", "message"), [
    (["--arrival-rate", "10", "--scenario", "step"], "--arrival-rate runs a constant rate: leave out --scenario"),
    (["--arrival-rate", "10", "--max-concurrency", "0"], "--max-concurrency must be a whole number of requests in "
                                                         "flight, at least 1 (got 0)"),
    (["--arrival-rate", "-3"], "--arrival-rate must be a positive number (got -3.0)"),
    (["--step-rate", "5", "--max-rate", "2"], "--max-rate (2) must be at least --step-rate (5)"),
    (["--step-rate", "5", "--scenario", "step"], "--step-rate belongs to the rate hunt (--scenario rate-step)"),
])
def test_unusable_open_model_flags_are_one_clear_line(launch, tmp_path_factory, target, args, message):
    run = open_run(launch, tmp_path_factory, target, "badflags", *args, timeout=30)
    assert run.returncode == 1, run.log[-2000:]
    errors = [line for line in run.log.splitlines() if "/ERROR/" in line]
    assert len(errors) == 1 and message in errors[0], run.log[-2000:]
    assert "Traceback" not in run.log
