"""The exporter's open-model families, in-process (the collector duck-types the runner, so no Locust):
present with the contract's names only in arrival-rate runs, exact, and accepted by promtool."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from loadlab.contract import openmodel as names
from locust_tests.plugins.collector import LocustCollector
from locust_tests.plugins.openmodel import OpenStats
from tests.helpers import require_binary


def environment(open_model=None) -> SimpleNamespace:
    runner = SimpleNamespace(stats=SimpleNamespace(entries={}, errors={}), user_count=4, state="running")
    return SimpleNamespace(runner=runner, shape_class=None, open_model=open_model)


def scrape(env: SimpleNamespace) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LocustCollector(env))
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


LATENCIES = (0.004, 0.02, 0.3, 0.75, 12.0, 0.02, 0.02, 0.1)


def open_run() -> SimpleNamespace:
    stats = OpenStats()
    stats.scheduled, stats.late = 10, 3
    stats.drop(names.DROPPED_WAITED_TOO_LONG, 2)
    for seconds in LATENCIES:
        stats.record("POST", "/client_login", seconds)
    return SimpleNamespace(active=True, offered=20.0, stats=stats)


def test_a_closed_model_run_exports_no_open_model_family():
    text = scrape(environment())
    assert "arrival" not in text and "corrected" not in text
    assert "arrival" not in scrape(environment(SimpleNamespace(active=False, offered=0.0, stats=OpenStats())))


def test_open_model_families_carry_the_counts_exactly():
    got = samples(scrape(environment(open_run())))
    login = (("method", "POST"), ("name", "/client_login"))
    assert got[(names.ARRIVAL_RATE, ())] == 20.0
    assert got[(names.ARRIVALS_SCHEDULED, ())] == 10
    assert got[(names.ARRIVALS_LATE, ())] == 3
    assert got[(names.ARRIVALS_DROPPED, (("reason", names.DROPPED_WAITED_TOO_LONG),))] == 2
    assert got[(names.ARRIVALS_DROPPED, (("reason", names.DROPPED_TEST_ENDED),))] == 0
    assert got[(names.CORRECTED_DURATION + "_count", login)] == 8
    assert got[(names.CORRECTED_DURATION + "_bucket", (("le", "0.005"), *login))] == 1
    assert got[(names.CORRECTED_DURATION + "_bucket", (("le", "0.025"), *login))] == 4
    assert got[(names.CORRECTED_DURATION + "_bucket", (("le", "0.75"), *login))] == 7  # le is inclusive
    assert got[(names.CORRECTED_DURATION + "_bucket", (("le", "10.0"), *login))] == 7
    assert got[(names.CORRECTED_DURATION + "_bucket", (("le", "+Inf"), *login))] == 8
    assert abs(got[(names.CORRECTED_DURATION + "_sum", login)] - sum(LATENCIES)) < 1e-9


def test_open_model_exposition_passes_promtool_check_metrics():
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=scrape(environment(open_run())), text=True,
                            capture_output=True, timeout=30)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
