"""Histogram buckets and error labels of the exporter's collector (Locust-free parts)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from locust_tests.plugins.collector import (
    BUCKETS_SECONDS,
    ERROR_TEXT_MAX,
    OTHER_ERROR,
    ErrorLabels,
    cumulative_buckets,
    short_error,
)


def test_buckets_include_the_slo_relevant_bounds():
    assert {0.1, 0.25, 0.5, 1.0, 2.5} <= set(BUCKETS_SECONDS)


def test_cumulative_buckets_count_locusts_rounded_times():
    # Locust stores 4 ms, 100 ms, 250 ms (rounded key), 1200 ms and 30000 ms.
    times = {4: 3, 100: 2, 250: 1, 1200: 4, 30000: 1}
    counts = dict(zip([*BUCKETS_SECONDS, float("inf")], cumulative_buckets(times)))
    assert counts[0.005] == 3
    assert counts[0.075] == 3
    assert counts[0.1] == 5  # le is inclusive
    assert counts[0.25] == 6
    assert counts[1.0] == 6
    assert counts[2.5] == 10
    assert counts[10.0] == 10
    assert counts[float("inf")] == 11


@given(st.dictionaries(st.integers(0, 120_000), st.integers(1, 1000), max_size=60))
def test_buckets_are_monotonic_and_inf_counts_everything(times):
    counts = cumulative_buckets(times)
    assert counts == sorted(counts)
    assert counts[-1] == sum(times.values())


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
