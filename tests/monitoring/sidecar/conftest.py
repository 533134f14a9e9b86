"""Fixtures for the sidecar tests: start the real `python -m monitoring.sidecar`, scrape it, start workloads."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import PYTHON, REPO_ROOT, ManagedProcess, free_port, wait_for_http

WORKLOAD = str(Path(__file__).with_name("workload.py"))

# promtool flags node_exporter's own memory names (camelCase MemTotal/MemAvailable);
# node_exporter's CI filters exactly these (checkmetrics.sh greps out ^node_memory_).
# They are kept because dashboards query them by these names.
KNOWN_PROMTOOL_LINTS = {
    "node_memory_MemAvailable_bytes metric names should be written in 'snake_case' not 'camelCase'",
    "node_memory_MemTotal_bytes metric names should be written in 'snake_case' not 'camelCase'",
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} missing from scrape; have {sorted({k[0] for k in samples})}"
    return samples[key]


def group_cpu(samples: Samples, group: str) -> float:
    return sum(value(samples, "namedprocess_namegroup_cpu_seconds_total", groupname=group, mode=mode)
               for mode in ("user", "system"))


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Sidecar:
    proc: ManagedProcess
    url: str

    def scrape(self) -> Samples:
        return parse(scrape_text(self.url))

    def procs(self, group: str) -> float:
        return value(self.scrape(), "namedprocess_namegroup_num_procs", groupname=group)


@pytest.fixture
def sidecar(spawn) -> Callable[..., Sidecar]:
    """Start the sidecar as a real process on a free port with the given flags."""

    def _start(*flags: str) -> Sidecar:
        port = free_port()
        proc = spawn([PYTHON, "-m", "monitoring.sidecar", "--port", str(port), *flags], name="sidecar")
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for_http(url, timeout=20, proc=proc)
        return Sidecar(proc, url)

    return _start


@pytest.fixture
def workload(spawn) -> Callable[..., ManagedProcess]:
    def _start(*args: str, name: str = "workload") -> ManagedProcess:
        return spawn([PYTHON, WORKLOAD, *args], name=name)

    return _start


def run_sidecar_cli(*flags: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the sidecar to completion (for flag errors and --once)."""
    return subprocess.run([PYTHON, "-m", "monitoring.sidecar", *flags], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)
