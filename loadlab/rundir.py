"""A run directory: where each file lives, and `analyze()` turning it into verdict.json + report.html.

Works on the lab's own run directories and on any Locust `--csv PREFIX --csv-full-history`
output: the analysis needs only `PREFIX_stats_history.csv`; the resource samples and
`run.json` add CPU and memory when they are there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadlab import gates as gating
from loadlab import generators, openmodel, profiling, server_latency, targets, uncertainty
from loadlab.analysis import analyze_steps
from loadlab.contract import thresholds
from loadlab.contract.names import LOCUST_JOB
from loadlab.contract.thresholds import Thresholds
from loadlab.functional import ErrorEvidence, read_failures_csv, step_errors
from loadlab.history import Damage, DamagedInput, LocustHistory, Samples, read_samples, read_stats_history
from loadlab.ratesteps import is_open_run
from loadlab.remote import apply_outages
from loadlab.report import write_report
from loadlab.steps import ResourceSeries, StepSummary, after_stop, resource_series, summarize_steps
from loadlab.verdict import Source, Verdict

LOCUST_PREFIX = "locust"  # Locust's --csv prefix inside a run directory
SAMPLES = "samples.jsonl"
RUN_META = "run.json"
VERDICT = "verdict.json"
REPORT = "report.html"
HISTORY_SUFFIX = "_stats_history.csv"
FAILURES_SUFFIX = "_failures.csv"


@dataclass
class RunInputs:
    history_csv: Path
    out_dir: Path
    samples_path: Path | None
    meta: dict[str, Any]
    skipped: list[str] = field(default_factory=list)  # unreadable rows a lenient analysis left out (file, line, why)


def locate(path: Path | str, damage: Damage | None = None) -> RunInputs:
    """Find the stats history (and samples, run.json) from a run dir, a CSV prefix, or the CSV itself.
    A run.json that cannot be read is damage (`damage`): with a lenient Damage it is ignored."""
    path = Path(path)
    if path.is_dir():
        own = path / f"{LOCUST_PREFIX}{HISTORY_SUFFIX}"
        found = [own] if own.is_file() else sorted(path.glob(f"*{HISTORY_SUFFIX}"))
        if not found:
            raise FileNotFoundError(
                f"{path}: no *{HISTORY_SUFFIX} here. Run Locust with --csv PREFIX --csv-full-history, "
                f"then `loadlab analyze PREFIX`")
        if len(found) > 1:
            example = found[0].as_posix()[:-len(HISTORY_SUFFIX)]
            raise FileNotFoundError(f"{path}: several Locust histories ({', '.join(p.name for p in found)}); "
                                    f"pass the CSV prefix you mean, e.g. `loadlab analyze {example}`")
        csv_path, out_dir = found[0], path
    else:
        text = str(path)
        csv_path = path if text.endswith(HISTORY_SUFFIX) else Path(text + HISTORY_SUFFIX)
        if not csv_path.is_file():
            raise FileNotFoundError(
                f"{csv_path}: not found. Give a run directory, a Locust --csv prefix (the file PREFIX{HISTORY_SUFFIX} "
                f"must exist; write it with --csv PREFIX --csv-full-history) or that CSV file itself")
        out_dir = csv_path.parent
    samples = out_dir / SAMPLES
    meta: dict[str, Any] = {}
    if (out_dir / RUN_META).is_file():
        # run.json holds the thresholds and worker counts the verdict is judged with: unreadable, it
        # would change the verdict silently.
        meta_path = out_dir / RUN_META
        try:
            loaded = json.loads(meta_path.read_bytes().decode("utf-8"))
            if not isinstance(loaded, dict):
                raise DamagedInput(f"{meta_path} line 1: a JSON {type(loaded).__name__}, not an object")
            meta = loaded
        except UnicodeDecodeError as exc:
            (damage or Damage()).found(meta_path, 1, f"not UTF-8 text (byte at offset {exc.start})")
        except json.JSONDecodeError as exc:
            (damage or Damage()).found(meta_path, exc.lineno, f"not valid JSON ({exc.msg})")
        except DamagedInput as exc:
            if damage is None or not damage.lenient:
                raise
            damage.skipped.append(str(exc))
    return RunInputs(history_csv=csv_path, out_dir=out_dir, samples_path=samples if samples.is_file() else None,
                     meta=meta)


def analysis_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The parts of run.json the step summaries use."""
    keys = ("target_workers", "host_cores", "generator_processes", "target_group", "target_sidecar",
            "target_host_cores")
    return {k: meta[k] for k in keys if meta.get(k) is not None}


