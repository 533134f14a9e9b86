"""An API that fails functionally is not a capacity result; a capacity the data cannot back is not
given; reason texts claim only what was measured.

The first part judges synthetic steps whose answers are known; the second runs the real lab
against a tiny server that answers 500 to everything and against the bundled target with a login
path that does not exist, and reads what `loadlab run` and `loadlab analyze` say and exit with.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from loadlab import cli
from loadlab.analysis import analyze_steps
from loadlab.contract.exits import EXIT_API_FAILED
from loadlab.functional import ErrorEvidence, is_functional, status_of
from loadlab.verdict import TopError
from tests.helpers import free_port, wait_for_http
from tests.loadlab.conftest import run_loadlab
from tests.loadlab.synthetic import model_steps

STAIR = list(range(4, 48, 4))  # W=2, S=50 ms, Z=0.5 s: knee at 22 users, capacity 40 req/s
LOGIN_401 = "login: expected 200 with a token, got HTTP 401 (invalid_credentials)"
LOGIN_500 = "login: expected 200 with a token, got HTTP 500 (internal_error)"


def failing(steps, index: int, ratio: float):
    """The steps with `ratio` of step `index`'s requests failed."""
    step = steps[index]
    steps[index] = dataclasses.replace(step, failures=int(step.requests * ratio), error_ratio=ratio)
    return steps


def evidence(steps, index: int, *errors: tuple[str, int]) -> ErrorEvidence:
    by_step: list = [[] for _ in steps]
    by_step[index] = [TopError("POST /client_login", text, count, status_of(text)) for text, count in errors]
    return ErrorEvidence(by_step=by_step, run=[])


# ------------------------------------------------------------------ the failure texts

@pytest.mark.parametrize("text,status", [
    (LOGIN_401, 401),  # the suite's checks
    ("login: HTTP 200 without a token in the body", 200),
    ("CatchResponseError('registration: expected 201, got HTTP 404 (not_found)')", 404),  # Locust's failures CSV
    ("LocustBadStatusCode(code=500)", 500),  # FastHttpUser without catch_response
    ("HTTPError('503 Server Error: SERVICE UNAVAILABLE for url: /x')", 503),  # HttpUser (requests)
    ("registration: expected 201, got no response (ConnectionRefusedError)", None),
])
def test_the_status_is_read_from_each_kind_of_failure_text(text, status):
    assert status_of(text) == status


def test_which_failures_are_functional():
    assert is_functional(401, cpu_idle=False, first_step=False)  # a 4xx is the request's fault at any load
    assert is_functional(200, cpu_idle=None, first_step=False)  # a 2xx the scenario's check rejected
    assert not is_functional(429, cpu_idle=True, first_step=True)  # "too many requests" reports load
    assert not is_functional(None, cpu_idle=True, first_step=True)  # nothing answered: not a contract
    assert is_functional(500, cpu_idle=True, first_step=True)
    assert not is_functional(500, cpu_idle=False, first_step=True)  # a busy CPU: overload
    assert is_functional(500, cpu_idle=None, first_step=True)  # not sampled: the lightest load only
    assert not is_functional(500, cpu_idle=None, first_step=False, below_knee=True)
    assert not is_functional(500, cpu_idle=True, first_step=False)  # no knee: a pool running out looks like this


# ------------------------------------------------------------------ the verdict

def test_most_requests_failing_with_4xx_at_the_first_step_is_a_functional_failure():
    steps = failing(model_steps(STAIR), 0, 1.0)
    verdict = analyze_steps(steps, errors=evidence(steps, 0, (LOGIN_401, 90))).to_dict()
    assert verdict["functional_failure"]["users"] == 4
    assert verdict["functional_failure"]["error_ratio"] == 1.0
    assert verdict["functional_failure"]["top_errors"] == [
        {"request": "POST /client_login", "error": LOGIN_401, "count": 90, "status": 401}]
    assert verdict["capacity_rps"] is None and verdict["knee"] is None and verdict["limiting_resource"] is None
    assert verdict["break"] is None and verdict["breaking_point_reached"] is False
    assert verdict["summary"][0].startswith("the API failed functionally: at 4 users, 100% of requests failed")
    assert any(LOGIN_401 in line for line in verdict["summary"])
    assert not any(line.startswith(("capacity", "break", "knee")) for line in verdict["summary"])


