"""The breaking-point analysis on synthetic step data whose answers are known from operational laws."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import pytest

from loadlab.analysis import analyze_steps, find_break, find_knee
from loadlab.contract.histograms import counter_increase
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS
from loadlab.history import read_samples, read_stats_history
from loadlab.steps import after_stop, detect_plateaus, summarize_steps, window_increase
from tests.loadlab.synthetic import model_steps, write_history


def verdict_of(steps, th=DEFAULT_THRESHOLDS) -> dict:
    """verdict.json of `steps` (the typed verdict, serialized as the lab writes it)."""
    return analyze_steps(steps, th).to_dict()


# W=2 workers, S=50 ms, Z=0.5 s: capacity 40 req/s, knee N* = W(S+Z)/S = 22 users.
STAIR = list(range(4, 48, 4))


def test_knee_and_capacity_match_operational_laws():
    verdict = verdict_of(model_steps(STAIR))
    assert verdict["breaking_point_reached"] is True
    assert verdict["capacity_rps"] == pytest.approx(40.0, rel=0.01)
    assert verdict["knee"]["users"] == pytest.approx(22.0, rel=0.05)
    assert verdict["knee"]["step_users"] == 24  # the first step past the knee
    # p95 = 1.05 (N/X - Z) = 525 ms passes 500 ms first at 40 users.
    assert verdict["break"]["users"] == 40
    assert verdict["break"]["reasons"] == ["latency_p95"]
    assert set(verdict["knee"]) >= {"users", "rps", "p95_ms", "time"}
    json.dumps(verdict)  # the verdict is JSON as it is


@pytest.mark.parametrize("workers,service,think", [(1, 0.02, 0.5), (4, 0.1, 1.0), (2, 0.05, 0.25)])
def test_knee_follows_the_model_for_other_servers(workers, service, think):
    n_star = workers * (service + think) / service
    users = [max(1, round(n_star * f)) for f in (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8)]
    verdict = verdict_of(model_steps(users, workers, service, think))
    assert verdict["capacity_rps"] == pytest.approx(workers / service, rel=0.01)
    assert verdict["knee"]["users"] == pytest.approx(n_star, rel=0.05)


def test_run_capped_below_the_knee_reports_no_breaking_point():
    verdict = verdict_of(model_steps([4, 8, 12, 15]))  # 15 < 0.7 x 22
    assert verdict["breaking_point_reached"] is False
    assert verdict["knee"] is None and verdict["break"] is None
    assert verdict["limiting_resource"] is None
    assert verdict["capacity_rps"] == pytest.approx(15 / 0.55, rel=0.01)  # a lower bound, said so
    assert "not reached" in verdict["summary"][0]


def test_one_noisy_step_in_the_linear_part_is_not_a_knee():
    steps = model_steps(STAIR)
    steps[2] = dataclasses.replace(steps[2], rps=steps[1].rps * 1.02)  # a dip at 12 users
    knee = find_knee(steps)
    assert knee is not None and steps[knee.step].users == 24


def test_errors_before_the_knee_make_the_break_the_finding():
    steps = model_steps(STAIR)
    steps[3] = dataclasses.replace(steps[3], failures=50, error_ratio=0.05)
    verdict = verdict_of(steps)
    assert verdict["break"]["users"] == 16
    assert verdict["break"]["reasons"] == ["error_ratio"]
    assert verdict["knee"] is None
    assert verdict["first_signal"]["signal"] == "error_ratio"


def _with_cpu(target: float, generator: float, target_cores: float = 2.0, generator_cores: float = 1.0):
    return model_steps(STAIR, target_cpu_cores=target, target_cores_available=target_cores,
                       generator_cpu_cores=generator, generator_cores_available=generator_cores)


def test_flat_throughput_with_idle_cpu_is_a_concurrency_limit():
    verdict = verdict_of(_with_cpu(target=0.3, generator=0.2))
    assert verdict["limiting_resource"] == "concurrency"
    assert verdict["measurement_valid"] is True


def test_saturated_target_cpu_is_named():
    verdict = verdict_of(_with_cpu(target=1.9, generator=0.2))
    assert verdict["limiting_resource"] == "target_cpu"
    assert verdict["first_signal"]["signal"] == "target_cpu"  # saturated from the first step in this model


def test_saturated_generator_invalidates_the_measurement():
    verdict = verdict_of(_with_cpu(target=0.5, generator=0.95))
    assert verdict["limiting_resource"] == "generator_cpu"
    assert verdict["measurement_valid"] is False
    assert "workers" in verdict["limiting_resource_basis"]
    assert any("NOT VALID" in line for line in verdict["summary"])


def test_cpu_threshold_comes_from_the_shared_thresholds():
    below = DEFAULT_THRESHOLDS.cpu_saturation_fraction * 2.0 - 0.05
    assert verdict_of(_with_cpu(target=below, generator=0.1))["limiting_resource"] == "concurrency"
    stricter = dataclasses.replace(DEFAULT_THRESHOLDS, cpu_saturation_fraction=0.8)
    assert verdict_of(_with_cpu(target=below, generator=0.1), stricter)["limiting_resource"] == "target_cpu"


def test_an_adaptive_hunts_cpu_is_judged_past_the_refined_steps_at_its_knee():
    # The demo's adaptive hunt: 10, 20, 40, 80 users, then 49, 54, 53, 51 around a knee near 50. Its
    # CPU-bound target got 1.6-1.7 of 2 cores at the steps crowding the knee and 1.85 at 80 users; the
    # fixed hunt's +10 users step reached 1.84 and said target_cpu. Judged on the knee step and the one
    # after it alone (51 and 53 users), it said concurrency.
    users = [10, 20, 40, 80, 49, 54, 53, 51]
    cpu = {10: 0.37, 20: 0.70, 40: 1.43, 49: 1.58, 51: 1.66, 53: 1.62, 54: 1.70, 80: 1.85}
    steps = [dataclasses.replace(s, target_cpu_cores=cpu[s.users], target_cores_available=2.0,
                                 generator_cpu_cores=0.06, generator_cores_available=1.0)
             for s in model_steps(users, workers=2, service_s=0.08, think_s=2.0)]
    verdict = verdict_of(steps)
    assert verdict["knee"] is not None and verdict["knee"]["step_users"] < 80
    assert verdict["limiting_resource"] == "target_cpu", verdict["limiting_resource_basis"]
    assert "at 80 users" in verdict["limiting_resource_basis"]
    # Had the target not got more at 80 users either, it was not its CPU.
    flat = [dataclasses.replace(s, target_cpu_cores=min(s.target_cpu_cores, 1.7)) for s in steps]
    assert verdict_of(flat)["limiting_resource"] == "concurrency"


def test_without_resource_samples_the_limit_is_unknown_and_says_why():
    verdict = verdict_of(model_steps(STAIR))
    assert verdict["limiting_resource"] is None
    assert "no resource samples" in verdict["limiting_resource_basis"]


def _stair_seconds(users_levels, seconds_per_step=10, transient_rps=5.0):
    """Per-second rows: each step's first 2 s at a transient rate, then the model's rate."""
    rows = []
    for users in users_levels:
        rps = min(users / 0.55, 40.0)
        p95 = max(50.0, (users / rps - 0.5) * 1000)
        for second in range(seconds_per_step):
            rows.append((users, transient_rps if second < 2 else rps, 0.0, p95))
    return rows


def test_steps_are_read_from_locust_history_with_the_transient_dropped(tmp_path):
    path = tmp_path / "run_stats_history.csv"
    write_history(path, [(0, 0.0, 0.0, 0.0)] * 2 + _stair_seconds([5, 10, 15]))
    history = read_stats_history(path)
    assert history.windowed_percentiles is True
    assert [len(p) for p in detect_plateaus(history.rows)] == [10, 10, 10]
    steps = summarize_steps(history)
    assert [s.users for s in steps] == [5, 10, 15]
    for step, users in zip(steps, [5, 10, 15]):
        assert step.rps == pytest.approx(users / 0.55, abs=1.0)  # the 5 req/s transient is gone
        assert step.p95_source == "locust_csv_window"
        assert step.target_cpu_cores is None


def test_error_ratio_is_the_delta_over_the_hold(tmp_path):
    path = tmp_path / "run_stats_history.csv"
    write_history(path, [(10, 20.0, 2.0, 100.0)] * 10)
    (step,) = summarize_steps(read_stats_history(path))
    assert step.error_ratio == pytest.approx(0.1, abs=0.01)


def test_a_file_that_is_not_a_stats_history_is_refused_clearly(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a Locust stats history"):
        read_stats_history(path)


def test_response_time_law_recovers_the_think_time_even_from_noisy_light_steps():
    from loadlab.analysis import think_time_s

    steps = model_steps(STAIR)
    assert think_time_s(steps) == pytest.approx(0.5, abs=1e-6)
    # The first step measured 25% high (few requests in a short hold): the knee stays put,
    # because Z comes from every step, not from the first one.
    steps[0] = dataclasses.replace(steps[0], rps=steps[0].rps * 1.25)
    assert verdict_of(steps)["knee"]["users"] == pytest.approx(22.0, rel=0.05)


def test_without_mean_response_times_the_first_steps_give_the_light_load_rate():
    steps = [dataclasses.replace(s, mean_response_ms=None) for s in model_steps(STAIR)]
    assert verdict_of(steps)["knee"]["users"] == pytest.approx(22.0, rel=0.05)


def test_cpu_bound_target_starved_by_a_busy_host_is_still_cpu_limited():
    # W=1, S=20 ms burning CPU: 20 ms of CPU per request. Other processes keep both host cores
    # busy, so the target gets only 0.6 of its one usable core: still a CPU limit.
    steps = model_steps(list(range(5, 55, 5)), workers=1, service_s=0.02, think_s=0.5)
    steps = [dataclasses.replace(s, target_cpu_cores=min(0.6, s.rps * 0.02), target_cores_available=1.0,
                                 generator_cpu_cores=0.05, generator_cores_available=1.0,
                                 host_cpu_busy_cores=1.95, host_cores=2) for s in steps]
    verdict = verdict_of(steps)
    assert verdict["limiting_resource"] == "target_cpu"
    assert "saturated" in verdict["limiting_resource_basis"]


def test_sleeping_target_on_a_busy_host_is_not_called_cpu_limited():
    steps = [dataclasses.replace(s, target_cpu_cores=0.05, target_cores_available=2.0, generator_cpu_cores=0.05,
                                 generator_cores_available=1.0, host_cpu_busy_cores=1.95, host_cores=2)
             for s in model_steps(STAIR)]
    assert verdict_of(steps)["limiting_resource"] == "concurrency"


def test_a_flat_last_step_alone_is_not_a_knee():
    steps = model_steps([4, 8, 12, 16])
    steps[-1] = dataclasses.replace(steps[-1], rps=steps[-2].rps)  # noise, or a knee: one step cannot tell
    assert find_knee(steps) is None


def test_a_hold_the_sampler_fell_behind_on_still_gets_its_cpu_from_the_samples_around_it():
    # A busy host: the sidecar answered every 1.5 s, so a 2.5 s hold held one sample. 0.8 cores all along.
    cpu = [(t, 0.8 * t) for t in (47.2, 48.6, 50.1, 51.6, 53.1)]
    increase, seconds = window_increase(cpu, 48.7, 51.2)
    assert increase / seconds == pytest.approx(0.8) and seconds == pytest.approx(3.0)
    assert window_increase(cpu, 48.0, 51.0) == counter_increase(cpu, 48.0, 51.0)  # inside first
    # Samples more than a second away say nothing about the hold: no figure, not a wrong one.
    assert window_increase([(40.0, 0.0), (60.0, 16.0)], 48.7, 51.2) is None
    assert window_increase(cpu[:2], 48.7, 51.2) is None  # nothing after the hold
# --- steps as an adaptive hunt runs them: uneven, out of order, with a back-off ---------------

# W=16, S=80 ms, Z=0.5 s: 200 req/s, N* = 116. Grown x2 to 160, refined around the knee below it,
# then on the plateau and past the break, in this order.
ADAPTIVE_RUN = [10, 20, 40, 80, 160, 131, 151, 113, 118, 184, 212]


def test_steps_out_of_order_give_the_verdict_of_the_same_steps_in_order():
    ran = model_steps(ADAPTIVE_RUN, workers=16, service_s=0.08)
    in_order = sorted(ran, key=lambda s: s.users)
    shuffled, sorted_ = verdict_of(ran), verdict_of(in_order)
    for key in ("knee", "break", "capacity_rps", "limiting_resource", "first_signal"):
        assert shuffled[key] == sorted_[key], key
    assert shuffled["knee"]["users"] == pytest.approx(116, rel=0.05)
    assert shuffled["knee"]["step_users"] == 118  # the first measured step past the knee
    assert shuffled["capacity_rps"] == pytest.approx(200, rel=0.01)
    assert shuffled["break"]["users"] == 212  # p95 = 1.05 (N/X - Z) passes 500 ms from 196 users
    assert [s["users"] for s in shuffled["steps"]] == ADAPTIVE_RUN  # listed as they ran


def test_find_knee_and_find_break_index_the_steps_as_given():
    ran = model_steps(ADAPTIVE_RUN, workers=16, service_s=0.08)
    knee, brk = find_knee(ran), find_break(ran)
    assert knee is not None and ran[knee.step].users == 118 and ran[knee.detected_at].users >= 118
    assert brk is not None and ran[brk].users == 212


def test_a_back_off_to_a_level_already_measured_is_one_more_sample_of_it():
    # After a bad step the hunt may run a lower level again: the same users twice add nothing.
    ran = model_steps([*ADAPTIVE_RUN[:5], 40, *ADAPTIVE_RUN[5:]], workers=16, service_s=0.08)
    verdict = verdict_of(ran)
    assert verdict["knee"]["users"] == pytest.approx(116, rel=0.05)
    assert verdict["capacity_rps"] == pytest.approx(200, rel=0.01)


def test_a_latency_breach_refuted_by_more_users_is_a_hiccup_not_the_break():
    # The host stalled during the 40-user step (p95 900 ms); 80 and 160 users met the SLO after it.
    steps = model_steps(ADAPTIVE_RUN, workers=16, service_s=0.08)
    steps[2] = dataclasses.replace(steps[2], p95_ms=900.0, rps=steps[2].rps * 0.6)
    verdict = verdict_of(steps)
    assert verdict["break"]["users"] == 212
    assert verdict["knee"]["users"] == pytest.approx(116, rel=0.05)
    assert any("not the break: 40 users" in line and "80 users met it" in line for line in verdict["summary"])
    # Failures are never a hiccup: the same step failing 5 % of its requests is the break.
    steps[2] = dataclasses.replace(steps[2], p95_ms=50.0, failures=50, error_ratio=0.05)
    assert verdict_of(steps)["break"]["users"] == 40


def test_plateaus_of_a_hunt_that_backs_off_to_zero_users_and_refines_below():
    # 10, 20, 40 users, a bad 80, 0 users while the target drains, then 60: uneven and not monotonic.
    levels = [10, 20, 40, 80, 0, 60]
    rows = []
    for users in levels:
        rows += [(users, users / 0.55 if users else 0.0, 0.0, 100.0)] * (4 if users == 0 else 10)
    path_rows = write_rows(rows)
    plateaus = detect_plateaus(path_rows)
    assert [p[0].users for p in plateaus] == [10, 20, 40, 80, 60]  # the drain is no step
    assert [len(p) for p in plateaus] == [10] * 5


def write_rows(seconds):
    from loadlab.history import HistoryRow

    rows, total = [], 0.0
    for i, (users, rps, _fail, p95) in enumerate(seconds):
        total += rps
        rows.append(HistoryRow(t=1_700_000_000 + i, users=users, requests=int(total), failures=0, p50_ms=p95 / 2,
                               p95_ms=p95))
    return rows


# Recorded from a real distributed run (tests/loadlab/test_scale_out.py, 2026-12-02: `--remote-workers 2`,
# steps of 2 to 12 users): its CSV, and the exporter's gauges from samples.jsonl. After the hunt's last
# step Locust's master quit and its exporter said the test had stopped (`locust_running` 0 from
# 1796177657.4), yet its CSV went on for 5 s at 12 users, with no requests: the workers' goodbyes
# were never read, so the master still counted their users.
REMOTE_TAIL = Path(__file__).parent / "data" / "remote_tail"
STOPPED_AT = 1796177657.4


@pytest.mark.parametrize("tail_users", [12, 6], ids=["as-recorded", "one-goodbye-read"])
def test_rows_written_after_a_distributed_test_stopped_are_no_step(tail_users):
    history = read_stats_history(REMOTE_TAIL / "locust_stats_history.csv")
    samples = read_samples(REMOTE_TAIL / "samples.jsonl")
    # The same run had the master read one worker's goodbye first: half the users in the tail.
    history.rows = [dataclasses.replace(r, users=tail_users) if r.t >= 1796177658 else r for r in history.rows]

    stale = after_stop(history.rows, samples.scrapes("locust"))
    assert [(r.t, r.users) for r in stale] == [(1796177657.0, 12)] + [(1796177658.0 + i, tail_users) for i in range(4)]
    steps = summarize_steps(history, samples)
    assert [s.users for s in steps] == [2, 4, 6, 8, 10, 12]
    assert all(s.end < STOPPED_AT for s in steps)
    # The last step's throughput is what the workers sent at 12 users (19 requests in 2 s), not a
    # collapse to 0 req/s that the stale rows would make of it (or of a step of their own).
    assert steps[-1].rps == pytest.approx(9.5) and steps[-1].requests == 19
    # Judged by an SLO the whole run met: no break, and the capacity is the plateau's from the knee
    # on (with the stale rows: a break at 6 users "at 0.0 req/s", or a knee at 4 and 7.67 req/s).
    verdict = analyze_steps(steps, dataclasses.replace(DEFAULT_THRESHOLDS, latency_p95_seconds=5.0))
    assert verdict.brk is None and verdict.knee is not None and verdict.knee.step_users == 6, verdict.summary()
    assert verdict.capacity_rps == pytest.approx(statistics.median(s.rps for s in steps[2:]), abs=0.01)


def test_without_the_exporters_word_every_row_is_kept():
    history = read_stats_history(REMOTE_TAIL / "locust_stats_history.csv")
    assert after_stop(history.rows, []) == []  # a plain Locust CSV: nothing says when its test stopped


def test_a_capacity_from_below_a_knee_whose_steps_all_breached_is_a_lower_bound():
    # A CI run: 8 users 11.3 req/s (p95 242 ms), 16 users 19.1 (571 ms), 24 users 19.2 (968 ms). The knee is at
    # 16 users, where the SLO (500 ms) already broke: the capacity, the best step that met it, was printed
    # as "capacity: 11.28 req/s", as if measured on the plateau.
    steps = model_steps([8, 16, 24], workers=4, service_s=0.2, think_s=0.5)
    steps = [dataclasses.replace(s, p95_ms=p95) for s, p95 in zip(steps, (242.0, 571.0, 968.0))]
    verdict = verdict_of(steps)
    assert verdict["knee"] is not None and verdict["break"]["users"] == 16
    assert verdict["capacity_rps"] == pytest.approx(steps[0].rps, rel=0.01)
    assert verdict["capacity_is_lower_bound"] is True
    assert any(line.startswith("capacity: at least") and "no step from the knee on met it" in line
               for line in verdict["summary"]), verdict["summary"]
    # With a plateau step that met the SLO, the capacity is that plateau's, and no bound.
    met = verdict_of([dataclasses.replace(s, p95_ms=min(s.p95_ms, 400.0)) if s.users == 16 else s for s in steps])
    assert met["capacity_is_lower_bound"] is False and met["capacity_rps"] > steps[0].rps
