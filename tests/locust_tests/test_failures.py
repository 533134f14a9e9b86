"""Bad situations end quickly with one clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import socket

import pytest

from loadlab.contract.exits import EXIT_API_FAILED
from locust_tests.plugins.cleanup import delete_users
from tests.helpers import PYTHON, free_port, wait_for_http
from tests.locust_tests.conftest import locust_args, run_locust


def test_preflight_against_a_closed_port_exits_nonzero_within_15s(launch):
    host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = launch(locust_args("registration_test", "--headless", "-u", "5", "-r", "5", "-t", "60s",
                              "--host", host, "--exporter-port", "0"), "preflight")
    run = run_locust(proc, timeout=15)
    assert run.returncode != 0
    assert f"preflight: nothing answers at {host}" in run.log
    assert "python -m target_app --port 5000" in run.log and "--skip-preflight" in run.log
    assert "Traceback" not in run.log
    assert "Ramping to" not in run.log  # not a single user was spawned


def test_exporter_port_in_use_is_one_clear_error(launch, target):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = launch(locust_args("registration_test", "--headless", "-u", "1", "-t", "30s", "--host", target.url,
                                  "--exporter-port", str(port)), "port-taken")
        run = run_locust(proc, timeout=30)
    assert run.returncode != 0
    assert f"exporter: cannot listen on 127.0.0.1:{port}" in run.log and "--exporter-port" in run.log
    assert "Traceback" not in run.log


def test_unknown_scenario_names_the_choices(launch, target):
    proc = launch(locust_args("registration_test", "--headless", "--scenario", "stress", "--host", target.url,
                              "--exporter-port", "0"), "bad-scenario")
    run = run_locust(proc, timeout=30)
    assert run.returncode != 0
    assert "unknown --scenario 'stress': this locustfile offers normal, heavy, spike, step" in run.log
    assert "Traceback" not in run.log


def broken_api(launch, name: str, status: int, *answers: str) -> str:
    """A tiny server answering `status` with {"error": CODE} to every path but `answers` (PATH=STATUS)."""
    port = free_port()
    args = [PYTHON, "-m", "tests.loadlab.broken_api", "--port", str(port), "--status", str(status)]
    for answer in answers:
        args += ["--answer", answer]
    proc = launch(args, name)
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/healthz", proc=proc)
    return url


def test_preflight_logs_in_once_and_stops_with_the_answer_when_login_is_refused(launch):
    # Registration works, every login answers 401: the contract differs from the suite's.
    url = broken_api(launch, "login-401", 401, "/client_registeration=201", "/healthz=200")
    proc = launch(locust_args("login_test", "--headless", "-u", "5", "-r", "5", "-t", "60s", "--host", url,
                              "--exporter-port", "0"), "preflight-login")
    run = run_locust(proc, timeout=30)
    assert run.returncode == EXIT_API_FAILED, run.log[-3000:]
    problem = [line for line in run.log.splitlines() if "preflight:" in line]
    assert len(problem) == 1, run.log[-3000:]
    assert f"POST {url}/client_login (log in as the user just seeded) answered HTTP 401 (invalid_credentials)" in problem[0]
    assert "LOGIN_ENDPOINT=/client_login" in problem[0] and "--host" in problem[0] and "--skip-preflight" in problem[0]
    assert "Traceback" not in run.log and "Ramping to" not in run.log


def test_preflight_registers_once_and_stops_on_a_server_error(launch):
    url = broken_api(launch, "all-500", 500)
    proc = launch(locust_args("registration_test", "--headless", "-u", "5", "-r", "5", "-t", "60s", "--host", url,
                              "--exporter-port", "0"), "preflight-registration")
    run = run_locust(proc, timeout=30)
    assert run.returncode == EXIT_API_FAILED, run.log[-3000:]
    assert f"POST {url}/client_registeration (register a user) answered HTTP 500 (internal_error)" in run.log
    assert "Traceback" not in run.log and "Ramping to" not in run.log


def test_the_registration_preflight_user_is_deleted_again_with_a_token(launch, target):
    delete_users(target.url, "lt_preflight-", target.token)  # those of earlier runs without a token
    proc = launch(locust_args("registration_test", "--headless", "-u", "1", "-r", "1", "-t", "1s", "--host",
                              target.url, "--exporter-port", "0"), "preflight-cleanup", env={"LAB_ADMIN_TOKEN": target.token})
    run = run_locust(proc, timeout=60)
    assert run.returncode == 0, run.log[-3000:]
    assert delete_users(target.url, "lt_preflight-", target.token) == 0  # nothing left behind


@pytest.mark.parametrize("scale", ["inf", "nan", "0", "-1"])
def test_a_time_scale_that_is_not_finite_and_positive_is_refused(launch, scale):
    host = f"http://127.0.0.1:{free_port()}"  # never reached: the shape is refused at init
    proc = launch(locust_args("login_test", "--headless", "--scenario", "step", f"--time-scale={scale}",
                              "--host", host, "--skip-preflight", "--exporter-port", "0"), f"time-scale-{scale}")
    run = run_locust(proc, timeout=30)
    assert run.returncode != 0
    assert "--time-scale must be a finite number above 0" in run.log
    assert "Traceback" not in run.log and "Ramping to" not in run.log