def run_thresholds(inputs: RunInputs, environ: Mapping[str, str], p95_ms: float | None = None,
                   error_ratio: float | None = None) -> Thresholds:
    """The thresholds to judge a run by: the ones the run itself recorded in run.json (so a re-analysis
    judges it as the run's own hunt did), else the defaults and the suite's variables; flags beat both."""
    recorded = inputs.meta.get("thresholds")
    if isinstance(recorded, dict):
        return thresholds.resolve({}, p95_ms=p95_ms, error_ratio=error_ratio, base=thresholds.from_dict(recorded))
    return thresholds.resolve(environ, p95_ms=p95_ms, error_ratio=error_ratio)


def failures_csv(history_csv: Path) -> Path:
    """Locust's failures CSV beside a stats history (same --csv prefix)."""
    return history_csv.with_name(history_csv.name[: -len(HISTORY_SUFFIX)] + FAILURES_SUFFIX)


def per_machine(steps: list[StepSummary], samples: Samples, meta: Mapping[str, Any],
                remote_sources: Mapping[str, str]) -> list[str]:
    """Each machine's part of the steps, for a closed run's steps and an open run's alike; notes for
    the verdict. Order matters: a fleet's sums first, then the outages blank what a silent source
    left unknown, then the load machines."""
    # The API's own latency beside Locust's, when its metrics were sampled (every machine's of a fleet).
    server_latency.fill(steps, samples, targets.metrics_of(meta))
    notes = targets.apply(steps, samples, meta)  # several --target-sidecar: the fleet's sums, per machine
    notes += apply_outages(steps, remote_sources, samples)  # a source on the API's machine that stopped answering
    notes += generators.apply(steps, samples, meta)  # --remote-workers: each load machine's CPU
    return notes


def judge(inputs: RunInputs, history: LocustHistory, samples: Samples, th: Thresholds,
          run_errors: list | None = None, failures_path: Path | None = None) -> tuple[Verdict, ResourceSeries | None]:
    """The verdict of a run's history and samples (and the resource series it was built from). The
    final analysis and the live one (`loadlab.live`, on the steps finished so far) both call this.
    `run_errors`: the rows of Locust's failures CSV (`failures_path`), for a functional failure's top errors."""
    meta = analysis_meta(inputs.meta)
    resources = resource_series(samples, meta)  # once: the step summaries and the report's charts share it
    failures_csv_name = str(failures_path) if failures_path is not None and failures_path.is_file() else None
    remote = inputs.meta.get("remote_sources")
    remote_sources = {str(k): str(v) for k, v in remote.items()} if isinstance(remote, dict) else {}
    if is_open_run(samples):  # an arrival-rate run: its steps are plateaus of offered rate
        cut = inputs.meta.get("incomplete_at") if inputs.meta.get("incomplete") else None
        verdict = openmodel.analyze_samples(samples, meta, th, resources, cut if isinstance(cut, (int, float)) else None,
                                            run_errors=run_errors or [], failures_csv=failures_csv_name,
                                            per_machine=lambda steps: per_machine(steps, samples, inputs.meta,
                                                                                  remote_sources))
        steps = verdict.steps
    else:
        steps = summarize_steps(history, samples, meta, transient_fraction=th.step_transient_fraction,
                                resources=resources)
        remote_notes = per_machine(steps, samples, inputs.meta, remote_sources)
        stale = after_stop(history.rows, samples.scrapes(LOCUST_JOB))
        if stale:  # e.g. a master that still counted a quit worker's users
            remote_notes.append(f"note: {len(stale)} {'row' if len(stale) == 1 else 'rows'} of Locust's CSV after its "
                                f"test stopped (its exporter said so) "
                                f"still counted users ({', '.join(sorted({str(r.users) for r in stale}))}); "
                                f"no step was cut from them")
        evidence = ErrorEvidence(by_step=[step_errors(samples, s) for s in steps], run=run_errors or [],
                                 failures_csv=failures_csv_name)
        verdict = analyze_steps(steps, th, evidence)
        verdict.notes.extend(remote_notes)
    verdict.source = Source(
        stats_history=str(inputs.history_csv),
        resource_samples=str(inputs.samples_path) if inputs.samples_path else None,
        windowed_percentiles=history.windowed_percentiles,
        scenario=inputs.meta.get("scenario"),
    )
    if inputs.meta.get("step_hunt") is False:  # the lab saw the user's own LoadTestShape run (runner.Lab.start_locust)
        verdict.notes.insert(0, "note: the locustfile's own LoadTestShape drove the load, not the lab's step hunt: "
                                "the steps are its levels, and there is a knee or a break only if they reached one")
    if inputs.meta.get("incomplete"):  # the lab recorded that the run did not finish (runner.Lab.execute)
        verdict.complete = False
        verdict.incomplete_reason = str(inputs.meta["incomplete"])
    if steps and not history.windowed_percentiles:
        verdict.notes.append("note: the CSV lacks --csv-full-history, so p95 per step is Locust's cumulative "
                             "percentile, not the step's own")
    if steps and not samples:
        verdict.notes.append("note: no resource samples beside the CSV, so CPU fields are null")
    return verdict, resources


