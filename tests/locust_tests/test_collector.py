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
