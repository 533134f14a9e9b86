"""A target on another machine: the sources the lab reads there, checked before the run, and what
a source that stops answering mid-run does to the verdict.

    loadlab run login-step --host http://10.0.0.5:8000 \\
        --target-sidecar http://10.0.0.5:9256/metrics --target-metrics http://10.0.0.5:9101/metrics

- `--target-sidecar URL`: a sidecar the user started on the API's machine
  (`python -m monitoring.sidecar --host 0.0.0.0 --group target=REGEX`). The sampler reads it as the
  source `target_sidecar`; the analysis takes the target's CPU, memory and processes from its
  `target` group (`--target-group NAME`) and the cores available to the target from its host
  metrics and `--target-workers`. The generator's CPU still comes from the lab's own sidecar.
- `--target-metrics URL`: the API's own /metrics (server-side latency beside Locust's).

Both are checked before anything starts (one line and exit 2 when a source does not answer, lacks
the group, or its group matches no process). During the run a remote source may stop answering:
the run goes on, the console says which source and since when, and the steps whose hold has no
samples from it get no resource figures (`apply_outages`), with a note in the verdict; where those
steps are the ones the CPU is judged on, the limiting resource is unknown rather than `concurrency`
(`analysis.target_gap_reason`).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from loadlab.contract.names import TARGET_JOB, TARGET_SIDECAR_SOURCE
from loadlab.history import Samples
from loadlab.processes import LabError
from loadlab.sampler import parse_metrics, scrape
from loadlab.steps import StepSummary

SIDECAR_COMMAND = ("python -m monitoring.sidecar --host 0.0.0.0 --port 9256 --group 'target=REGEX' "
                   "(REGEX: a regex of your server's command line, e.g. 'gunicorn .*myapi:app')")
PROCS = "namedprocess_namegroup_num_procs"
NODE_CPU = "node_cpu_seconds_total"
SERVER_HISTOGRAM = "http_request_duration_seconds"
# The target's fields a remote sidecar provides: unknown for a step without its samples.
TARGET_RESOURCE_FIELDS = ("target_cpu_cores", "target_memory_bytes", "target_procs", "target_cores_available",
                          "host_cpu_busy_cores", "target_cpu_wait_cores", "host_cpu_steal_share")
SERVER_LATENCY_FIELDS = ("server_p95_ms", "server_mean_ms", "server_rps")
# A step keeps a remote source's figures when that source's samples span at least this share of
# its hold; an outage shorter than MIN_NOTED_S that cost no step is not worth a note.
MIN_COVERAGE = 0.5
MIN_NOTED_S = 3.0
GENERATOR_SIDECAR_SOURCE = "generator_sidecar"  # a load machine's sidecar (`loadlab.generators.SOURCE_PREFIX`)


def metrics_url(text: str, flag: str) -> str:
    """`text` as a scrape URL: http(s)://host[:port][/path], /metrics when no path is given."""
    parts = urllib.parse.urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LabError(f"{flag} {text!r} is not a URL: give it like http://10.0.0.5:9256/metrics")
    try:
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number or out of range)
    except ValueError:
        raise LabError(f"{flag} {text!r} has no valid port: give it like http://10.0.0.5:9256/metrics") from None
    path = parts.path if parts.path not in ("", "/") else "/metrics"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def metrics_url_on_host(host: str, port: int) -> str:
    """`--target-metrics-port P` with `--host URL`: the API's metrics port on the API's machine."""
    hostname = urllib.parse.urlsplit(host).hostname or "127.0.0.1"
    if ":" in hostname:  # IPv6
        hostname = f"[{hostname}]"
    return f"http://{hostname}:{port}/metrics"


def _fetch(url: str, flag: str, timeout: float = 5.0) -> list[tuple[str, dict[str, str], float]]:
    try:
        return parse_metrics(scrape(url, timeout=timeout), (PROCS, NODE_CPU, SERVER_HISTOGRAM))
    except ValueError as exc:
        raise LabError(f"{flag} {url} answers, but not with Prometheus metrics ({exc})") from None
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise LabError(f"{flag} {url} does not answer ({getattr(reason, 'strerror', None) or reason})") from None


