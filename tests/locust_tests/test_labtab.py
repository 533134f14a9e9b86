"""The Lab tab without the lab: plain `locust -f ...` with the suite's plugins shows Locust's own users,
throughput and p95 and the step hunt's judgements, and says what CPU and memory need."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest

from locust_tests.plugins import labview
from tests.helpers import free_port
from tests.locust_tests.conftest import locust_args, run_locust


def fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


@pytest.mark.timeout(120)
def test_without_the_lab_the_tab_shows_locusts_numbers_and_the_hunts_judgements(launch, target):
    port = free_port()
    ui = f"http://127.0.0.1:{port}"
    proc = launch(locust_args("login_test", "--scenario", "step", "--time-scale", "0.02", "--step-users", "3",
                              "--max-users", "9", "--autostart", "--autoquit", "5", "--web-host", "127.0.0.1",
                              "--web-port", str(port), "--host", target.url, "--exporter-port", "0"),
                  "labtab", env={"LOGIN_USERS": "10", "MIN_WAIT_TIME": "100", "MAX_WAIT_TIME": "200"})
    view, page = None, ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.proc.poll() is None:
        body = fetch(f"{ui}/lab/data")
        if body and (view := json.loads(body))["steps"] and view["series"]["users"]:
            page = fetch(f"{ui}/lab") or ""
            break
        time.sleep(0.5)
    run = run_locust(proc, timeout=60)
    assert run.returncode == 0, run.log[-3000:]
    assert view is not None and page, f"the tab never showed a finished step:\n{run.log[-3000:]}"
    assert view["source"] == "locust"
    assert re.search(r'data-key="users" data-points="[1-9]', page) and re.search(r'data-key="rps" data-points="[1-9]', page)
    # The hunt's own judgement of step 1 (the contract's SLO judge), as the hunt logged it.
    first = view["steps"][0]
    assert first["step"] == 1 and first["users"] == 3
    logged = re.search(r"step 1: 3 users, ([\d.]+) req/s, p95 (\S+) ms, errors ([\d.]+)% -> (.+)", run.log)
    assert logged, run.log[-3000:]
    assert abs(first["rps"] - float(logged.group(1))) <= 0.051  # the log rounds to 0.1, the view to 0.01
    assert ("within SLO" in logged.group(4)) == first["slo_met"]
    assert "<td>step 1</td><td>3</td>" in page
    # No sidecar here: the CPU and memory charts say so, and how to get them.
    for chart in ("chart-target", "chart-generator"):
        svg = re.search(rf'<svg class="chart" id="{chart}".*?</svg>', page, re.S).group(0)
        assert "data-key" not in svg
        assert "no sidecar" in svg and "loadlab up" in svg
    assert "lab tab: /lab on the web UI (Locust's own numbers; no lab running)" in run.log


def test_an_empty_chart_always_says_why():
    view = {"state": "ready", "series": {}, "missing": {"target_cpu_cores": "the sidecar has not answered"},
            "t0": 1.0, "t1": 61.0, "slo": {"latency_p95_ms": 500}}
    html = labview.page(labview.panel(view))
    for chart in ("chart-load", "chart-target", "chart-generator", "chart-latency"):
        svg = re.search(rf'<svg class="chart" id="{chart}".*?</svg>', html, re.S).group(0)
        assert 'class="missing"' in svg and "data-key" not in svg, chart
    assert "the sidecar has not answered" in html
    assert "No test running yet" in html


def test_a_chart_with_points_draws_them_and_its_limit():
    view = {"state": "running", "t0": 0.0, "t1": 100.0, "cores_available": {"target": 2.0},
            "series": {"target_cpu_cores": [[10.0, 0.5], [50.0, 1.9]], "users": [[10.0, 5], [50.0, 10]]},
            "steps": [{"step": 1, "users": 5, "start": 10.0, "rps": 9.1, "p95_ms": 120.0, "error_ratio": 0.0,
                       "target_cpu_cores": 0.5, "target_cores_available": 2.0, "slo_met": True, "slo_detail": ""}],
            "summary": ["knee: ~5 users"], "knee": {"time": 50.0, "users": 5.0}}
    html = labview.panel(view)
    assert 'data-key="target_cpu_cores" data-points="2"' in html and "cores available (2)" in html
    assert 'class="mark-knee"' in html and "<li>knee: ~5 users</li>" in html
    assert "0.50 of 2" in html


@pytest.mark.timeout(60)
def test_web_login_without_a_password_is_one_clear_error(launch, target):
    proc = launch(locust_args("login_test", "--web-login", "--web-host", "127.0.0.1", "--web-port", str(free_port()),
                              "--host", target.url, "--exporter-port", "0"), "weblogin")
    run = run_locust(proc, timeout=45)
    assert run.returncode != 0
    assert "--web-login: set LOCUST_WEB_PASSWORD to the password the web UI should ask for" in run.log
