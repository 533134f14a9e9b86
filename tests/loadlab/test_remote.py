"""A target on another machine, in pieces: scrape URLs, two sidecars kept apart, a source that stops
answering (the sampler notices it, the analysis blanks the steps it leaves without samples), and the
API's own latency beside Locust's."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from loadlab.analysis import analyze_steps, limiting_resource
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS
from loadlab.history import Samples, Scrape
from loadlab.processes import LabError
from loadlab.remote import apply_outages, metrics_url, metrics_url_on_host, outages
from loadlab.sampler import Sampler
from loadlab.server_latency import between
from loadlab.steps import StepSummary, _resource_fields, resource_series
from tests.helpers import free_port
from tests.loadlab.synthetic import model_steps


@pytest.mark.parametrize(("given", "url"), [
    ("http://10.0.0.5:9256", "http://10.0.0.5:9256/metrics"),
    ("http://10.0.0.5:9256/", "http://10.0.0.5:9256/metrics"),
    ("https://api.example.com/sidecar/metrics", "https://api.example.com/sidecar/metrics"),
])
def test_a_scrape_url_gets_metrics_as_its_default_path(given, url):
    assert metrics_url(given, "--target-sidecar") == url


@pytest.mark.parametrize("bad", ["10.0.0.5:9256", "ftp://x/metrics", "http://:9256", "http://h:99999/metrics"])
def test_a_bad_url_is_one_line_naming_the_flag(bad):
    with pytest.raises(LabError, match="^--target-sidecar .*http://10.0.0.5:9256/metrics$"):
        metrics_url(bad, "--target-sidecar")


def test_target_metrics_port_with_host_is_on_the_hosts_machine():
    assert metrics_url_on_host("http://10.0.0.5:8000", 9101) == "http://10.0.0.5:9101/metrics"
    assert metrics_url_on_host("http://[::1]:8000", 9101) == "http://[::1]:9101/metrics"


def sidecar_scrape(t: float, source: str, groups: dict[str, tuple[float, float]], cpus: int) -> Scrape:
    """A sidecar's scrape: {group: (cpu seconds, processes)} and `cpus` host CPUs."""
    samples = []
    for group, (cpu, procs) in groups.items():
        samples += [("namedprocess_namegroup_cpu_seconds_total", {"groupname": group, "mode": "user"}, cpu),
                    ("namedprocess_namegroup_num_procs", {"groupname": group}, procs),
                    ("namedprocess_namegroup_memory_bytes", {"groupname": group, "memtype": "resident"}, 1e8)]
    for cpu in range(cpus):
        samples += [("node_cpu_seconds_total", {"cpu": str(cpu), "mode": "idle"}, t * 0.5),
                    ("node_cpu_seconds_total", {"cpu": str(cpu), "mode": "user"}, t * 0.5)]
    return Scrape(t, source, samples)


def test_two_sidecars_give_each_side_its_own_group_and_machine():
    # The API's machine: 4 CPUs, group "api" (3 processes: 2 workers) using 1.5 cores. The lab's
    # machine: 2 CPUs, Locust using 0.25 of a core. A local "target" group (a stray match) is ignored.
    local = [sidecar_scrape(t, "sidecar", {"locust": (0.25 * t, 1), "target": (0.9 * t, 3)}, 2) for t in range(10)]
    remote = [sidecar_scrape(t, "target_sidecar", {"api": (1.5 * t, 3)}, 4) for t in range(10)]
    samples = Samples({"sidecar": local, "target_sidecar": remote})
    meta = {"host_cores": 2, "target_group": "api", "target_sidecar": "http://10.0.0.5:9256/metrics",
            "target_workers": 2}
    res = resource_series(samples, meta)
    assert res is not None and res.host_cores == 4 and res.generator_host_cores == 2
    fields = _resource_fields(res, 2.0, 8.0, meta)
    assert fields["target_cpu_cores"] == pytest.approx(1.5)
    assert fields["generator_cpu_cores"] == pytest.approx(0.25)
    assert fields["target_cores_available"] == 2.0  # its 2 workers on a 4-CPU machine
    assert fields["generator_cores_available"] == 1.0
    assert fields["host_cores"] == 4 and fields["host_cpu_busy_cores"] == pytest.approx(2.0)  # the API's host


def test_one_sidecar_keeps_reading_both_groups_from_it():
    local = [sidecar_scrape(t, "sidecar", {"locust": (0.2 * t, 1), "target": (0.9 * t, 3)}, 2) for t in range(10)]
    res = resource_series(Samples({"sidecar": local}), {"host_cores": 2})
    assert res is not None and res.generator_host_cores is None
    fields = _resource_fields(res, 2.0, 8.0, {"host_cores": 2})
    assert fields["target_cpu_cores"] == pytest.approx(0.9) and fields["target_cores_available"] == 2.0


