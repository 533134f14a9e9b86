"""The live view: the run so far, analysed every few seconds by the final verdict's own code.

`loadlab up` starts a `LiveView` thread beside its sampler. Every `REFRESH_S` seconds it reads
what was appended to the run directory since the last time (Locust's stats history CSV and the
sampler's `samples.jsonl`; nothing is scraped again), judges the steps finished so far with
`rundir.judge` (the function the final analysis calls), and writes `live.json`
(`loadlab.contract.live` describes it) atomically, with the tab's panel drawn from it (`live.html`,
by the suite's Locust-free renderer), so Locust's process, the load generator, only serves files.

A step is finished once Locust's user count has moved on from it (or the test stopped): the
running step is left out, so every step the live verdict shows is judged on exactly the rows
the final verdict will judge it on. When a test stops, the lab also writes verdict.json and
report.html for it, and the tab links the report.

The analysis re-reads nothing, but it does walk every sample of the run each time; on a long run
that grows, so the thread waits longer between updates to keep its CPU under `MAX_CPU_SHARE` of
one core (the target and Locust share this machine's CPUs with it).
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from loadlab import rundir
from loadlab.analysis import step_judgement
from loadlab.contract.cores import cores_available
from loadlab.contract.live import LIVE_FILE, LIVE_PANEL_FILE, REFRESH_S, SCHEMA
from loadlab.contract.names import GENERATOR_GROUP, LOCUST_JOB, SIDECAR_JOB, TARGET_GROUP, TARGET_JOB
from loadlab.contract.thresholds import Thresholds
from loadlab.history import (
    AGGREGATED,
    HistoryRow,
    LocustHistory,
    Samples,
    check_columns,
    history_row,
    scrape_of,
    scrape_value,
)
from loadlab.report import csv_series
from loadlab.steps import ResourceSeries, resource_timeline
from loadlab.verdict import Verdict
from locust_tests.plugins import labview  # Locust-free: the tab's renderer, run here rather than in Locust

MAX_CPU_SHARE = 0.05  # of one core, averaged over an update and the wait after it
MAX_POINTS = 600  # per charted series; longer runs are averaged into this many buckets
LEAD_S = 5.0  # seconds shown before the first user started
Point = tuple[float, float]

WHAT_SOURCE = {
    SIDECAR_JOB: "the sidecar (CPU and memory of the target and of Locust)",
    TARGET_JOB: "the target's metrics (its own request counts and latency)",
    LOCUST_JOB: "Locust's exporter (its per-step latency histogram; the CSV's percentiles stand in)",
}


class Tail:
    """The complete lines appended to a file since the last call (a line still being written waits)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size < self.offset:  # replaced by a shorter file: start over
                    self.offset = 0
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        return data[: end + 1].decode("utf-8", errors="replace").splitlines()


class SourceStatus:
    """What the sampler's last scrapes of one source said."""

    def __init__(self) -> None:
        self.last_ok: float | None = None
        self.last_error: tuple[float, str] | None = None

    def down_since(self) -> tuple[float, str] | None:
        """(since when, error) when the latest scrape failed."""
        if self.last_error and (self.last_ok is None or self.last_error[0] > self.last_ok):
            return self.last_error
        return None


