"""Sample the lab's /metrics endpoints every second into the run directory.

The analysis and the report need resource data whether or not Prometheus runs, so the lab
scrapes the sidecar, the target and Locust's exporter itself, parses the text with
prometheus_client's own parser, and appends one JSON line per scrape to `samples.jsonl`.
Only the metric families the lab reads are kept, so a long run stays small.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import deque
from pathlib import Path
from typing import IO

from prometheus_client.parser import text_string_to_metric_families

from loadlab.contract.names import GENERATOR_GROUP, LOCUST_JOB, SIDECAR_JOB, TARGET_GROUP
from loadlab.contract.openmodel import ARRIVAL_RATE
from loadlab.history import Scrape, data_time, quantile_between, scrape_value

# Metric name prefixes worth keeping (process-exporter / node_exporter names from the
# sidecar, the target's http_* and app_* metrics, Locust's exporter).
KEEP_PREFIXES = (
    "namedprocess_namegroup_",
    "node_cpu_seconds_total",
    "node_memory_",
    "node_load1",
    "http_request",
    "app_",
    "locust_",
)


def parse_metrics(text: str, keep: tuple[str, ...] = KEEP_PREFIXES) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition whose sample name starts with one of `keep`."""
    out = []
    for family in text_string_to_metric_families(text):
        # Filter on sample names: the parser strips `_total` from counter family names.
        for sample in family.samples:
            if sample.name.startswith(keep):
                out.append((sample.name, dict(sample.labels), float(sample.value)))
    return out


def scrape(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode("utf-8", errors="replace")


def hunt_phase(scrape: Scrape) -> str | None:
    """The step hunt's phase in a scrape of Locust's exporter: the `phase` label of the
    locust_hunt_phase series at 1 (None without a step hunt)."""
    return next((labels.get("phase") for name, labels, value in scrape.samples
                 if name == "locust_hunt_phase" and value == 1), None)


class Sampler(threading.Thread):
    """A daemon thread scraping `sources` ({name: url}) every `interval` seconds into `path`."""

    def __init__(self, path: Path, sources: dict[str, str], interval: float = 1.0,
                 keep: tuple[str, ...] = KEEP_PREFIXES, target: tuple[str, str] = (SIDECAR_JOB, TARGET_GROUP),
                 target_fleet: tuple[str, ...] = ()) -> None:
        super().__init__(name="loadlab-sampler", daemon=True)
        self.path = Path(path)
        self.sources = dict(sources)
        self.interval = interval
        self.keep = keep
        self.target = target  # (source, group) of the target's CPU: a remote sidecar's when there is one
        self.target_fleet = target_fleet  # the sources of an API fleet's other machines: their CPU is added
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self.recent: dict[str, deque[Scrape]] = {name: deque(maxlen=15) for name in sources}
        self._fh: IO[str] = open(self.path, "a")
        # Per source: (answering, since when, last error); and the changes not yet taken by `changes()`.
        self.state: dict[str, tuple[bool, float, str]] = {}
        self._changes: list[tuple[str, bool, float, str, float | None]] = []
        self._answered: set[str] = set()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self._stop_event.is_set():
            self.sample_once()
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:  # a slow scrape: skip ahead instead of bursting to catch up
                next_at = time.monotonic()
                delay = 0
            self._stop_event.wait(delay)

    def sample_once(self) -> None:
        for name, url in self.sources.items():
            t = time.time()
            try:
                samples = parse_metrics(scrape(url), self.keep)
            except Exception as exc:  # a component restarting or gone: record it, keep sampling the rest
                record = {"t": t, "source": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
            else:
                record = {"t": t, "source": name, "ok": True, "samples": samples}
                self.recent[name].append(Scrape(t=data_time(t, name, samples), source=name, samples=samples))
            with self._lock:
                if self._fh.closed:
                    return
                self._note_state(name, record)
                self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        with self._lock:
            if not self._fh.closed:
                self._fh.flush()

    def _note_state(self, name: str, record: dict) -> None:
        """Keep each source's state; once a source has answered, each change is queued for `changes()`."""
        ok, t, error = bool(record["ok"]), record["t"], record.get("error", "")
        before = self.state.get(name)
        answered_before = name in self._answered
        if ok:
            self._answered.add(name)
        if before is not None and before[0] == ok:
            return
        self.state[name] = (ok, t, error)
        if before is not None and answered_before:  # failures before the first answer are the start-up
            self._changes.append((name, ok, t, error, None if not ok else before[1]))

    def changes(self) -> list[tuple[str, bool, float, str, float | None]]:
        """(source, answering now, since, error, down since) of every source that stopped answering or
        answered again since the last call; a source that never answered yet is not "stopped"."""
        with self._lock:
            out, self._changes = self._changes, []
        return out

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)
        with self._lock:
            self._fh.close()

    # ------------------------------------------------------------ live progress

    def _window(self, source: str, seconds: float) -> tuple[Scrape, Scrape] | None:
        recent = list(self.recent.get(source, ()))
        if len(recent) < 2:
            return None
        last = recent[-1]
        first = next((s for s in recent if last.t - s.t <= seconds), recent[-2])
        if first is last:
            first = recent[-2]
        return first, last

    def progress(self, window: float = 5.0) -> dict[str, float | str | None]:
        """Users, throughput, p95 (ms), failures/s and target CPU (cores) over the last seconds; the
        step hunt's step and phase (`hunt_phase`, e.g. "refine") while one runs."""
        out: dict[str, float | str | None] = {"step": None, "hunt_phase": None, "users": None, "rps": None,
                                              "p95_ms": None, "fail_per_s": None, "target_cpu_cores": None,
                                              "generator_cpu_cores": None}
        pair = self._window(LOCUST_JOB, window)
        if pair:
            first, last = pair
            dt = last.t - first.t
            out["users"] = scrape_value(last, "locust_users")
            out["step"] = scrape_value(last, "locust_step")  # only while the step hunt runs
            out["offered"] = scrape_value(last, ARRIVAL_RATE)  # only in open-model (arrival-rate) runs
            out["hunt_phase"] = hunt_phase(last)
            for key, name in (("rps", "locust_requests_total"), ("fail_per_s", "locust_request_failures_total")):
                a, b = scrape_value(first, name), scrape_value(last, name)
                if a is not None and b is not None and dt > 0 and b >= a:
                    out[key] = (b - a) / dt
            q = quantile_between(0.95, first, last, "locust_request_duration_seconds")
            out["p95_ms"] = None if q is None else q * 1000
        target = [self.target, *((source, self.target[1]) for source in self.target_fleet)]
        for key, sources in (("target_cpu_cores", target), ("generator_cpu_cores", [(SIDECAR_JOB, GENERATOR_GROUP)])):
            cores = [self._cpu_cores(source, group, window) for source, group in sources]
            if all(c is not None for c in cores):  # a fleet's sum only when every machine's is known
                out[key] = sum(c for c in cores if c is not None)
        return out

    def _cpu_cores(self, source: str, group: str, window: float) -> float | None:
        """A group's CPU (cores) over the last seconds of one source; None when unknown."""
        answering = self.state.get(source, (True,))[0]
        pair = self._window(source, window) if answering else None  # a silent source's last figures are stale
        if not pair:
            return None
        first, last = pair
        dt = last.t - first.t
        match = {"groupname": group}
        a = scrape_value(first, "namedprocess_namegroup_cpu_seconds_total", match)
        b = scrape_value(last, "namedprocess_namegroup_cpu_seconds_total", match)
        if a is None or b is None or dt <= 0:
            return None
        return max(0.0, b - a) / dt
