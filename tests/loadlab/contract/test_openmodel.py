"""The one judge of a step of offered rate (the live rate hunt's and the verdict's)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from loadlab.contract.openmodel import (
    ARRIVALS_WERE_DROPPED,
    LATENCY_GROWING,
    THROUGHPUT_BELOW_OFFERED,
    edge_allowance,
    judge_step,
)
from loadlab.contract.slo import ERROR_RATIO, LATENCY_P95, NOTHING_COMPLETED
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS as TH


def judge(scheduled=100, requests=100, failures=0, dropped=0, p95=100.0, first=80.0, second=80.0, th=TH):
    return judge_step(scheduled, requests, failures, dropped, p95, first, second, th)


def test_a_step_that_keeps_up_is_sustained():
    result = judge()
    assert result.sustained and result.reasons == () and result.detail == ""


def test_completions_short_of_arrivals_by_more_than_the_tolerance():
    # 5 % is the tolerance: 96 of 100 is within it, 94 is not.
    assert judge(requests=96).sustained
    result = judge(requests=94)
    assert result.reasons == (THROUGHPUT_BELOW_OFFERED,)
    assert "completed 94 of 100 arrivals (94%; at most 5 short is in flight or within 5%)" in result.detail


def test_requests_in_flight_at_the_window_edges_are_allowed_for():
    # 15 arrivals/s for 4 s at a light-load response of 200 ms: 3 in flight on average (Little's law),
    # so completions may fall short by 3 x sqrt(2 x 3) = 7.3 more than the 5 % (3) at the edges.
    assert edge_allowance(60, 4.0, 200.0) == pytest.approx(3 * math.sqrt(6))
    assert judge_step(60, 50, 0, 0, 250.0, 200.0, 200.0, TH, 4.0, 200.0).sustained
    assert not judge_step(60, 49, 0, 0, 250.0, 200.0, 200.0, TH, 4.0, 200.0).sustained
    assert not judge_step(60, 50, 0, 0, 250.0, 200.0, 200.0, TH).sustained  # without a light-load time: none


def test_any_dropped_arrival_means_not_sustained():
    result = judge(dropped=1)
    assert result.reasons == (ARRIVALS_WERE_DROPPED,) and "1 arrivals dropped" in result.detail


def test_latency_that_keeps_growing_across_the_hold():
    # +50 % and at least a tenth of the 500 ms SLO (50 ms): a queue that does not drain.
    assert judge(first=100, second=160).reasons == (LATENCY_GROWING,)
    assert judge(first=100, second=140).sustained  # +40 %
    assert judge(first=10, second=40).sustained  # +300 %, but only 30 ms: noise on a fast API
    assert judge(first=None, second=400).sustained  # unknown halves judge nothing


def test_the_slo_is_judged_on_the_corrected_p95():
    result = judge(p95=800.0)
    assert result.reasons == (LATENCY_P95,)
    assert result.detail == "corrected p95 800 ms > 500 ms"
    assert judge(failures=2).reasons == (ERROR_RATIO,)


def test_nothing_completed_is_short_of_throughput_and_a_breach():
    result = judge(requests=0, p95=None)
    assert result.reasons == (THROUGHPUT_BELOW_OFFERED, LATENCY_P95, ERROR_RATIO)
    assert NOTHING_COMPLETED in result.detail


def test_tolerances_come_from_the_thresholds():
    loose = dataclasses.replace(TH, throughput_shortfall_fraction=0.2, latency_growth_fraction=2.0)
    assert judge(requests=85, th=loose).sustained
    assert judge(first=100, second=250, th=loose).sustained