def step(index: int, start: float, end: float) -> StepSummary:
    return StepSummary(index=index, users=2 * (index + 1), start=start, hold_start=start + 3, end=end, rps=5.0,
                       rps_median=5.0, requests=50, failures=0, error_ratio=0.0, p50_ms=10.0, p95_ms=20.0,
                       p95_source="locust_histogram", target_cpu_cores=0.5, target_memory_bytes=1e8,
                       target_procs=3.0, target_cores_available=2.0, host_cpu_busy_cores=1.0, host_cores=2,
                       generator_cpu_cores=0.1, server_p95_ms=15.0)


def test_an_outage_blanks_the_steps_it_overlaps_and_says_which_source_and_when():
    ok = [Scrape(float(t), "target_sidecar", []) for t in (*range(0, 15), *range(31, 35), 36, *range(38, 41))]
    failures = [(float(t), "URLError: refused") for t in (-2, -1, *range(15, 31), 35, 37)]  # -2, -1: still starting
    samples = Samples({"target_sidecar": ok}, {"target_sidecar": failures})
    assert [(o.start, o.end) for o in outages(samples, "target_sidecar")] == [(15.0, 31.0), (35.0, 36.0), (37.0, 38.0)]
    # Holds: 3-10, 13-20, 23-30, 33-40. The long outage leaves the second hold 1 s of its 7 and the
    # third none: both unknown. The blips inside the fourth cost nothing (its counters span them).
    steps = [step(0, 0, 10), step(1, 10, 20), step(2, 20, 30), step(3, 30, 40)]
    notes = apply_outages(steps, {"target_sidecar": "http://10.0.0.5:9256/metrics"}, samples)
    assert [s.target_cpu_cores for s in steps] == [0.5, None, None, 0.5]
    assert [s.target_cores_available for s in steps] == [2.0, None, None, 2.0]
    assert steps[2].resource_gap and steps[0].resource_gap is None and steps[3].resource_gap is None
    assert steps[2].server_p95_ms == 15.0  # the API's own metrics are another source
    assert len(notes) == 1 and "target_sidecar (http://10.0.0.5:9256/metrics) stopped answering at" in notes[0]
    assert " to " in notes[0] and "(15 s into the run)" in notes[0]
    assert "steps at 4, 6 users" in notes[0] and "resource verdict" in notes[0] and "refused" in notes[0]


def test_a_source_silent_to_the_end_is_an_open_outage():
    samples = Samples({"target": [Scrape(float(t), "target", []) for t in range(5)]},
                      {"target": [(float(t), "timeout") for t in range(5, 9)]})
    [outage] = outages(samples, "target")
    assert outage.start == 5.0 and outage.end is None
    steps = [step(0, 0, 4), step(1, 4, 9)]
    notes = apply_outages(steps, {"target": "http://10.0.0.5:9101/metrics"}, samples)
    assert steps[1].server_p95_ms is None and steps[1].target_cpu_cores == 0.5
    assert "to the end of the run" in notes[0] and "server-side latency is unknown" in notes[0]


def test_the_sampler_reports_a_source_that_stops_and_answers_again(tmp_path):
    registry = CollectorRegistry()
    Gauge("namedprocess_namegroup_num_procs", "procs", ["groupname"], registry=registry).labels("target").set(3)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    sampler = Sampler(tmp_path / "samples.jsonl", {"target_sidecar": f"http://127.0.0.1:{port}/metrics",
                                                   "never": f"http://127.0.0.1:{free_port()}/metrics"})
    try:
        sampler.sample_once()
        assert sampler.changes() == []  # first answers (and "never", which never answered, is no change)
        server.shutdown()
        server.server_close()
        sampler.sample_once()
        sampler.sample_once()
        [(name, ok, since, error, _)] = sampler.changes()
        assert (name, ok) == ("target_sidecar", False) and "Connection refused" in error
        assert abs(since - time.time()) < 10
        server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
        sampler.sample_once()
        [(name, ok, _, _, down_since)] = sampler.changes()
        assert (name, ok, down_since) == ("target_sidecar", True, since)
    finally:
        sampler.stop()
        server.shutdown()
        server.server_close()


def http_scrape(t: float, buckets: dict[str, float], total: float, health: float = 0.0) -> Scrape:
    """The target's metrics: login requests in cumulative buckets, plus health checks of 0 ms."""
    samples = [("http_request_duration_seconds_bucket", {"endpoint": "/login", "le": le}, c) for le, c in buckets.items()]
    samples += [("http_request_duration_seconds_sum", {"endpoint": "/login"}, total),
                ("http_request_duration_seconds_count", {"endpoint": "/login"}, buckets["+Inf"])]
    samples += [("http_request_duration_seconds_bucket", {"endpoint": "/healthz", "le": le}, health) for le in buckets]
    samples += [("http_request_duration_seconds_count", {"endpoint": "/healthz"}, health)]
    return Scrape(t, "target", samples)


