"""Bad situations end quickly with one clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import socket

from tests.helpers import free_port
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
