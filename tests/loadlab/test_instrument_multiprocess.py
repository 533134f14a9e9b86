"""`loadlab.instrument` in prometheus_client's multiprocess mode, in one process and its forks:
the files it writes merge to exactly what prometheus_client's own Counter and Histogram would
write, and a forked worker counts in files of its own. (Exact totals across real gunicorn workers:
tests/loadlab/test_your_api.py and tests/target_app/test_server.py.)"""

from __future__ import annotations

import os
import random

import pytest
from prometheus_client import CollectorRegistry, values
from prometheus_client.multiprocess import MultiProcessCollector

from loadlab.instrument import UNMATCHED, HttpMetrics, ProcessFileRecorder


def merged(directory: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return registry


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset], float]:
    """Every sample a scrape would show, by name and labels (the order of families follows the
    order in which the files are listed, which is not ours to fix)."""
    return {(s.name, frozenset(s.labels.items())): s.value for family in registry.collect() for s in family.samples}


@pytest.fixture
def multiprocess(monkeypatch: pytest.MonkeyPatch):
    """Multiprocess mode for this test only: returns a function that points it at a directory."""
    def use(directory: str) -> None:
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", directory)
        monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    return use


def test_the_files_merge_to_what_prometheus_clients_own_metrics_write(tmp_path, multiprocess):
    rng = random.Random(11)
    # Statuses share a (method, endpoint) histogram; durations hit the first, middle, last and +Inf buckets.
    calls = [(rng.choice(["GET", "POST"]), rng.choice(["/a", "/items/<int:id>", UNMATCHED]),
              rng.choice([200, 404, 500]), rng.choice([0.0, 0.0004, 0.003, 0.25, 0.3, 7.0, 1e6]))
             for _ in range(600)]
    ours_dir, reference_dir = tmp_path / "ours", tmp_path / "reference"
    ours_dir.mkdir()
    reference_dir.mkdir()

    multiprocess(str(ours_dir))
    ours = HttpMetrics(CollectorRegistry())
    assert isinstance(ours.record.__self__, ProcessFileRecorder)
    for call in calls:
        ours.record(*call)

    multiprocess(str(reference_dir))
    reference = HttpMetrics(CollectorRegistry())
    for call in calls:
        HttpMetrics.record(reference, *call)  # prometheus_client's children: Counter.inc, Histogram.observe

    assert sorted(os.listdir(ours_dir)) == [f"counter_{os.getpid()}_http.db", f"histogram_{os.getpid()}_http.db"]
    assert samples(merged(str(ours_dir))) == samples(merged(str(reference_dir)))
    assert len(samples(merged(str(ours_dir)))) > 100  # every bucket of every series, zeros included
    sample = merged(str(ours_dir)).get_sample_value
    assert sum(sample("http_requests_total", {"method": m, "endpoint": e, "status": str(s)}) or 0
               for m in ("GET", "POST") for e in ("/a", "/items/<int:id>", UNMATCHED) for s in (200, 404, 500)) == 600


def test_a_forked_child_counts_in_files_of_its_own_and_the_totals_stay_exact(tmp_path, multiprocess):
    multiprocess(str(tmp_path))
    metrics = HttpMetrics(CollectorRegistry())
    metrics.record("GET", "/a", 200, 0.01)
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:  # a gunicorn --preload worker: same recorder object, another process
            try:
                for _ in range(100):
                    metrics.record("GET", "/a", 200, 0.01)
            finally:
                os._exit(0)
        children.append(pid)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    metrics.record("GET", "/a", 200, 0.01)

    assert {name.split("_")[1] for name in os.listdir(tmp_path)} == {str(p) for p in [os.getpid(), *children]}
    sample = merged(str(tmp_path)).get_sample_value
    assert sample("http_requests_total", {"method": "GET", "endpoint": "/a", "status": "200"}) == 202
    assert sample("http_request_duration_seconds_count", {"method": "GET", "endpoint": "/a"}) == 202
    assert sample("http_request_duration_seconds_sum", {"method": "GET", "endpoint": "/a"}) == pytest.approx(2.02)