@dataclass(frozen=True)
class RemoteSidecar:
    url: str
    group: str
    procs: int
    host_cores: int


def check_sidecar(url: str, group: str) -> RemoteSidecar:
    """The remote sidecar answers, has the group with at least one process and host metrics; else
    LabError with what to do."""
    try:
        samples = _fetch(url, "--target-sidecar")
    except LabError as exc:
        raise LabError(f"{exc}: start the sidecar on the API's machine: {SIDECAR_COMMAND}") from None
    groups = {labels.get("groupname", ""): value for name, labels, value in samples if name == PROCS}
    if group not in groups:
        have = ", ".join(sorted(groups)) or "none"
        raise LabError(f"--target-sidecar {url} has no process group {group!r} (its groups: {have}): start it with "
                       f"--group '{group}=REGEX' matching your server's command line, or pass --target-group NAME")
    if groups[group] < 1:
        raise LabError(f"--target-sidecar {url}: group {group!r} has no process (its regex matches nothing running "
                       f"there): check the regex on that machine with `python -m monitoring.sidecar --once "
                       f"--group '{group}=REGEX'`; a group without processes would read as an idle API")
    cpus = {labels.get("cpu") for name, labels, _ in samples if name == NODE_CPU}
    if not cpus:
        raise LabError(f"--target-sidecar {url} serves no host metrics (node_cpu_seconds_total; started with "
                       f"--no-host-metrics?): the verdict needs the API machine's cores; start it without that flag")
    return RemoteSidecar(url, group, int(groups[group]), len(cpus))


def check_target_metrics(url: str, flag: str | None) -> str | None:
    """None when `url` serves the API's request histogram; else why not. `flag`: the flag that named
    this URL (--target-metrics, --target-metrics-port), which makes a URL that does not answer a
    LabError; None: the lab's own guess (HOST/metrics), which may be absent."""
    try:
        samples = _fetch(url, flag or "metrics")
    except LabError as exc:
        if flag:
            raise LabError(f"{exc}: start your API's metrics there, or leave the flag out") from None
        return str(exc).removeprefix("metrics ")
    if not any(name.startswith(SERVER_HISTOGRAM) for name, _, _ in samples):
        return f"{url} serves no {SERVER_HISTOGRAM} histogram"
    return None


def sidecar_hint(port: int) -> str:
    """For a taken --sidecar-port: when a sidecar answers there, how to use it instead."""
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        samples = parse_metrics(scrape(url, timeout=1.0), (PROCS,))
    except (OSError, ValueError):
        return ""
    if not any(name == PROCS for name, _, _ in samples):
        return ""
    return (f"; a resource sidecar answers there: --sidecar-port is the port of the sidecar the lab starts itself; "
            f"to have the lab read a sidecar you started (beside your API), pass --target-sidecar {url}")


# ------------------------------------------------------------------ sources that stop answering


@dataclass(frozen=True)
class Outage:
    """A source that answered, then did not: from its first failed scrape to its next answer."""

    source: str
    start: float
    end: float | None  # None: it never answered again before sampling ended
    error: str


def outages(samples: Samples, source: str) -> list[Outage]:
    """The outages of `source` after it first answered (failures before that are the start-up)."""
    ok_times = sorted(s.t for s in samples.scrapes(source))
    if not ok_times:
        return []
    events = sorted([(t, True, "") for t in ok_times] + [(t, False, e) for t, e in samples.failures.get(source, [])])
    out: list[Outage] = []
    seen_ok = False
    down: tuple[float, str] | None = None
    for t, ok, error in events:
        if ok:
            if down is not None:
                out.append(Outage(source, down[0], t, down[1]))
                down = None
            seen_ok = True
        elif seen_ok and down is None:
            down = (t, error)
    if down is not None:
        out.append(Outage(source, down[0], None, down[1]))
    return out


def _overlaps(step: StepSummary, outage: Outage) -> bool:
    end = float("inf") if outage.end is None else outage.end
    return outage.start <= step.end and end >= step.hold_start