def test_a_step_below_the_knee_counts_too_and_so_does_a_5xx_on_an_idle_target():
    steps = model_steps(STAIR, target_cpu_cores=0.05, target_cores_available=2.0, generator_cpu_cores=0.1,
                        generator_cores_available=1.0)
    steps = failing(steps, 2, 0.8)  # 12 users, below the knee at 22
    verdict = analyze_steps(steps, errors=evidence(steps, 2, (LOGIN_500, 80), ("other", 5))).to_dict()
    assert verdict["functional_failure"]["users"] == 12
    assert "idle" in verdict["functional_failure"]["reason"]
    assert [e["count"] for e in verdict["functional_failure"]["top_errors"]] == [80]  # "other" has no status


def test_5xx_from_a_saturated_target_is_overload_not_a_functional_failure():
    steps = model_steps(STAIR, target_cpu_cores=1.95, target_cores_available=2.0)
    steps = failing(steps, 0, 1.0)
    verdict = analyze_steps(steps, errors=evidence(steps, 0, (LOGIN_500, 90))).to_dict()
    assert verdict["functional_failure"] is None
    assert verdict["break"]["users"] == 4


def test_a_few_failures_or_load_statuses_are_not_a_functional_failure():
    steps = failing(model_steps(STAIR), 0, 0.3)  # a minority of requests failed
    assert analyze_steps(steps, errors=evidence(steps, 0, (LOGIN_401, 30))).functional_failure is None
    steps = failing(model_steps(STAIR), 0, 1.0)
    too_many = "login: expected 200 with a token, got HTTP 429 (too_many_requests)"
    assert analyze_steps(steps, errors=evidence(steps, 0, (too_many, 90))).functional_failure is None


def test_without_per_step_errors_the_failures_csv_of_the_run_is_read():
    steps = failing(model_steps(STAIR), 0, 1.0)
    run = [TopError("POST /client_login", LOGIN_401, 500, 401)]
    verdict = analyze_steps(steps, errors=ErrorEvidence([None] * len(steps), run, "run/locust_failures.csv"))
    assert verdict.functional_failure is not None
    assert verdict.functional_failure.errors_source == "whole run, from locust_failures.csv"


def test_when_no_step_met_the_slo_there_is_no_capacity():
    # Every step is slow (p95 well over 500 ms): the best failing step's rate is no capacity.
    steps = [dataclasses.replace(s, p95_ms=900.0) for s in model_steps([4, 8, 12])]
    verdict = analyze_steps(steps).to_dict()
    assert verdict["break"]["users"] == 4
    assert verdict["capacity_rps"] is None and verdict["capacity_is_lower_bound"] is False
    assert any(line.startswith("capacity: none: no step met the SLO") for line in verdict["summary"])


def test_without_a_knee_the_capacity_is_labelled_a_lower_bound():
    capped = analyze_steps(model_steps([4, 8, 12, 15])).to_dict()  # below the knee: not reached
    assert capped["capacity_is_lower_bound"] is True and capped["capacity_rps"] is not None
    steps = model_steps(STAIR)
    steps[3] = dataclasses.replace(steps[3], failures=50, error_ratio=0.05)  # a break before the knee
    broke = analyze_steps(steps).to_dict()
    assert broke["knee"] is None and broke["capacity_is_lower_bound"] is True
    assert any(line.startswith("capacity: at least") and "lower bound" in line for line in broke["summary"])
    with_knee = analyze_steps(model_steps(STAIR)).to_dict()
    assert with_knee["knee"] is not None and with_knee["capacity_is_lower_bound"] is False


def test_the_reason_never_claims_an_unmeasured_generator_or_a_flat_throughput():
    # Target CPU sampled (idle), generator CPU not: nothing may say the generator had CPU to spare.
    steps = model_steps(STAIR, target_cpu_cores=0.3, target_cores_available=2.0)
    basis = analyze_steps(steps).limiting_resource_basis
    assert "generator had CPU to spare" not in basis and "generator's CPU was not sampled" in basis
    # A break without a knee: throughput never flattened, so the reason must not say it did.
    steps = model_steps(STAIR, target_cpu_cores=0.3, target_cores_available=2.0, generator_cpu_cores=0.1,
                        generator_cores_available=1.0)
    steps[3] = dataclasses.replace(steps[3], failures=50, error_ratio=0.05)
    verdict = analyze_steps(steps)
    assert verdict.knee is None and "throughput flat" not in verdict.limiting_resource_basis
    assert "the SLO broke" in verdict.limiting_resource_basis and "generator had CPU to spare" in verdict.limiting_resource_basis
    # One step cannot show throughput rising; two where the second is no faster do not either.
    assert "throughput still rose" not in analyze_steps(model_steps([4])).summary()[0]
    flat = model_steps([4, 8])
    flat[1] = dataclasses.replace(flat[1], rps=flat[0].rps)
    assert "throughput still rose" not in analyze_steps(flat).summary()[0]
    assert "throughput still rose" in analyze_steps(model_steps([4, 8, 12])).summary()[0]