class RunSoFar:
    """The run directory's history and samples, read incrementally (each line parsed once)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.csv_path = self.run_dir / f"{rundir.LOCUST_PREFIX}{rundir.HISTORY_SUFFIX}"
        self._csv = Tail(self.csv_path)
        self._samples = Tail(self.run_dir / rundir.SAMPLES)
        self._header: list[str] | None = None
        self._by_time: dict[float, HistoryRow] = {}
        self.per_name = False
        self.samples = Samples()
        self.status: dict[str, SourceStatus] = {}
        self.locust_running: float | None = None  # Locust's own word (its exporter's locust_running), latest
        self.ever_ran = False

    def read(self) -> None:
        lines = self._csv.lines()
        if lines and self._header is None:
            header = next(csv.reader([lines[0]]))
            check_columns(self.csv_path, header)
            self._header, lines = header, lines[1:]
        if self._header is not None:
            for rec in csv.DictReader(lines, fieldnames=self._header):
                if rec.get("Name") != AGGREGATED:
                    self.per_name = True
                    continue
                row = history_row(rec)
                if row is not None:
                    self._by_time[row.t] = row
        for line in self._samples.lines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            status = self.status.setdefault(rec.get("source", "?"), SourceStatus())
            scrape = scrape_of(rec)
            if scrape is None:
                status.last_error = (float(rec.get("t", 0.0)), str(rec.get("error", "no answer")))
                continue
            status.last_ok = scrape.t
            if scrape.source == LOCUST_JOB and (running := scrape_value(scrape, "locust_running")) is not None:
                self.locust_running = running
                self.ever_ran = self.ever_ran or running > 0
            scrapes = self.samples.by_source.setdefault(scrape.source, [])
            scrapes.append(scrape)
            if len(scrapes) > 1 and scrapes[-2].t > scrape.t:
                scrapes.sort(key=lambda s: s.t)

    @property
    def rows(self) -> list[HistoryRow]:
        return [self._by_time[t] for t in sorted(self._by_time)]

    def meta(self) -> dict[str, Any]:
        try:
            return json.loads((self.run_dir / rundir.RUN_META).read_text())
        except (OSError, json.JSONDecodeError):
            return {}


def running_step_start(rows: list[HistoryRow]) -> int | None:
    """Index of the first row of the step still running (users > 0 in the last row), else None."""
    if not rows or rows[-1].users <= 0:
        return None
    i = len(rows) - 1
    while i > 0 and rows[i - 1].users == rows[-1].users:
        i -= 1
    return i


def downsample(points: list[Point], t0: float, t1: float, n: int = MAX_POINTS) -> list[list[float]]:
    """The points inside [t0, t1], averaged into at most `n` equal time buckets."""
    inside = [(t, v) for t, v in points if t0 <= t <= t1]
    if len(inside) > n:
        width = (t1 - t0) / n
        buckets: dict[int, list[Point]] = {}
        for t, v in inside:
            buckets.setdefault(min(n - 1, int((t - t0) / width)), []).append((t, v))
        inside = [(sum(t for t, _ in b) / len(b), sum(v for _, v in b) / len(b)) for _, b in sorted(buckets.items())]
    return [[round(t, 2), round(v, 4)] for t, v in inside]  # a chart needs no more digits; the file stays small


def _has_group(samples: Samples, group: str) -> bool:
    last = samples.scrapes(SIDECAR_JOB)[-1:]
    return any(labels.get("groupname") == group for s in last for _, labels, _ in s.samples)


class LiveView(threading.Thread):
    """A daemon thread writing `live.json` into `run_dir` every `interval` seconds (less often when an
    update costs more than `MAX_CPU_SHARE` of a core), and verdict.json + report.html when a test stops."""

    def __init__(self, run_dir: Path, sources: dict[str, str], title: str = "",
                 interval: float = REFRESH_S) -> None:
        super().__init__(name="loadlab-live", daemon=True)
        self.run_dir = Path(run_dir)
        self.sources = dict(sources)
        self.title = title
        self.interval = interval
        self.so_far = RunSoFar(self.run_dir)
        self._stop_event = threading.Event()
        self._reported_end: float | None = None  # the last row with users of the test last reported
        self._report_error: str | None = None  # why that report could not be written
        self._last: dict[str, Any] = {}  # the last view written
        self._stopped: tuple[tuple[int, int], dict[str, Any]] | None = None  # a stopped test's view, by its data

    def run(self) -> None:
        while not self._stop_event.is_set():
            cpu = time.thread_time()
            self.tick()
            cost = time.thread_time() - cpu
            self._stop_event.wait(max(self.interval, cost / MAX_CPU_SHARE - cost))

    def tick(self) -> None:
        """One update; a failure keeps the lab running and is said in the tab, beside the last good view."""
        try:
            self.update()
        except Exception as exc:
            failed = f"the live analysis failed ({type(exc).__name__}: {exc}); it is retried every few seconds"
            view = {"schema": SCHEMA, "source": "lab", "generated_at": time.time(), "state": "ready", **self._last}
            view["notes"] = [failed, *view.get("notes", [])]
            try:
                write_atomically(self.run_dir / LIVE_PANEL_FILE, labview.panel(view))
            except Exception:  # no panel from here: the tab draws the view itself, note included
                (self.run_dir / LIVE_PANEL_FILE).unlink(missing_ok=True)
            write_atomically(self.run_dir / LIVE_FILE, view)

    def stop(self, timeout: float = 60.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=timeout)  # a report being written is finished, not cut off

    def update(self) -> dict[str, Any]:
        """Read what was appended, judge the finished steps, write live.json (and the report when a
        test has just stopped); returns the view."""
        view = self.view()
        if view["state"] == "stopped" and view["steps"]:
            end = max(r.t for r in self.so_far.rows if r.users > 0)  # which test the report is of
            if self._reported_end != end:
                self._reported_end, self._report_error = end, None  # once per test, whatever happens
                try:
                    rundir.analyze(self.run_dir, title=self.title or None)
                except Exception as exc:
                    self._report_error = f"the report of this test could not be written ({type(exc).__name__}: {exc})"
            if self._report_error:
                view["notes"].append(self._report_error)
            else:
                view["report"] = rundir.REPORT
        write_atomically(self.run_dir / LIVE_PANEL_FILE, labview.panel(view))
        write_atomically(self.run_dir / LIVE_FILE, view)
        self._last = view
        return view

    def view(self) -> dict[str, Any]:
        so_far = self.so_far
        so_far.read()
        rows = so_far.rows
        meta = so_far.meta()
        inputs = rundir.RunInputs(history_csv=so_far.csv_path, out_dir=self.run_dir,
                                  samples_path=self.run_dir / rundir.SAMPLES, meta=meta)
        th = rundir.run_thresholds(inputs, os.environ)
        cut = running_step_start(rows)
        finished = LocustHistory(rows=rows if cut is None else rows[:cut], windowed_percentiles=so_far.per_name)
        verdict, resources = rundir.judge(inputs, finished, so_far.samples, th)
        with_users = [r for r in rows if r.users > 0]
        now = time.time()
        if cut is not None or so_far.locust_running:  # users in the CSV, or Locust says it runs (starting users)
            state = "running"
        else:
            state = "stopped" if with_users or so_far.ever_ran else "ready"
        key = (len(rows), sum(len(v) for v in so_far.samples.by_source.values()))
        if state == "stopped":
            # The final verdict's intervals too, so a stopped test reads exactly as `loadlab` prints
            # it; not while it runs (a bootstrap every few seconds would cost the lab a core).
            if self._stopped is not None and self._stopped[0] == key:
                return {**self._stopped[1], "generated_at": now}
            rundir.add_intervals(verdict, finished, so_far.samples, th)
        # One time axis: from just before the first user to now (to a little after the last user once
        # the test stopped, so an idle UI left open does not squeeze the test to one side).
        t0 = with_users[0].t - LEAD_S if with_users else now - 120.0
        t1 = min(now, with_users[-1].t + 3 * LEAD_S) if state == "stopped" and with_users else now
        series, missing, cores = self.series(rows, resources, meta, verdict, t0, t1)
        view = {
            "schema": SCHEMA,
            "source": "lab",
            "generated_at": now,
            "state": state,
            "current": None if cut is None else {"step": len(verdict.steps) + 1, "users": rows[-1].users,
                                                 "since": rows[cut].t},
            "steps": steps_view(verdict, th),
            "summary": verdict.summary(),
            "knee": None if verdict.knee is None else {"time": verdict.knee.time, "users": verdict.knee.users},
            "break": None if verdict.brk is None else {"time": verdict.brk.time, "users": verdict.brk.users},
            "series": series,
            "cores_available": cores,
            "missing": missing,
            "notes": self.notes(rows),
            "slo": {"latency_p95_ms": th.latency_p95_ms, "error_ratio": th.error_ratio},
            "report": None,
            "t0": t0,
            "t1": t1,
            "verdict": verdict.to_dict(),
        }
        self._stopped = (key, view) if state == "stopped" else None
        return view

    def series(self, rows: list[HistoryRow], resources: ResourceSeries | None, meta: dict[str, Any],
               verdict: Verdict, t0: float, t1: float
               ) -> tuple[dict[str, list[list[float]]], dict[str, str], dict[str, float | None]]:
        """The charted series inside [t0, t1], why any is empty, and the cores each group can use."""
        locust = csv_series(LocustHistory(rows=rows, windowed_percentiles=self.so_far.per_name))
        timeline = resource_timeline(resources)
        raw = {"users": locust["users"], "rps": locust["rps"], "p95_ms": locust["p95_ms"],
               "target_cpu_cores": timeline.get("target_cpu_cores", []),
               "target_memory_bytes": timeline.get("target_memory_bytes", []),
               "generator_cpu_cores": timeline.get("generator_cpu_cores", [])}
        series = {key: downsample(points, t0, t1) for key, points in raw.items()}
        missing = {key: why for key in series if not series[key] and (why := self.why_missing(key, rows))}
        host_cores = resources.host_cores if resources else meta.get("host_cores")
        last = verdict.steps[-1] if verdict.steps else None
        cores = {
            "target": cores_available(host_cores, meta.get("target_workers"))
            or (last.target_cores_available if last else None),
            "generator": cores_available(host_cores, meta.get("generator_processes"))
            or (last.generator_cores_available if last else None),
        }
        return series, missing, cores

    def why_missing(self, key: str, rows: list[HistoryRow]) -> str:
        """Why a series has no points yet, naming the source and what to do."""
        samples = self.so_far.samples
        if key in ("users", "rps", "p95_ms"):
            if not rows:
                return "Locust has written no stats history yet (it writes a row every second once it runs)"
            if not any(r.users > 0 for r in rows):
                return "no test has run yet: start one"
            return "no request has completed yet" if key == "p95_ms" else "waiting for Locust's next stats row"
        group, role = (GENERATOR_GROUP, "Locust") if key.startswith("generator") else (TARGET_GROUP, "the target")
        sidecar = self.sources.get(SIDECAR_JOB, "the sidecar")
        down = self.so_far.status.get(SIDECAR_JOB, SourceStatus()).down_since()
        if not samples.scrapes(SIDECAR_JOB):
            if down:
                return f"the sidecar ({sidecar}) has not answered: {down[1]}"
            return f"no sidecar samples yet ({sidecar} is sampled every second)"
        if not _has_group(samples, group):
            if group == TARGET_GROUP:
                return ("the sidecar measures no 'target' process group: the lab drives an API of your own "
                        "(--host) without --target-pid, so it cannot see that server's processes; pass "
                        "--target-pid PID when the server runs on this machine")
            return "the sidecar has not found Locust's processes yet (from the PID files Locust writes at start)"
        if down:
            return f"the sidecar ({sidecar}) stopped answering {time.time() - down[0]:.0f} s ago: {down[1]}"
        return f"waiting for a second sidecar sample of {role}"

    def notes(self, rows: list[HistoryRow]) -> list[str]:
        notes = []
        for source, what in WHAT_SOURCE.items():
            down = self.so_far.status.get(source, SourceStatus()).down_since()
            if down:
                url = self.sources.get(source, "")
                notes.append(f"{what} at {url} not answering for {time.time() - down[0]:.0f} s: {down[1]}")
        if rows and sum(1 for a, b in zip(rows, rows[1:]) if a.users == 0 < b.users) > 1:
            notes.append("this session ran more than one test: the verdict judges the steps of all of them, "
                         "as the final verdict will")
        return notes


def steps_view(verdict: Verdict, th: Thresholds) -> list[dict[str, Any]]:
    """The finished steps as the SLO judge saw them (the final report's step table, as data)."""
    out = []
    for s in verdict.steps:
        judgement = step_judgement(s, th)
        out.append({
            "step": s.index + 1, "users": s.users, "start": s.start, "rps": round(s.rps, 2),
            "p95_ms": None if s.p95_ms is None else round(s.p95_ms, 1), "error_ratio": round(s.error_ratio, 4),
            "target_cpu_cores": None if s.target_cpu_cores is None else round(s.target_cpu_cores, 2),
            "target_cores_available": s.target_cores_available,
            "generator_cpu_cores": None if s.generator_cpu_cores is None else round(s.generator_cpu_cores, 2),
            "generator_cores_available": s.generator_cores_available,
            "slo_met": not judgement.breached, "slo_detail": judgement.detail,
        })
    return out


def write_atomically(path: Path, data: dict[str, Any] | str) -> None:
    """Write text (a dict as JSON) so a reader never sees half a file (a rename within a directory is atomic)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(data if isinstance(data, str) else json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)


__all__ = ["LiveView", "RunSoFar", "downsample", "running_step_start", "steps_view"]
