"""The open-model verdict on synthetic runs with known answers (tests/loadlab/open_synthetic.py),
and end to end through `loadlab analyze` on a run directory."""

from __future__ import annotations

import dataclasses
import json

import pytest

from loadlab import cli, generators, rundir, targets
from loadlab.contract.exits import EXIT_API_FAILED
from loadlab.contract.openmodel import ARRIVALS_WERE_DROPPED, LATENCY_GROWING, THROUGHPUT_BELOW_OFFERED
from loadlab.contract.slo import LATENCY_P95
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS as TH
from loadlab.history import Samples, Scrape
from loadlab.openmodel import analyze_samples, judge_machines, step_summaries
from loadlab.ratesteps import is_open_run, summarize_rate_steps
from loadlab.steps import resource_series
from loadlab.verdict import CONCURRENCY, GENERATOR_CONCURRENCY, GENERATOR_CPU, TARGET_CPU, Verdict
from tests.loadlab.open_synthetic import open_run
from tests.loadlab.synthetic import write_history

META = {"host_cores": 2, "target_workers": 2, "generator_processes": 1}


def verdict_of(samples: Samples, th=TH, run_errors=None):
    return analyze_samples(samples, META, th, resource_series(samples, META), run_errors=run_errors)


def test_steps_are_plateaus_of_the_offered_rate_with_both_latencies():
    steps = summarize_rate_steps(open_run([10, 20, 30], capacity=100, service_s=0.05))
    assert [s.offered_rps for s in steps] == [10, 20, 30]
    for step in steps:
        assert step.scheduled_rps == pytest.approx(step.offered_rps, rel=0.01)
        assert step.achieved_rps == pytest.approx(step.offered_rps, rel=0.01)
        assert step.sustained and step.late == 0 and step.dropped == 0
        # 50 ms sits in the (25, 50] ms bucket: interpolated, both ways alike while nothing waits.
        assert step.corrected_p95_ms == step.p95_ms == pytest.approx(25 + 25 * 0.95)
        assert step.slots == 100


def test_a_hunt_past_the_capacity_breaks_at_the_first_step_above_it():
    verdict = verdict_of(open_run([10, 20, 30, 40, 50], capacity=35, service_s=0.05))
    assert verdict.open_model and verdict.breaking_point_reached
    assert verdict.brk is not None and verdict.brk.rate == 40
    assert THROUGHPUT_BELOW_OFFERED in verdict.brk.reasons and LATENCY_GROWING in verdict.brk.reasons
    assert verdict.capacity_rps == pytest.approx(35, rel=0.02)  # the throughput while overloaded
    assert verdict.max_sustained_rate == 30
    assert verdict.limiting_resource == CONCURRENCY  # 0.1 cores of 2: not CPU
    summary = "\n".join(verdict.summary())
    assert "break: 40 arrivals/s offered (achieved 35.0 req/s" in summary
    assert "capacity: 35.0 req/s (the throughput while overloaded)" in summary
    assert "max sustained rate: 30 arrivals/s" in summary


def test_the_verdict_json_names_the_rate_and_every_step():
    out = verdict_of(open_run([10, 20, 30, 40], capacity=25)).to_dict()
    assert out["open_model"] is True and out["break"]["rate"] == 30 and out["max_sustained_rate"] == 20
    assert [s["offered_rps"] for s in out["rate_steps"]] == [10, 20, 30, 40]
    step = out["rate_steps"][2]
    for key in ("scheduled_rps", "achieved_rps", "late", "dropped", "corrected_p50_ms", "corrected_p95_ms",
                "corrected_p99_ms", "p50_ms", "p95_ms", "p99_ms", "sustained", "reasons"):
        assert key in step, key
    json.dumps(out)


def test_a_run_that_keeps_up_has_no_break_and_no_capacity():
    verdict = verdict_of(open_run([10, 20], capacity=100))
    assert verdict.brk is None and verdict.capacity_rps is None and verdict.max_sustained_rate is None
    assert "break not reached: every step was sustained up to 20 arrivals/s" in "\n".join(verdict.summary())


def test_dropped_arrivals_alone_mean_not_sustained():
    verdict = verdict_of(open_run([10, 20, 30], capacity=1000, drop_at=20))
    assert verdict.brk is not None and verdict.brk.rate == 20
    assert ARRIVALS_WERE_DROPPED in verdict.brk.reasons


