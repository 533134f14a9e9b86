"""Error labels of the exporter's collector (Locust-free parts; its buckets are the contract's)."""

from __future__ import annotations

import pytest

from locust_tests.plugins.collector import ERROR_TEXT_MAX, OTHER_ERROR, ErrorLabels, short_error


def test_errors_are_shortened_to_one_line_without_addresses():
    text = "ConnectionResetError at 0x7f3a2b1c\n   while reading " + "x" * 200
    short = short_error(text)
    assert "\n" not in short and "0x7f3a2b1c" not in short
    assert len(short) <= ERROR_TEXT_MAX and short.endswith("...")


def test_distinct_error_texts_are_capped_and_stable():
    labels = ErrorLabels(limit=2)
    assert labels.label("e1") == "e1"
    assert labels.label("e2") == "e2"
    assert labels.label("e3") == OTHER_ERROR
    assert labels.label("e1") == "e1"  # admitted values stay admitted
    labels.reset()  # a new test
    assert labels.label("e3") == "e3"


def test_the_hunt_phase_is_an_enum_of_fixed_series_with_the_current_one_at_1():
    from types import SimpleNamespace

    from locust_tests.plugins.collector import LocustCollector
    from locust_tests.plugins.presets import PHASES

    stats = SimpleNamespace(entries={}, errors={})
    runner = SimpleNamespace(stats=stats, user_count=40, state="running")
    shape = SimpleNamespace(current_step=4, hunt_phase="refine")
    families = {f.name: f for f in LocustCollector(SimpleNamespace(runner=runner, shape_class=shape)).collect()}
    phases = {s.labels["phase"]: s.value for s in families["locust_hunt_phase"].samples}
    assert phases == {name: (1 if name == "refine" else 0) for name in PHASES}
    assert families["locust_step"].samples[0].value == 4
    # Without a step hunt (a preset, or plain -u/-r) neither is exported.
    plain = {f.name for f in LocustCollector(SimpleNamespace(runner=runner, shape_class=None)).collect()}
    assert "locust_hunt_phase" not in plain and "locust_step" not in plain


def test_the_stats_time_is_the_render_standalone_and_the_workers_reports_on_a_master(monkeypatch):
    from types import SimpleNamespace

    from locust_tests.plugins import collector
    from locust_tests.plugins.collector import LocustCollector, StatsTime

    now = [1000.0]
    monkeypatch.setattr(collector.time, "time", lambda: now[0])
    standalone = StatsTime(SimpleNamespace())
    assert standalone() == 1000.0  # each request counted as it ends: current at the render
    workers: dict[str, object] = {"a": object(), "b": object()}
    master = StatsTime(SimpleNamespace(clients=workers))
    assert master() == 1000.0  # no report yet
    now[0] = 1000.2
    master.report("a")
    now[0] = 1000.9
    master.report("b")
    now[0] = 1001.5
    assert master() == pytest.approx(1000.55)  # the mean of its workers' reports, not the render's 1001.5
    now[0] = 1001.2
    master.report("a")
    assert master() == pytest.approx(1001.05)
    del workers["b"]  # a worker leaves with its older report: the time never goes back
    now[0] = 1001.3
    assert master() == pytest.approx(1001.2)
    workers["c"] = object()
    master.report("c")  # at 1001.3
    assert master() == pytest.approx(1001.25)
    # The collector exports it, and only when given one (the exposition tests compare renders).
    stats = SimpleNamespace(entries={}, errors={})
    runner = SimpleNamespace(stats=stats, user_count=1, state="running")
    env = SimpleNamespace(runner=runner, shape_class=None)
    families = {f.name: f for f in LocustCollector(env, stats_time=lambda: 1234.5).collect()}
    assert families["locust_stats_timestamp_seconds"].samples[0].value == 1234.5
    assert "locust_stats_timestamp_seconds" not in {f.name for f in LocustCollector(env).collect()}