def add_intervals(verdict: Verdict, history: LocustHistory, samples: Samples, th: Thresholds) -> None:
    """95% intervals on the verdict's figures (loadlab.uncertainty), unless it has none (a functional
    failure). The final analysis, and the live view once a test has stopped, add them."""
    if verdict.functional_failure is not None:
        return
    if verdict.open_model:  # the bootstrap resamples the closed model's steps (knee, break by users)
        if verdict.rate_steps:
            verdict.notes.append("note: no confidence intervals on an open-model verdict: the bootstrap "
                                 "recomputes the closed model's knee and break, not a rate hunt's")
        return
    boot = uncertainty.attach(verdict, history, samples, th)
    if verdict.steps and not boot.complete:
        verdict.notes.append("note: " + "; ".join(boot.notes))


def analyze(path: Path | str, th: Thresholds | None = None, write: bool = True,
            title: str | None = None, lenient: bool = False,
            gates: Sequence[gating.Gate] = ()) -> tuple[Verdict, RunInputs]:
    """Verdict for a run; writes verdict.json and report.html beside the inputs when `write`.
    `th`: the thresholds to judge by (default: `run_thresholds` without flags). An unreadable row of
    any input raises `DamagedInput` (file and line); with `lenient` it is skipped and counted.
    `gates`: checked on the verdict, results in verdict.json `gates`."""
    damage = Damage(lenient=lenient)
    inputs = locate(path, damage)
    if th is None:
        th = run_thresholds(inputs, os.environ)
    history: LocustHistory = read_stats_history(inputs.history_csv, damage)
    cut = inputs.meta.get("incomplete_at") if inputs.meta.get("incomplete") else None
    if isinstance(cut, (int, float)):  # a run that did not finish: judge only what ran before the fault
        history.rows = [row for row in history.rows if row.t <= cut]
    samples: Samples = read_samples(inputs.samples_path, damage) if inputs.samples_path else Samples()
    failures_path = failures_csv(inputs.history_csv)
    run_errors = read_failures_csv(failures_path, damage) if failures_path.is_file() else []
    verdict, resources = judge(inputs, history, samples, th, run_errors, failures_path)
    add_intervals(verdict, history, samples, th)
    verdict.skipped_rows = len(damage.skipped)
    inputs.skipped = damage.skipped
    profiling.attach(verdict, inputs.out_dir, inputs.meta, write=write)  # --profile: hotspots, flame graph
    for torn in damage.torn:
        verdict.notes.append(f"note: {torn} was torn (a process killed while writing it) and was left out; "
                             f"the lines before it are whole")
    if damage.skipped:
        verdict.notes.append(f"note: --lenient skipped {len(damage.skipped)} unreadable rows, so this verdict "
                             f"is of what was left: {'; '.join(damage.skipped[:3])}"
                             + (f"; and {len(damage.skipped) - 3} more" if len(damage.skipped) > 3 else ""))
    if gates:
        verdict.gates = gating.evaluate(gates, verdict)
    if write:
        (inputs.out_dir / VERDICT).write_text(json.dumps(verdict.to_dict(), indent=2) + "\n")
        write_report(inputs.out_dir / REPORT, verdict, history, resources,
                     title or f"loadlab report: {inputs.meta.get('scenario') or inputs.history_csv.name}",
                     open_series=openmodel.timeline(samples) if verdict.open_model else None,
                     server_p95=server_latency.p95_series(samples))
    return verdict, inputs