def test_server_latency_is_the_apis_requests_between_two_scrapes_without_health_checks():
    first = http_scrape(0, {"0.1": 10, "0.5": 10, "+Inf": 10}, 0.5)
    # 100 more logins, 50 under 0.1 s and 50 between 0.1 and 0.5 s, 20 s of them; 1000 health checks.
    last = http_scrape(5, {"0.1": 60, "0.5": 110, "+Inf": 110}, 20.5, health=1000)
    p95, mean = between(first, last)
    assert p95 == pytest.approx(1000 * (0.1 + 0.4 * 45 / 50))
    assert mean == pytest.approx(200.0)
    restarted = http_scrape(6, {"0.1": 1, "0.5": 1, "+Inf": 1}, 0.01)
    assert between(last, restarted) == (None, None)


# --- the verdict over steps a silent sidecar left without samples ---

SIDECAR_URL = "http://10.0.0.5:9256/metrics"


def _knee_at_8(cpu_at_knee: float) -> list[StepSummary]:
    """Steps at 2, 4, 8, 10, 12 users of a 2-worker server whose throughput flattens at 8 users; the
    target's sidecar answers up to the 8-user step, then stops: the 10- and 12-user steps get no CPU."""
    steps = model_steps([2, 4, 8, 10, 12], workers=2, service_s=0.1, think_s=0.3, t0=0.0, target_cores_available=2.0,
                        generator_cpu_cores=0.2, generator_cores_available=2.0)
    for s in steps:
        s.target_cpu_cores = round(cpu_at_knee * min(s.users, 8) / 8, 3)
    samples = Samples({"target_sidecar": [Scrape(float(t), "target_sidecar", []) for t in range(30)]},
                      {"target_sidecar": [(float(t), "URLError: timed out") for t in range(30, 50)]})
    apply_outages(steps, {"target_sidecar": SIDECAR_URL}, samples)
    return steps


def test_a_knee_whose_later_steps_lack_target_samples_is_no_concurrency_claim():
    steps = _knee_at_8(1.1)
    assert [s.target_cpu_cores for s in steps] == [0.275, 0.55, 1.1, None, None]
    verdict = analyze_steps(steps, DEFAULT_THRESHOLDS)
    assert verdict.knee is not None and verdict.knee.step_users == 8
    basis = verdict.limiting_resource_basis
    assert verdict.limiting_resource is None, basis  # not `concurrency`: 10 and 12 users may be where it saturates
    # The CPU is judged from the knee to the first step 10% more loaded (`_plateau_window`): 8 and 10 users.
    assert "the target's CPU is unknown at 10 users" in basis and "concurrency limit" in basis
    assert f"target_sidecar {SIDECAR_URL} stopped answering at" in basis
    assert "at most 1.10 of 2 usable cores at 8 users" in basis
    assert any(line.startswith("limiting resource: unknown (") for line in verdict.summary())
    assert verdict.resource_lost_to_outage  # a partial verdict: `loadlab run` and `analyze` exit 1


def test_a_target_with_no_sidecar_at_all_is_no_outage():
    steps = _knee_at_8(1.1)
    for s in steps:
        s.target_cpu_cores, s.resource_gap = None, None  # a --host target without --target-sidecar
    verdict = analyze_steps(steps, DEFAULT_THRESHOLDS)
    assert verdict.limiting_resource is None and not verdict.resource_lost_to_outage


def test_a_saturated_step_with_samples_is_target_cpu_whatever_the_gap():
    verdict = analyze_steps(_knee_at_8(1.95), DEFAULT_THRESHOLDS)
    assert verdict.limiting_resource == "target_cpu", verdict.limiting_resource_basis
    assert not verdict.resource_lost_to_outage  # the gap did not cost the finding
    assert "the target used 1.95 of its 2 usable cores" in verdict.limiting_resource_basis


def test_a_window_with_no_target_samples_at_all_says_which_source_went_silent():
    steps = _knee_at_8(1.1)
    for s in steps[2:]:
        s.target_cpu_cores, s.resource_gap = None, "target_sidecar http://x stopped answering at 12:00:00"
    resource, basis = limiting_resource(steps, 2, None, DEFAULT_THRESHOLDS)
    assert resource is None and "unknown at 8, 10 users" in basis and "12:00:00" in basis, basis
    assert "--host" not in basis