def coverage(step: StepSummary, times: list[float]) -> float:
    """The share of the step's hold that a source's answered scrapes span. Its counters are
    cumulative, so a gap inside the span costs nothing; only a hold its samples do not reach is lost."""
    inside = [t for t in times if step.hold_start <= t <= step.end]
    hold = step.end - step.hold_start
    if len(inside) < 2 or hold <= 0:
        return 0.0
    return (inside[-1] - inside[0]) / hold


def apply_outages(steps: list[StepSummary], remote: Mapping[str, str], samples: Samples) -> list[str]:
    """Blank the figures of every step whose hold a remote source's outage left mostly without
    samples (its resource verdict is then unknown rather than judged from a sliver of the hold),
    and return notes that say which source, from when, and which steps. `remote`: source -> URL.
    A short silence inside a hold costs nothing (counters bridge it) and is noted only when it
    lasted MIN_NOTED_S or more."""
    notes = []
    t0 = steps[0].start if steps else None
    for source, url in remote.items():
        sidecar = source == TARGET_SIDECAR_SOURCE or source.startswith(TARGET_SIDECAR_SOURCE + "_")  # a fleet's too
        fields = TARGET_RESOURCE_FIELDS if sidecar else (
            SERVER_LATENCY_FIELDS if source == TARGET_JOB or source.startswith(TARGET_JOB + "_metrics_") else ())
        times = sorted(s.t for s in samples.scrapes(source))
        for outage in outages(samples, source):
            when = time.strftime("%H:%M:%S", time.localtime(outage.start))
            hit = [s for s in steps if _overlaps(s, outage) and coverage(s, times) < MIN_COVERAGE]
            for step in hit:
                for name in fields:
                    setattr(step, name, None)
                if sidecar:  # the analysis quotes it where this step's CPU was needed (`analysis.target_gap_reason`)
                    step.resource_gap = f"{source} {url} stopped answering at {when}"
            lasted = (outage.end if outage.end is not None else float("inf")) - outage.start
            if not hit and lasted < MIN_NOTED_S:
                continue
            since = f" ({outage.start - t0:.0f} s into the run)" if t0 is not None else ""
            until = (f"to {time.strftime('%H:%M:%S', time.localtime(outage.end))}" if outage.end is not None
                     else "to the end of the run")
            what = ("their target CPU and memory are unknown, so is their resource verdict"
                    if sidecar else "their server-side latency is unknown")
            steps_text = (f"steps at {', '.join(str(s.users) for s in hit)} users: {what}" if hit
                          else "every step kept enough of its samples")
            notes.append(f"note: {source} ({url}) stopped answering at {when}{since} {until} "
                         f"({outage.error or 'no answer'}); {steps_text}")
    return notes


def describe_change(source: str, url: str, ok: bool, since: float, error: str, down_since: float | None) -> str:
    """The console's line when a remote source (on the API's machines, or a load machine's
    `generator_sidecar_<i>`) stops answering or answers again."""
    when = time.strftime("%H:%M:%S", time.localtime(since))
    if not ok:
        lost = ("no resource figures" if source.startswith(TARGET_SIDECAR_SOURCE) else
                "no CPU from that load machine, so a generator limit there is not ruled out"
                if source.startswith(GENERATOR_SIDECAR_SOURCE) else "no server-side latency figures")
        return f"{source} {url} stopped answering at {when} ({error}); the run goes on: steps without its samples get {lost}"
    gone = f" (silent for {since - down_since:.0f} s)" if down_since is not None else ""
    return f"{source} {url} answers again at {when}{gone}"


def remote_sources(target_sidecar: str | None, target_metrics: str | None) -> dict[str, str]:
    """Source name -> URL of the sources on the API's machine (not started by the lab)."""
    out = {}
    if target_sidecar:
        out[TARGET_SIDECAR_SOURCE] = target_sidecar
    if target_metrics:
        out[TARGET_JOB] = target_metrics
    return out


__all__ = ["RemoteSidecar", "Outage", "apply_outages", "check_sidecar", "check_target_metrics",
                          "describe_change", "metrics_url", "metrics_url_on_host", "outages", "remote_sources",
                          "sidecar_hint"]
