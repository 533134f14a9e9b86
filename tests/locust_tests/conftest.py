"""Fixtures for the Locust suite's tests: the real target (gunicorn, SQLite, `lab` hash) and real
Locust runs as subprocesses, scraped while they run.

Locust itself is never imported into the pytest process: importing it monkey-patches the whole
process with gevent, which would change how every other component's tests behave. Tests run
Locust as a subprocess and import only the Locust-free modules (presets, collector, testdata,
checks, cleanup's delete_users)."""

from __future__ import annotations

import csv
import os
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import PYTHON, REPO_ROOT, ManagedProcess, free_port, wait_for_http

SCENARIOS = REPO_ROOT / "locust_tests" / "scenarios"
ADMIN_TOKEN = secrets.token_hex(12)


@dataclass
class Target:
    url: str
    token: str
    process: ManagedProcess


@pytest.fixture(scope="session")
def launch(tmp_path_factory):
    """Like `spawn`, for module-scoped runs that several tests read: processes are stopped by PID
    group at the end of the session, pass or fail (the latest first). Each process (Locust, and the
    target) gets a clean environment: no LOCUST_* variables from outside, and no LAB_ADMIN_TOKEN
    unless the caller passes one."""
    started: list[ManagedProcess] = []

    def _launch(args: list[str], name: str, env: dict[str, str] | None = None) -> ManagedProcess:
        base = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_") and k != "LAB_ADMIN_TOKEN"}
        log = tmp_path_factory.mktemp(name) / f"{name}.log"
        proc = ManagedProcess([str(a) for a in args], log, env={**base, **(env or {})})
        started.append(proc)
        return proc

    yield _launch
    for proc in reversed(started):
        proc.stop()


@pytest.fixture(scope="session")
def target(tmp_path_factory, launch) -> Target:
    """The bundled target, once for all Locust tests (usernames never collide, so they can share it).
    `launch` stops it by PID group at the end of the session, after the Locust runs started later."""
    db = tmp_path_factory.mktemp("target-db") / "users.db"
    port = free_port()
    proc = launch([PYTHON, "-m", "target_app", "--port", str(port), "--workers", "2", "--db", str(db),
                   "--hash-profile", "lab"], "target", env={"LAB_ADMIN_TOKEN": ADMIN_TOKEN})
    url = f"http://127.0.0.1:{port}"
    wait_for_http(url + "/healthz", timeout=30, proc=proc)
    return Target(url, ADMIN_TOKEN, proc)


def locust_args(scenario: str, *args: str) -> list[str]:
    """`locust -f locust_tests/scenarios/<scenario>.py ARGS` as a subprocess of this venv."""
    return [PYTHON, "-m", "locust", "-f", str(SCENARIOS / f"{scenario}.py"), *args]


@dataclass
class LocustRun:
    returncode: int
    log: str
    scrapes: list[str]  # every successful exporter scrape, in order
    csv_prefix: Path | None

    @property
    def scrape(self) -> str | None:
        """The last successful scrape before the process exited."""
        return self.scrapes[-1] if self.scrapes else None

    def aggregated(self) -> dict[str, str]:
        with open(f"{self.csv_prefix}_stats.csv", newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if row["Name"] == "Aggregated"]
        assert len(rows) == 1, f"no Aggregated row in {self.csv_prefix}_stats.csv"
        return rows[0]

    def failures_csv(self) -> str:
        return Path(f"{self.csv_prefix}_failures.csv").read_text()

    def metric_sum(self, name: str, scrape: str | None = None) -> float:
        """Sum of all samples called `name` in a scrape (default: the last one)."""
        text = scrape if scrape is not None else self.scrape
        assert text is not None, f"the exporter was never scraped successfully:\n{self.log[-3000:]}"
        return sum(sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples if sample.name == name)


def scrape(url: str, timeout: float = 2.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()
    except (OSError, urllib.error.URLError):
        return None


def run_locust(proc: ManagedProcess, exporter_url: str | None = None, timeout: float = 60.0,
               csv_prefix: Path | None = None) -> LocustRun:
    """Wait for a Locust process to exit, scraping its exporter every 0.2 s meanwhile.

    With --exporter-linger the exporter keeps serving the frozen final stats after the test
    ends, so the last successful scrape holds exactly the totals Locust writes to its CSV."""
    deadline = time.monotonic() + timeout
    scrapes = []
    while proc.proc.poll() is None:
        if time.monotonic() > deadline:
            pytest.fail(f"locust did not exit within {timeout}s:\n{proc.log()[-3000:]}")
        if exporter_url and (body := scrape(exporter_url)):
            scrapes.append(body)
        time.sleep(0.2)
    return LocustRun(proc.proc.returncode, proc.log(), scrapes, csv_prefix)
