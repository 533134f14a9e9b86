"""One SLO judge, one choice of thresholds: the hunt, the verdict and the rules agree."""

from __future__ import annotations

import pytest

from loadlab.analysis import breaches_slo
from loadlab.contract import thresholds
from loadlab.contract.histograms import buckets_of_response_times, histogram_quantile
from loadlab.contract.slo import ERROR_RATIO, LATENCY_P95, NOTHING_COMPLETED, judge
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS, ThresholdError
from locust_tests.plugins.presets import p95_ms
from tests.loadlab.synthetic import model_step

TH = DEFAULT_THRESHOLDS


def test_a_window_in_which_nothing_completed_breaches_both_signals():
    verdict = judge(0, 0, None, TH)
    assert verdict.breached and set(verdict.reasons) == {LATENCY_P95, ERROR_RATIO}
    assert verdict.detail == NOTHING_COMPLETED


def test_errors_and_latency_are_judged_against_the_thresholds_given():
    assert not judge(100, 1, 500.0, TH).breached  # both exactly at the SLO: met
    assert judge(100, 2, 100.0, TH).reasons == (ERROR_RATIO,)
    assert judge(100, 0, 501.0, TH).reasons == (LATENCY_P95,)
    strict = thresholds.resolve({}, p95_ms=300)
    assert judge(100, 0, 400.0, strict).reasons == (LATENCY_P95,)
    assert not judge(100, 0, 400.0, TH).breached


def test_the_verdict_asks_the_same_judge_as_the_hunt():
    silent = model_step(0, 10, 2, 0.05, 0.5)
    silent.requests, silent.p95_ms = 0, None
    assert breaches_slo(silent, TH) == [LATENCY_P95, ERROR_RATIO]  # was "no breach" before one judge


def test_the_hunt_estimates_p95_exactly_as_the_verdict_does():
    # The hunt sees Locust's {ms: count}; the verdict sees the exporter's buckets of the same times.
    times = {12: 400, 80: 300, 180: 200, 420: 60, 900: 40}
    from_buckets = histogram_quantile(0.95, buckets_of_response_times(times)) * 1000
    assert p95_ms(times) == pytest.approx(from_buckets)
    assert 250 < p95_ms(times) < 500


def test_flags_beat_variables_which_beat_defaults():
    env = {"SLO_P95_MS": "250", "SLO_ERROR_RATIO": "0.05", "STEP_TRANSIENT_FRACTION": "0.5"}
    th = thresholds.resolve(env)
    assert (th.latency_p95_ms, th.error_ratio, th.step_transient_fraction) == (250.0, 0.05, 0.5)
    th = thresholds.resolve(env, p95_ms=800, error_ratio=0.2)
    assert (th.latency_p95_ms, th.error_ratio) == (800.0, 0.2)
    assert thresholds.resolve({}) == DEFAULT_THRESHOLDS


@pytest.mark.parametrize(("env", "flags", "named"), [
    ({"SLO_P95_MS": "nan"}, {}, "SLO_P95_MS"),
    ({"SLO_P95_MS": "fast"}, {}, "SLO_P95_MS"),
    ({"SLO_ERROR_RATIO": "2"}, {}, "SLO_ERROR_RATIO"),
    ({"STEP_TRANSIENT_FRACTION": "0.95"}, {}, "STEP_TRANSIENT_FRACTION"),
    ({}, {"p95_ms": float("inf")}, "--slo-p95-ms"),
    ({}, {"error_ratio": -0.1}, "--slo-error-ratio"),
])
def test_a_bad_threshold_is_refused_naming_where_it_came_from(env, flags, named):
    with pytest.raises(ThresholdError, match=named):
        thresholds.resolve(env, **flags)


def test_recorded_thresholds_round_trip_and_reach_the_suite_unchanged():
    th = thresholds.resolve({}, p95_ms=350, error_ratio=0.02)
    assert thresholds.from_dict(thresholds.as_dict(th)) == th
    assert thresholds.resolve(thresholds.to_env(th)) == th