# ------------------------------------------------------------------ real runs

SHORT = ["run", "login-step", "--time-scale", "0.04", "--prometheus", "off"]
STEPS = ["--step-users", "5", "--max-users", "15"]
ENV = {"LOGIN_USERS": "10", "MIN_WAIT_TIME": "200", "MAX_WAIT_TIME": "400"}


@pytest.fixture
def broken_api(spawn):
    """A tiny server answering 500 with {"error": "internal_error"} to everything (healthz included)."""
    port = free_port()
    proc = spawn([sys.executable, "-m", "tests.loadlab.broken_api", "--port", str(port), "--status", "500"],
                 name="broken-api")
    wait_for_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
    return f"http://127.0.0.1:{port}", proc.pid


@pytest.mark.timeout(120)
def test_run_against_an_api_answering_500_stops_at_the_preflight_with_one_message(broken_api, tmp_path):
    url, _ = broken_api
    run = run_loadlab([*SHORT, "--host", url, "--", *STEPS], tmp_path / "reports", env=ENV, timeout=90)
    assert run.returncode == EXIT_API_FAILED, run.output
    problem = [line for line in run.output.splitlines() if "preflight:" in line]
    assert len(problem) == 1, run.output
    assert f"POST {url}/client_registeration" in problem[0] and "HTTP 500 (internal_error)" in problem[0]
    assert "--host" in problem[0] and "LOGIN_ENDPOINT=/client_login" in problem[0] and "request/response" in problem[0]
    assert "capacity" not in run.output and "verdict:" not in run.output and "Traceback" not in run.output


@pytest.mark.timeout(180)
def test_run_past_the_preflight_against_an_api_answering_500_is_a_functional_failure(broken_api, tmp_path):
    url, pid = broken_api  # --target-pid: the sidecar samples its CPU, which stays idle
    run = run_loadlab([*SHORT, "--host", url, "--target-pid", str(pid), "--", *STEPS, "--skip-preflight"],
                      tmp_path / "reports", env=ENV, timeout=150)
    assert run.returncode == EXIT_API_FAILED, run.output
    verdict = run.verdict()
    failure = verdict["functional_failure"]
    assert failure is not None and failure["users"] == 5 and failure["error_ratio"] > 0.5, json.dumps(verdict)[:2000]
    assert failure["top_errors"][0]["status"] == 500 and "HTTP 500 (internal_error)" in failure["top_errors"][0]["error"]
    assert "idle" in failure["reason"]
    assert verdict["capacity_rps"] is None and verdict["knee"] is None and verdict["limiting_resource"] is None
    assert verdict["breaking_point_reached"] is False
    assert "the API failed functionally" in run.output and "HTTP 500 (internal_error)" in run.output
    # Seeding's own complaint reaches the console, not only locust.log.
    assert "locust: seeding: 10 of 10 test users could not be created" in run.output


@pytest.mark.timeout(240)
def test_the_bundled_target_with_a_wrong_login_path(tmp_path, capsys):
    env = {**ENV, "LOGIN_ENDPOINT": "/client_signin"}  # the target has no such route: 404
    common = [*SHORT, "--hash-profile", "lab", "--target-workers", "2"]
    stopped = run_loadlab([*common, "--", *STEPS], tmp_path / "a", env=env, timeout=90)
    assert stopped.returncode == EXIT_API_FAILED, stopped.output
    assert "/client_signin (log in as the user just seeded) answered HTTP 404 (not_found)" in stopped.output

    run = run_loadlab([*common, "--", *STEPS, "--skip-preflight"], tmp_path / "b", env=env, timeout=150)
    assert run.returncode == EXIT_API_FAILED, run.output
    failure = run.verdict()["functional_failure"]
    assert failure["top_errors"][0]["status"] == 404 and failure["top_errors"][0]["request"] == "POST /client_signin"
    assert run.verdict()["capacity_rps"] is None
    # `loadlab analyze` of the same run says the same, and exits the same.
    capsys.readouterr()
    assert cli.main(["analyze", str(run.run_dir), "--no-write"]) == EXIT_API_FAILED
    assert "the API failed functionally" in capsys.readouterr().out