def test_slo_breached_on_corrected_latency_while_throughput_keeps_up():
    # The API keeps up with every rate, but every request takes 600 ms: the SLO breaks, and since
    # nothing was overloaded the ceiling is not known: no capacity figure rather than a wrong one.
    verdict = verdict_of(open_run([10, 20], capacity=1000, service_s=0.6))
    assert verdict.brk is not None and verdict.brk.rate == 10 and verdict.brk.reasons == (LATENCY_P95,)
    assert verdict.capacity_rps is None
    assert "capacity: unknown" in "\n".join(verdict.summary())


def test_queueing_in_the_generator_is_seen_only_by_the_corrected_latency():
    # 4 slots of 100 ms: at most 40 req/s leave the generator; the backlog waits for a slot.
    steps = summarize_rate_steps(open_run([20, 30, 50, 60], capacity=40, service_s=0.1, slots=4,
                                          queue_at="generator"))
    overloaded = steps[2]
    assert overloaded.late > 0
    assert overloaded.p95_ms == pytest.approx(steps[0].p95_ms)  # Locust's own latency: unchanged
    assert overloaded.corrected_p95_ms > 2 * overloaded.p95_ms


def test_the_generators_own_slots_are_named_as_the_limit():
    verdict = verdict_of(open_run([20, 30, 50, 60], capacity=40, service_s=0.1, slots=4, queue_at="generator"))
    assert verdict.limiting_resource == GENERATOR_CONCURRENCY and not verdict.measurement_valid
    assert "all 4 request slots were in use" in verdict.limiting_resource_basis
    assert any("MEASUREMENT NOT VALID" in line for line in verdict.summary())


def test_a_saturated_target_cpu_is_named_at_the_rate_of_the_break():
    verdict = verdict_of(open_run([10, 20, 30, 40], capacity=25, target_cores=1.95))
    assert verdict.limiting_resource == TARGET_CPU
    assert "at the 30 arrivals/s step" in verdict.limiting_resource_basis


def test_tolerances_come_from_the_thresholds():
    # 10 % over the capacity, judged over a 7 s hold: not sustained at the default 5 % tolerance...
    samples = open_run([10, 20, 33], capacity=30, step_s=10)
    assert verdict_of(samples).brk is not None
    # ...sustained when 20 % short is tolerated and the SLO and growth allow it.
    loose = dataclasses.replace(TH, throughput_shortfall_fraction=0.2, latency_growth_fraction=50.0,
                                latency_p95_seconds=60.0)
    assert verdict_of(samples, loose).brk is None


def test_an_api_failing_functionally_at_the_first_rate_is_no_break_and_no_capacity():
    # Every login answered 401: the first step "breaks" on errors, but that is the API failing, not
    # a capacity found (the closed model's rule, loadlab.functional, applied to the rate steps).
    verdict = verdict_of(open_run([10, 20, 30], capacity=100, fail_ratio=1.0), run_errors=[])
    failure = verdict.functional_failure
    assert failure is not None and failure.rate == 10 and failure.error_ratio == pytest.approx(1.0)
    assert failure.top_errors[0].status == 401 and "over this step" in failure.errors_source
    assert verdict.brk is None and verdict.capacity_rps is None and verdict.max_sustained_rate is None
    summary = "\n".join(verdict.summary())
    assert "the API failed functionally: at 10 arrivals/s offered, 100% of requests failed" in summary
    assert verdict.to_dict()["functional_failure"]["rate"] == 10


def test_failures_from_overload_are_a_break_not_a_functional_failure():
    # 3 % of requests fail with connection errors (no HTTP status): an SLO breach, judged as capacity.
    verdict = verdict_of(open_run([10, 20], capacity=100, fail_ratio=0.03, error="ConnectionResetError(104)"),
                         run_errors=[])
    assert verdict.functional_failure is None and verdict.brk is not None and verdict.brk.rate == 10


def write_run_dir(path, samples: Samples, scenario: str = "login-rate-step") -> None:
    """A run directory (samples.jsonl, Locust's stats history, run.json) holding `samples`."""
    with open(path / rundir.SAMPLES, "w") as fh:
        for scrape in sorted((s for ss in samples.by_source.values() for s in ss), key=lambda s: s.t):
            fh.write(json.dumps({"t": scrape.t, "source": scrape.source, "ok": True, "samples": scrape.samples}) + "\n")
    seconds = [(100, 10.0, 0.0, 50.0)] * 45
    write_history(path / f"{rundir.LOCUST_PREFIX}{rundir.HISTORY_SUFFIX}", seconds, t0=int(samples.scrapes("locust")[0].t))
    (path / rundir.RUN_META).write_text(json.dumps({"scenario": scenario, **META}))


