"""The shared arithmetic: latency buckets, Prometheus' histogram_quantile, counter increases."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadlab.contract.histograms import (
    LATENCY_BUCKETS_SECONDS,
    GroupedBuckets,
    bucket_deltas,
    buckets_of_response_times,
    counter_increase,
    cumulative_buckets,
    histogram_quantile,
    rate_series,
)


def test_buckets_include_the_slo_relevant_bounds():
    assert {0.1, 0.25, 0.5, 1.0, 2.5} <= set(LATENCY_BUCKETS_SECONDS)


def test_cumulative_buckets_count_locusts_rounded_times():
    # Locust stores 4 ms, 100 ms, 250 ms (rounded key), 1200 ms and 30000 ms.
    counts = buckets_of_response_times({4: 3, 100: 2, 250: 1, 1200: 4, 30000: 1})
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


@given(st.lists(st.lists(st.tuples(st.integers(0, 120_000), st.integers(1, 50)), max_size=30), max_size=8),
       st.integers(0, 7))
def test_grouped_buckets_equal_cumulative_buckets_as_a_dict_grows_and_is_replaced(batches, reset_at):
    # As Locust uses a StatsEntry's dict: counts grow and keys are added between readings; a stats
    # reset replaces the dict with a new, empty one.
    grouped, times = GroupedBuckets(), {}
    for i, batch in enumerate(batches):
        if i == reset_at:
            times = {}
        for ms, count in batch:
            times[ms] = times.get(ms, 0) + count
        assert grouped.counts(times) == cumulative_buckets(times)


def test_histogram_quantile_interpolates_like_prometheus():
    buckets = {0.1: 50.0, 0.25: 90.0, 0.5: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.25 + 0.25 * 0.5)
    assert histogram_quantile(0.9, {0.5: 10.0, float("inf"): 100.0}) == 0.5  # rank in +Inf: highest bound
    assert histogram_quantile(0.95, {0.5: 0.0, float("inf"): 0.0}) is None  # nothing counted


def test_bucket_deltas_refuse_a_reset_between_readings():
    before = {0.1: 5.0, float("inf"): 8.0}
    assert bucket_deltas(before, {0.1: 7.0, float("inf"): 12.0}) == {0.1: 2.0, float("inf"): 4.0}
    assert bucket_deltas(before, {0.1: 1.0, float("inf"): 2.0}) is None


def test_a_counter_reset_counts_again_from_zero():
    points = [(0.0, 10.0), (1.0, 15.0), (2.0, 3.0), (3.0, 6.0)]
    assert counter_increase(points, 0.0, 3.0) == (5.0 + 3.0 + 3.0, 3.0)
    assert counter_increase(points, 0.5, 1.5) is None  # one sample says nothing
    assert rate_series(points) == [(1.0, 5.0), (2.0, 3.0), (3.0, 3.0)]
