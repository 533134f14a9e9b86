"""Confidence intervals on the verdict (loadlab.uncertainty), checked against synthetic runs whose
truth is known: over many seeds the intervals must cover the truth about 95% of the time."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from loadlab import rundir
from loadlab.contract.histograms import histogram_quantile
from loadlab.history import read_samples, read_stats_history
from loadlab.steps import summarize_steps
from loadlab.uncertainty import (
    BOUNDS,
    MIN_INTERVALS,
    block_length,
    expansion,
    hold_seconds,
    quantile_of_buckets,
    t_quantile,
)
from tests.loadlab.synthetic_runs import Truth, analysed, generate, write_run

# A shorter hunt for the run-level checks (each replicate re-runs the analysis): same server and noise,
# from 50 users on.
SHORT_HUNT = Truth(users=tuple(range(50, 140, 10)))


def test_bucket_quantiles_are_the_one_histogram_quantile():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 5, size=(300, len(BOUNDS))) * (rng.random((300, len(BOUNDS))) < 0.6)
    cumulative = np.cumsum(counts, axis=1).astype(float)
    for q in (0.5, 0.95, 0.99):
        mine = quantile_of_buckets(q, cumulative)
        for row, value in zip(cumulative, mine):
            expected = histogram_quantile(q, dict(zip(BOUNDS, row)))
            assert (expected is None and math.isnan(value)) or value == pytest.approx(expected), (q, row)


def test_student_t_quantiles_and_the_small_sample_widening():
    for df, table in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)):
        assert t_quantile(0.975, df) == pytest.approx(table, abs=1e-3)
    # 5 blocks (a 10 s hold): a t interval on 4 df is 1.58 x as wide as the normal one; many blocks: ~1.
    assert expansion(5) == pytest.approx(math.sqrt(5 / 4) * 2.776 / 1.96, rel=1e-3)
    assert expansion(200) == pytest.approx(1.0, abs=0.02)
    assert [block_length(n) for n in (4, 9, 30, 100)] == [2, 2, 3, 5]


def test_the_resampled_seconds_add_up_to_the_step_figures():
    history, samples = generate(Truth(), seed=5)
    for step in summarize_steps(history, samples):
        sec = hold_seconds(step, history, samples)
        assert sec is not None and sec.source == "locust_exporter"
        assert sec.requests.sum() / sec.dt.sum() == pytest.approx(step.rps, rel=1e-9)
        assert sec.buckets is not None
        p95 = quantile_of_buckets(0.95, sec.buckets.sum(axis=0)[None, :])[0] * 1000.0
        assert p95 == pytest.approx(step.p95_ms, rel=1e-9)


def test_step_intervals_cover_the_truth_about_95_percent_of_the_time():
    truth, seeds = Truth(), 100
    hits: dict[str, list[bool]] = {"rps": [], "p95_ms": []}
    for seed in range(seeds):
        verdict, _ = analysed(truth, seed, run_level=False)
        for step in verdict.steps:
            assert step.rps_ci is not None and step.p95_ms_ci is not None
            hits["rps"].append(step.rps_ci[0] <= truth.rps(step.users) <= step.rps_ci[1])
            hits["p95_ms"].append(step.p95_ms_ci[0] <= truth.p95_ms(step.users) <= step.p95_ms_ci[1])
    for figure, got in hits.items():
        coverage = float(np.mean(got))
        print(f"\n{figure}: measured coverage {coverage:.1%} of {len(got)} intervals ({seeds} seeds x "
              f"{len(truth.users)} steps, 10 s holds, nominal 95%)")
        assert 0.92 <= coverage <= 0.98, figure


def test_capacity_and_knee_intervals_cover_the_truth():
    truth, seeds = SHORT_HUNT, 60
    capacity, knee = [], []
    for seed in range(seeds):
        verdict, _ = analysed(truth, seed, replicates=300)
        assert verdict.capacity_ci is not None
        capacity.append(verdict.capacity_ci[0] <= truth.capacity_rps <= verdict.capacity_ci[1])
        if verdict.knee is not None and verdict.knee.users_ci is not None:
            low, high = verdict.knee.users_ci
            knee.append(low <= truth.knee_users <= (math.inf if high is None else high))
    print(f"\ncapacity: measured coverage {np.mean(capacity):.1%} of {len(capacity)} runs; "
          f"knee: {np.mean(knee):.1%} of {len(knee)} runs (nominal 95%)")
    assert len(knee) >= 0.9 * seeds
    assert np.mean(capacity) >= 0.9 and np.mean(knee) >= 0.9


def test_verdict_json_and_the_summary_carry_the_intervals(tmp_path):
    run = write_run(tmp_path / "run", Truth(), seed=11)
    verdict, _ = rundir.analyze(run)
    data = json.loads((run / rundir.VERDICT).read_text())
    low, high = data["capacity_ci"]
    assert low <= data["capacity_rps"] <= high
    assert data["knee"]["users_ci"][0] <= data["knee"]["users"] <= data["knee"]["users_ci"][1]
    assert data["break"]["users_ci"][1] == data["break"]["users"]
    assert all(s["rps_ci"][0] <= s["rps"] <= s["rps_ci"][1] for s in data["steps"])
    assert all(s["p95_ms_ci"][0] <= s["p95_ms"] <= s["p95_ms_ci"][1] for s in data["steps"])
    assert data["uncertainty"]["per_second_source"] == "locust_exporter"
    line = next(x for x in data["summary"] if x.startswith("capacity:"))
    assert re.fullmatch(r"capacity: [\d.]+ req/s \(95% CI [\d.]+-[\d.]+\)", line), line
    assert "(95% CI " in next(x for x in data["summary"] if x.startswith("knee:"))
    # Same run, same intervals: the bootstrap is seeded.
    again, _ = rundir.analyze(run, write=False)
    assert again.capacity_ci == verdict.capacity_ci


def test_a_plain_locust_csv_gets_throughput_intervals_but_no_p95_interval(tmp_path):
    run = write_run(tmp_path / "csv-only", Truth(), seed=12, with_samples=False)
    verdict, _ = rundir.analyze(run, write=False)
    assert verdict.uncertainty is not None and verdict.uncertainty["per_second_source"] == "locust_csv"
    assert all(s.rps_ci is not None and s.p95_ms_ci is None for s in verdict.steps)
    assert verdict.capacity_ci is not None


def test_holds_too_short_for_an_interval_get_none_and_the_verdict_says_why(tmp_path):
    run = write_run(tmp_path / "short", Truth(step_s=5, users=(10, 20, 30, 40)), seed=1)
    history = read_stats_history(run / "locust_stats_history.csv")
    steps = summarize_steps(history, read_samples(run / "samples.jsonl"))
    assert all(hold_seconds(s, history, read_samples(run / "samples.jsonl")).n < MIN_INTERVALS for s in steps)
    verdict, _ = rundir.analyze(run, write=False)
    assert all(s.rps_ci is None for s in verdict.steps) and verdict.capacity_ci is None
    assert any("no interval for the steps at 10 (" in n and "lengthen the steps" in n for n in verdict.notes), \
        verdict.notes
    assert not any("95% CI" in line for line in verdict.summary())
