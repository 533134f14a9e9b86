"""Error labels of the exporter's collector (Locust-free parts; its buckets are the contract's)."""

from __future__ import annotations

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