def test_loadlab_analyze_exits_3_for_a_rate_run_whose_api_fails(tmp_path, capsys):
    write_run_dir(tmp_path, open_run([10, 20, 30], capacity=100, fail_ratio=1.0))
    assert cli.main(["analyze", str(tmp_path)]) == EXIT_API_FAILED
    assert "the API failed functionally: at 10 arrivals/s offered" in capsys.readouterr().out
    assert json.loads((tmp_path / rundir.VERDICT).read_text())["capacity_rps"] is None


def test_a_partial_rate_run_is_judged_up_to_its_fault(tmp_path):
    samples = open_run([10, 20, 30, 40], capacity=25)
    write_run_dir(tmp_path, samples)
    cut = samples.scrapes("locust")[0].t + 15  # died in the second step: only the first one is whole
    meta = json.loads((tmp_path / rundir.RUN_META).read_text())
    (tmp_path / rundir.RUN_META).write_text(json.dumps({**meta, "incomplete": "a Locust worker died",
                                                        "incomplete_at": cut}))
    verdict, _ = rundir.analyze(tmp_path, write=False)
    assert not verdict.complete and verdict.summary()[0].startswith("PARTIAL verdict")
    assert all(s.end <= cut for s in verdict.rate_steps) and verdict.brk is None
    assert [s.offered_rps for s in verdict.rate_steps] == [10, 20]


def test_loadlab_analyze_writes_the_open_model_verdict_and_report(tmp_path):
    samples = open_run([10, 20, 30, 40], capacity=25)
    with open(tmp_path / rundir.SAMPLES, "w") as fh:
        for scrape in sorted((s for ss in samples.by_source.values() for s in ss), key=lambda s: s.t):
            fh.write(json.dumps({"t": scrape.t, "source": scrape.source, "ok": True, "samples": scrape.samples}) + "\n")
    seconds = [(100, 10.0, 0.0, 50.0)] * 45
    write_history(tmp_path / f"{rundir.LOCUST_PREFIX}{rundir.HISTORY_SUFFIX}", seconds, t0=int(samples.scrapes("locust")[0].t))
    (tmp_path / rundir.RUN_META).write_text(json.dumps({"scenario": "login-rate-step", **META}))
    assert is_open_run(samples)
    verdict, _ = rundir.analyze(tmp_path)
    assert verdict.open_model and verdict.brk is not None and verdict.brk.rate == 30
    written = json.loads((tmp_path / rundir.VERDICT).read_text())
    assert written["break"]["rate"] == 30 and len(written["rate_steps"]) == 4
    report = (tmp_path / rundir.REPORT).read_text()
    assert 'id="rate-steps"' in report and "break (arrivals/s offered)" in report
    assert report.count('class="chart"') == 7  # offered vs achieved, corrected latency, and the five of any run


@pytest.mark.parametrize("exporter_says_when", [True, False])
def test_a_steps_rate_is_over_the_times_its_counts_were_current(tmp_path, exporter_says_when):
    # The exporter serves what Locust's loop last rendered, 0-1 s before the scrape. Over a 5 s hold
    # a rate over scrape times then reads up to a fifth too high or low (a CI run: 45.4 req/s
    # achieved from a server that serves 40). Its LOCUST_STATS_TIMESTAMP gives the render's time.
    from itertools import cycle

    from loadlab.contract.names import LOCUST_STATS_TIMESTAMP
    from loadlab.history import read_samples

    truth = open_run([10, 20, 40, 60], capacity=30, step_s=8)
    render_age = cycle([0.9, 0.1, 0.5, 0.0, 0.7, 0.3, 0.8])
    path = tmp_path / "samples.jsonl"
    with open(path, "w") as fh:
        for source, scrapes in truth.by_source.items():
            for scrape in scrapes:
                samples = [list(s) for s in scrape.samples]
                age = next(render_age) if source == "locust" else 0.0
                if source == "locust" and exporter_says_when:
                    samples.append([LOCUST_STATS_TIMESTAMP, {}, scrape.t])
                fh.write(json.dumps({"t": scrape.t + age, "source": source, "ok": True, "samples": samples}) + "\n")
    exact = summarize_rate_steps(truth)
    read = summarize_rate_steps(read_samples(path))
    assert [s.offered_rps for s in read] == [10, 20, 40, 60]
    errors = [abs(r.achieved_rps / e.achieved_rps - 1) for r, e in zip(read, exact)]
    errors += [abs(r.scheduled_rps / e.scheduled_rps - 1) for r, e in zip(read, exact)]
    if exporter_says_when:
        assert max(errors) < 1e-9, errors
    else:  # the flaw it fixes, shown on the same data
        assert max(errors) > 0.05, errors


# --- several machines (--remote-workers with --generator-sidecar, --target-sidecar repeated): each judged ---

MACHINES = ("http://10.0.0.5:9256/metrics", "http://10.0.0.6:9256/metrics")


def machine_scrapes(samples: Samples, source: str, group: str, cores: float, procs: float = 1.0) -> list[Scrape]:
    """A remote sidecar of a 1-core machine, scraped beside the lab's own: its `group` using `cores` the whole run."""
    t0 = samples.scrapes("sidecar")[0].t - 1.0
    return [Scrape(s.t, source, [
        ("namedprocess_namegroup_cpu_seconds_total", {"groupname": group, "mode": "user"}, cores * (s.t - t0)),
        ("namedprocess_namegroup_num_procs", {"groupname": group}, procs),
        ("node_cpu_seconds_total", {"cpu": "0", "mode": "idle"}, 0.5 * (s.t - t0)),
    ]) for s in samples.scrapes("sidecar")]


def judged_run_dir(path, samples: Samples, **meta) -> Verdict:
    write_run_dir(path, samples)
    recorded = json.loads((path / rundir.RUN_META).read_text())
    (path / rundir.RUN_META).write_text(json.dumps({**recorded, **meta}))
    verdict, _ = rundir.analyze(path, write=False)
    return verdict


def test_a_rate_run_judges_each_load_machine_not_the_masters_idle_cpu(tmp_path):
    samples = open_run([10, 20, 30, 40], capacity=25)  # the master's CPU: 0.1 of 2 cores
    sidecars = generators.sources(MACHINES)
    samples.by_source["generator_sidecar_1"] = machine_scrapes(samples, "generator_sidecar_1", "locust", 0.2)
    samples.by_source["generator_sidecar_2"] = machine_scrapes(samples, "generator_sidecar_2", "locust", 0.98)
    verdict = judged_run_dir(tmp_path, samples, remote_workers=2, generator_sidecars=sidecars)
    assert verdict.open_model and verdict.brk is not None and verdict.brk.rate == 30
    assert verdict.limiting_resource == GENERATOR_CPU and not verdict.measurement_valid, verdict.limiting_resource_basis
    assert f"the load generator on {MACHINES[1]} used 0.98 of its 1 usable cores at the 10 arrivals/s step" \
        in verdict.limiting_resource_basis
    assert all(len(s.generator_machines) == 3 for s in verdict.steps)
    assert any(line.startswith("note: generator CPU per load machine") for line in verdict.summary())


def test_a_rate_run_against_a_fleet_names_the_saturated_machine(tmp_path):
    samples = open_run([10, 20, 30, 40], capacity=25)
    sidecars = targets.sidecar_sources(MACHINES)
    samples.by_source["target_sidecar"] = machine_scrapes(samples, "target_sidecar", "target", 0.3, procs=2)
    samples.by_source["target_sidecar_2"] = machine_scrapes(samples, "target_sidecar_2", "target", 0.97, procs=2)
    verdict = judged_run_dir(tmp_path, samples, target_sidecars=sidecars, target_sidecar_cores={s: 1 for s in sidecars},
                             target_sidecar=MACHINES[0], remote_sources=sidecars)
    basis = verdict.limiting_resource_basis
    assert verdict.limiting_resource == TARGET_CPU, basis
    assert f"the target machine {MACHINES[1]} used 0.97 of its 1 usable cores" in basis and "imbalance" in basis
    assert "at the 30 arrivals/s step" in basis and MACHINES[0] not in basis
    assert all([m["instance"] for m in s.target_machines] == list(MACHINES) for s in verdict.steps)


def test_a_rate_runs_machine_notes_name_the_steps_by_their_rate():
    rate_steps = summarize_rate_steps(open_run([10, 20, 30], capacity=100))
    summaries = step_summaries(rate_steps, None, META)
    notes = judge_machines(summaries, rate_steps, lambda steps: [f"note: nothing from X during the steps at 1, 2 users; "
                                                                 f"the first at {steps[0].users} users"])
    assert notes == ["note: nothing from X during the 20, 30 arrivals/s steps; the first at the 10 arrivals/s step"]
    assert [s.users for s in summaries] == [100, 100, 100]  # the request slots again
