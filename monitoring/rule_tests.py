"""promtool unit tests of the alert rules, built as synthetic scenarios with known ground truth.

Each scenario describes a world (users, throughput per user, failures, latency, CPU, memory)
as functions of time; `_world_series` turns it into the series the three exporters would
produce, scraped every interval. The expected alerts quote the scenario's own numbers (its
users, its throughput, the p95 the histogram must give), so a rule that computes a different
value, fires late, or stays silent fails `promtool test rules`.

Every alert has a breach scenario in which it fires, and every alert is checked silent on the
healthy linear ramp. Scenarios are sized from `Thresholds` (a breach is well past the
threshold), so changing a threshold keeps them meaningful.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loadlab.contract.openmodel import (
    ARRIVAL_RATE,
    ARRIVALS_DROPPED,
    ARRIVALS_LATE,
    ARRIVALS_SCHEDULED,
    CORRECTED_DURATION,
    DROPPED_TEST_ENDED,
    DROPPED_WAITED_TOO_LONG,
)
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS, Thresholds
from monitoring import rules as r
from monitoring.prometheus_config import NATIVE_TARGETS, RELATIVE_RULE_FILES

Fn = Callable[[float], float]
LOCUST_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HTTP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The instance labels of the committed native config.
INSTANCES = dict(NATIVE_TARGETS)


def _const(value: float) -> Fn:
    return lambda t: value


@dataclass(frozen=True)
class Machine:
    """One machine of a fleet: its sidecar's `instance`, the group it runs, its host's cores, and its
    group's CPU (cores), processes and resident memory (bytes) over time."""

    instance: str
    group: str
    host_cores: int
    cores: Fn
    procs: Fn
    resident: Fn = _const(100 * 1024**2)


@dataclass
class World:
    """What happens during a synthetic run; every field is a function of seconds since start."""

    duration: int
    users: Fn = _const(40)
    per_user_rps: Fn = _const(0.5)
    # Caps the completed requests/s (a saturated target): None = no cap.
    max_rps: float | None = None
    fail_fraction: Fn = _const(0.0)
    latency: Fn = _const(0.05)
    server_latency: Fn = _const(0.04)
    target_cores: Fn = _const(0.4)
    target_procs: Fn = _const(3)  # gunicorn arbiter + 2 workers
    target_resident: Fn = _const(200 * 1024**2)
    locust_cores: Fn = _const(0.2)
    locust_procs: Fn = _const(1)
    locust_workers: Fn = _const(0)
    host_cores: int = 2
    up: dict[str, Fn] = field(default_factory=dict)
    scrape_seconds: dict[str, Fn] = field(default_factory=dict)
    # Jobs with no series at all (never scraped).
    absent_jobs: tuple[str, ...] = ()
    # Open model (arrival-rate runs): the offered rate (arrivals scheduled at it), and the latency
    # from the scheduled start. None: a closed-model run, which exports no such series.
    offered: Fn | None = None
    corrected_latency: Fn | None = None
    # The target on another machine, measured by a second sidecar in the `sidecar` job (its
    # `instance`, its host's cores): `host_cores` is then the lab's own host (the generator's).
    remote_target: tuple[str, int] | None = None
    # Machines of a fleet, each a sidecar of its own (`instance`): the group's series come from these
    # (not from target_cores/locust_cores); the lab's own sidecar keeps the other group.
    fleet: tuple[Machine, ...] = ()

    def rps(self, t: float) -> float:
        rate = self.users(t) * self.per_user_rps(t)
        return rate if self.max_rps is None else min(rate, self.max_rps)


def _num(v: float) -> str:
    return str(int(v)) if v == int(v) else f"{v:.6g}"


def _values(samples: list[float]) -> str:
    """promtool's expanding notation: runs with a constant step become `start+stepxN`."""
    parts, i = [], 0
    while i < len(samples):
        j = i + 1
        if j < len(samples):
            step = round(samples[j] - samples[i], 6)
            while j + 1 < len(samples) and round(samples[j + 1] - samples[j], 6) == step:
                j += 1
        if j - i >= 2 and j < len(samples):
            sign = "+" if step >= 0 else "-"
            parts.append(f"{_num(samples[i])}{sign}{_num(abs(step))}x{j - i}")
            i = j + 1
        else:
            parts.append(_num(samples[i]))
            i += 1
    return " ".join(parts)


def _counter(world: World, interval: int, per_second: Fn) -> list[float]:
    """Counter samples every `interval` seconds: the increment of each step is the rate at its
    start (the users present during an interval are those at its start)."""
    total, out = 0.0, [0.0]
    for i in range(1, world.duration // interval + 1):
        total += per_second((i - 1) * interval) * interval
        out.append(round(total, 6))
    return out


def _gauge(world: World, interval: int, fn: Fn) -> list[float]:
    return [fn(i * interval) for i in range(world.duration // interval + 1)]


def _buckets(world: World, interval: int, job: str, metric: str, labels: str, bounds: tuple[float, ...],
             count_rate: Fn, latency: Fn) -> list[dict[str, str]]:
    out = []
    for le in (*bounds, math.inf):
        def in_bucket(t: float, le: float = le) -> float:
            return count_rate(t) if latency(t) <= le else 0.0

        le_text = "+Inf" if le == math.inf else f"{le:g}"
        out.append({"series": f'{metric}_bucket{{job="{job}", instance="{INSTANCES[job]}", {labels}, le="{le_text}"}}',
                    "values": _values(_counter(world, interval, in_bucket))})
    return out


def _world_series(world: World, interval: int) -> list[dict[str, str]]:
    """The series of `world`, scraped every `interval` seconds."""
    series: list[dict[str, str]] = []

    def add(job: str, name: str, labels: str, samples: list[float], instance: str | None = None) -> None:
        extra = f", {labels}" if labels else ""
        series.append({"series": f'{name}{{job="{job}", instance="{instance or INSTANCES[job]}"{extra}}}',
                       "values": _values(samples)})

    for job in INSTANCES:
        if job not in world.absent_jobs:
            add(job, "up", "", _gauge(world, interval, world.up.get(job, _const(1))))
            add(job, "scrape_duration_seconds", "", _gauge(world, interval, world.scrape_seconds.get(job, _const(0.01))))
    if "locust" not in world.absent_jobs:
        req = 'method="POST", name="/client_login"'
        add("locust", "locust_users", "", _gauge(world, interval, world.users))
        add("locust", "locust_workers", "", _gauge(world, interval, world.locust_workers))
        add("locust", "locust_requests_total", req, _counter(world, interval, world.rps))
        add("locust", "locust_request_failures_total", req,
            _counter(world, interval, lambda t: world.rps(t) * world.fail_fraction(t)))
        series += _buckets(world, interval, "locust", "locust_request_duration_seconds", req, LOCUST_BUCKETS, world.rps, world.latency)
        if world.offered is not None:
            add("locust", ARRIVAL_RATE, "", _gauge(world, interval, world.offered))
            add("locust", ARRIVALS_SCHEDULED, "", _counter(world, interval, world.offered))
            add("locust", ARRIVALS_LATE, "", _counter(world, interval, _const(0)))
            for reason in (DROPPED_WAITED_TOO_LONG, DROPPED_TEST_ENDED):
                add("locust", ARRIVALS_DROPPED, f'reason="{reason}"', _counter(world, interval, _const(0)))
            series += _buckets(world, interval, "locust", CORRECTED_DURATION, req, LOCUST_BUCKETS, world.rps,
                               world.corrected_latency or world.latency)
    if "target" not in world.absent_jobs:
        ep = 'method="POST", endpoint="/client_login"'
        ok = lambda t: world.rps(t) * (1 - world.fail_fraction(t))  # noqa: E731
        add("target", "http_requests_total", ep + ', status="200"', _counter(world, interval, ok))
        add("target", "http_requests_total", ep + ', status="500"',
            _counter(world, interval, lambda t: world.rps(t) * world.fail_fraction(t)))
        series += _buckets(world, interval, "target", "http_request_duration_seconds", ep, HTTP_BUCKETS, world.rps, world.server_latency)
    if "sidecar" not in world.absent_jobs:
        remote = world.remote_target[0] if world.remote_target else None
        on_fleet = {m.group for m in world.fleet}
        groups: list[tuple[str, Fn, Fn, Fn, str | None]] = [
            (r.TARGET_GROUP, world.target_cores, world.target_procs, world.target_resident, remote),
            (r.GENERATOR_GROUP, world.locust_cores, world.locust_procs, _const(80 * 1024**2), None)]
        groups = [g for g in groups if g[0] not in on_fleet]
        groups += [(m.group, m.cores, m.procs, m.resident, m.instance) for m in world.fleet]
        for group, cores, procs, resident, instance in groups:
            g = f'groupname="{group}"'
            add("sidecar", "namedprocess_namegroup_cpu_seconds_total", g + ', mode="user"', _counter(world, interval, cores),
                instance)
            add("sidecar", "namedprocess_namegroup_num_procs", g, _gauge(world, interval, procs), instance)
            add("sidecar", "namedprocess_namegroup_memory_bytes", g + ', memtype="resident"', _gauge(world, interval, resident),
                instance)
        hosts: list[tuple[str | None, int, Fn]] = [(None, world.host_cores, world.locust_cores)]
        if world.fleet:
            hosts[0] = (None, world.host_cores, _const(0.1))
            for m in world.fleet:
                hosts.append((m.instance, m.host_cores, m.cores))
                add("sidecar", "up", "", _gauge(world, interval, _const(1)), m.instance)
        elif world.remote_target:
            hosts.append((remote, world.remote_target[1], world.target_cores))
            add("sidecar", "up", "", _gauge(world, interval, _const(1)), remote)
        else:
            hosts[0] = (None, world.host_cores, lambda t: world.target_cores(t) + world.locust_cores(t))
        for instance, host_cores, used in hosts:
            def busy(t: float, used: Fn = used, host_cores: int = host_cores) -> float:
                return min(1.0, used(t) / host_cores)

            def idle(t: float, busy: Fn = busy) -> float:
                return 1 - busy(t)

            for cpu in range(host_cores):
                add("sidecar", "node_cpu_seconds_total", f'cpu="{cpu}", mode="idle"', _counter(world, interval, idle), instance)
                add("sidecar", "node_cpu_seconds_total", f'cpu="{cpu}", mode="user"', _counter(world, interval, busy), instance)
            add("sidecar", "node_memory_MemTotal_bytes", "", _gauge(world, interval, _const(8 * 1024**3)), instance)
            add("sidecar", "node_memory_MemAvailable_bytes", "", _gauge(world, interval, _const(6 * 1024**3)), instance)
    return series


# --- expected annotations: Prometheus's template functions, for the values we expect ---

def _go_g(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return format(v, ".4g")


def humanize_duration(v: float) -> str:
    if math.isnan(v) or math.isinf(v):
        return _go_g(v)
    if v == 0:
        return "0s"
    if abs(v) >= 1:
        if abs(v) >= 60:
            raise ValueError("scenarios keep durations under a minute")
        return f"{_go_g(v)}s"
    prefix = ""
    for p in ("m", "u", "n"):
        if abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return f"{_go_g(v)}{prefix}s"


def humanize_1024(v: float) -> str:
    prefix = ""
    if abs(v) > 1:
        for p in ("ki", "Mi", "Gi", "Ti"):
            if abs(v) < 1024:
                break
            prefix, v = p, v / 1024
    return f"{_go_g(v)}{prefix}"


_FORMATS: dict[str, Callable[[float], str]] = {
    "humanizeDuration": humanize_duration,
    "humanizePercentage": lambda v: f"{_go_g(v * 100)}%",
    "humanize1024": humanize_1024,
}


def _fmt(fmt: str, v: float) -> str:
    m = re.fullmatch(r'printf "%\.(\d)f"', fmt)
    if m:
        return f"{v:.{int(m[1])}f}"
    return _FORMATS[fmt](v)


def expected_text(template: str, value: float, labels: dict[str, str], queries: dict[str, float | None]) -> str:
    """`template` with the values a correct rule must produce substituted (the subset of Go
    template syntax the lab's annotations use)."""
    def with_query(m: re.Match[str]) -> str:
        v = queries[m["expr"]]
        return "unknown" if v is None else _fmt(m["fmt"], v)

    text = re.sub(r"\{\{ with query `(?P<expr>[^`]+)` \}\}\{\{ \. \| first \| value \| (?P<fmt>[^}]+?) \}\}"
                  r"\{\{ else \}\}unknown\{\{ end \}\}", with_query, template)

    def if_label(m: re.Match[str]) -> str:
        return m["then"] if labels.get(m["label"]) else (m["else"] or "")

    text = re.sub(r"\{\{ if \$labels\.(?P<label>\w+) \}\}(?P<then>.*?)(?:\{\{ else \}\}(?P<else>.*?))?\{\{ end \}\}",
                  if_label, text)
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m[1], ""), text)
    text = re.sub(r"\{\{ \$value \| (?P<fmt>[^}]+?) \}\}", lambda m: _fmt(m["fmt"], value), text)
    if "{{" in text:
        raise ValueError(f"expected_text cannot render: {text}")
    return text


def _bucket_quantile(latency: float, bounds: tuple[float, ...], q: float) -> float:
    """histogram_quantile's answer when every observation has this latency."""
    lower = 0.0
    for upper in bounds:
        if latency <= upper:
            return lower + (upper - lower) * q
        lower = upper
    return lower  # in the +Inf bucket Prometheus answers the highest finite bound


@dataclass
class Expect:
    """One alert expected firing at an eval time, with the ground truth its annotations quote."""

    alertname: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)
    queries: dict[str, float | None] = field(default_factory=dict)


def _load_queries(users: float | None, rps: float | None) -> dict[str, float | None]:
    return {r.USERS: users, r.LOCUST_RPS: rps}


class RuleTestBuilder:
    def __init__(self, t: Thresholds) -> None:
        self.t = t
        self.alerts = {rule["alert"]: rule for rule in r.alert_rules(t)[0]["rules"]}

    def expected_alert(self, e: Expect) -> dict[str, Any]:
        rule = self.alerts[e.alertname]
        labels = {**e.labels, **rule["labels"]}
        ann = {k: expected_text(v, e.value, labels, e.queries) for k, v in rule["annotations"].items()}
        return {"exp_labels": labels, "exp_annotations": ann}

    def case(self, name: str, world: World, firing: dict[int, list[Expect]],
             silent: dict[int, tuple[str, ...]], exprs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        tests = []
        for at, expects in firing.items():
            for e in expects:
                tests.append({"eval_time": f"{at}s", "alertname": e.alertname, "exp_alerts": [self.expected_alert(e)]})
        for at, names in silent.items():
            for alertname in names:
                tests.append({"eval_time": f"{at}s", "alertname": alertname, "exp_alerts": []})
        interval = self.t.scrape_interval_seconds
        group: dict[str, Any] = {"name": name, "interval": f"{interval}s", "input_series": _world_series(world, interval),
                                 "alert_rule_test": tests}
        if exprs:
            group["promql_expr_test"] = exprs
        return group


def _step(t0: float, before: float, after: float) -> Fn:
    return lambda t: after if t >= t0 else before


def rule_test_files(t: Thresholds = DEFAULT_THRESHOLDS) -> dict[str, dict[str, Any]]:
    """File name -> promtool test file (rule_files are relative to the test file)."""
    b = RuleTestBuilder(t)
    names = tuple(b.alerts)
    slo = t.latency_p95_seconds
    header = {"rule_files": [f"../{path}" for path in RELATIVE_RULE_FILES],
              "evaluation_interval": f"{t.scrape_interval_seconds}s"}

    # Healthy linear ramp: one more user every 2 s for 2 minutes, every user served at the same
    # rate, latency and CPU growing with load but far from every threshold.
    ramp = World(duration=180, users=lambda s: 1 + s // 2,
                 target_cores=lambda s: 0.006 * (1 + s // 2), locust_cores=lambda s: 0.002 * (1 + s // 2))
    healthy = [b.case(
        "healthy linear ramp: no alert", ramp, {}, {at: names for at in (10, 30, 60, 120, 180)},
        exprs=[
            {"expr": r.HOST_CORES, "eval_time": "60s",
             "exp_samples": [{"labels": f'{r.HOST_CORES}{{instance="{INSTANCES["sidecar"]}"}}', "value": 2}]},
            {"expr": r.by_group(r.GROUP_CORES_AVAILABLE, r.TARGET_GROUP), "eval_time": "60s",
             "exp_samples": [{"labels": r.by_group(r.GROUP_CORES_AVAILABLE, r.TARGET_GROUP), "value": 2}]},
            {"expr": r.by_group(r.GROUP_CORES_AVAILABLE, r.GENERATOR_GROUP), "eval_time": "60s",
             "exp_samples": [{"labels": r.by_group(r.GROUP_CORES_AVAILABLE, r.GENERATOR_GROUP), "value": 1}]},
            {"expr": r.latency("locust", "p95"), "eval_time": "60s",
             "exp_samples": [{"labels": r.latency("locust", "p95"), "value": _bucket_quantile(0.05, LOCUST_BUCKETS, 0.95)}]},
        ])]

    # Breaches start at 60 s from a steady 40 users x 0.5 req/s = 20 req/s.
    users, rps = 40.0, 20.0
    load = _load_queries(users, rps)
    at = 60 + max(t.alert_for_seconds.values()) + 4 * t.scrape_interval_seconds
    bad_latency = 4 * slo  # lands in a bucket well above the SLO
    p95_bad = _bucket_quantile(bad_latency, LOCUST_BUCKETS, 0.95)
    p95_server = _bucket_quantile(0.6 * slo, HTTP_BUCKETS, 0.95)
    fail = min(0.5, 20 * t.error_ratio)
    breaches = [
        b.case("error ratio above the SLO", World(duration=at, fail_fraction=_step(60, 0, fail)),
               {at: [Expect("LoadTestErrorRatioHigh", fail, queries={**load, r.TARGET_5XX_RPS: rps * fail})]},
               {50: ("LoadTestErrorRatioHigh",)}),
        b.case("latency above the SLO (client side)",
               World(duration=at, latency=_step(60, 0.05, bad_latency), server_latency=_step(60, 0.04, 0.6 * slo)),
               {at: [Expect("LoadTestLatencySLOBreached", p95_bad, queries={**load, r.latency("http", "p95"): p95_server})]},
               {50: ("LoadTestLatencySLOBreached",), at: ("LoadTestErrorRatioHigh",)}),
        b.case("latency above the SLO with no Locust job (server side)",
               World(duration=at, server_latency=_step(60, 0.04, bad_latency), absent_jobs=("locust",)),
               {at: [Expect("LoadTestLatencySLOBreached", _bucket_quantile(bad_latency, HTTP_BUCKETS, 0.95),
                            queries={**_load_queries(None, None),
                                     r.latency("http", "p95"): _bucket_quantile(bad_latency, HTTP_BUCKETS, 0.95)})]},
               {50: ("LoadTestLatencySLOBreached",)}),
        # Guard: the target stops answering. Nothing completes, so the error ratio and the
        # quantiles have zero denominators; the alerts must fire, not resolve.
        b.case("target stalls: no request completes",
               World(duration=at, per_user_rps=_step(60, 0.5, 0.0)),
               {at: [Expect("LoadTestErrorRatioHigh", 1.0, queries={**_load_queries(users, 0.0), r.TARGET_5XX_RPS: 0.0}),
                     Expect("LoadTestLatencySLOBreached", math.inf,
                            queries={**_load_queries(users, 0.0), r.latency("http", "p95"): None})]},
               {50: ("LoadTestErrorRatioHigh", "LoadTestLatencySLOBreached")}),
        b.case("target refuses connections", World(duration=at, up={"target": _step(60, 1, 0)},
                                                    scrape_seconds={"target": _step(60, 0.01, 0.002)}),
               {at: [Expect("TargetDown", 0, labels={"job": "target", "instance": INSTANCES["target"]},
                            queries={**load, 'scrape_duration_seconds{job="target"}': 0.002})]},
               {50: ("TargetDown",)}),
        b.case("target too overloaded to answer its scrape", World(
            duration=at, up={"target": _step(60, 1, 0)}, scrape_seconds={"target": _step(60, 0.01, t.scrape_interval_seconds)}),
               {at: [Expect("TargetDown", 0, labels={"job": "target", "instance": INSTANCES["target"]},
                            queries={**load, 'scrape_duration_seconds{job="target"}': t.scrape_interval_seconds})]},
               {50: ("TargetDown",)}),
        b.case("target never scraped (absent)", World(duration=at, absent_jobs=("target",)),
               {at: [Expect("TargetDown", 1, labels={"job": "target"},
                            queries={**load, 'scrape_duration_seconds{job="target"}': None})]}, {}),
        b.case("sidecar scrape fails", World(duration=at, up={"sidecar": _step(60, 1, 0)}),
               {at: [Expect("LoadLabSidecarDown", 0, labels={"job": "sidecar", "instance": INSTANCES["sidecar"]},
                            queries=load)]},
               {50: ("LoadLabSidecarDown",)}),
        b.case("target memory above the limit",
               World(duration=at + 30, target_resident=_step(60, 200 * 1024**2, 1.5 * t.target_memory_limit_bytes)),
               {at + 30: [Expect("TargetMemoryHigh", 1.5 * t.target_memory_limit_bytes,
                                 labels={"groupname": r.TARGET_GROUP, "instance": INSTANCES["sidecar"]}, queries=load)]},
               {50: ("TargetMemoryHigh",)}),
    ]
    # Memory on an API served by two machines: the limit is one machine's. One above it fires for that
    # machine only; two each at 60% of it (120% together) fire nothing.
    limit = t.target_memory_limit_bytes
    most = float(round(0.6 * limit))  # whole bytes: the series notation writes them exactly
    big, small = ("10.0.0.5:9256", "10.0.0.6:9256")
    grows = _step(60, 200 * 1024**2, 1.5 * limit)
    breaches += [
        b.case("target memory above the limit on one machine of two",
               World(duration=at + 30, fleet=(Machine(big, r.TARGET_GROUP, 2, _const(0.2), _const(2), grows),
                                              Machine(small, r.TARGET_GROUP, 2, _const(0.2), _const(2),
                                                      _const(200 * 1024**2)))),
               {at + 30: [Expect("TargetMemoryHigh", 1.5 * limit, labels={"groupname": r.TARGET_GROUP, "instance": big},
                                 queries=load)]},
               {50: ("TargetMemoryHigh",)}),
        b.case("two machines each at 60% of the memory limit: no alert",
               World(duration=at + 30, fleet=tuple(Machine(i, r.TARGET_GROUP, 2, _const(0.2), _const(2), _const(most))
                                                   for i in (big, small))),
               {}, {at + 30: ("TargetMemoryHigh",)},
               exprs=[{"expr": r.by_group(r.INSTANCE_RESIDENT_BYTES, r.TARGET_GROUP), "eval_time": f"{at + 30}s",
                       "exp_samples": [{"labels": f'{r.INSTANCE_RESIDENT_BYTES}{{groupname="{r.TARGET_GROUP}", instance="{i}"}}',
                                        "value": most} for i in (big, small)]}]),
    ]

    # CPU: 2 gunicorn workers (3 processes) on 2 cores can use 2 cores; 4 workers on 2 cores
    # still only 2; a single-process server 1.
    sat = (1 + t.cpu_saturation_fraction) / 2  # between the threshold and 100%
    cpu_cases = []
    for label, procs, cores_available in (("2 workers", 3, 2), ("4 workers on 2 cores", 5, 2), ("single process", 1, 1)):
        used = sat * cores_available
        cpu_cases.append(b.case(
            f"target CPU saturated ({label})",
            World(duration=at, target_procs=_const(procs), target_cores=_step(60, 0.2, used)),
            {at: [Expect("TargetCPUSaturated", sat, labels={"groupname": r.TARGET_GROUP},
                         queries={**load, r.by_group(r.GROUP_CPU_CORES, r.TARGET_GROUP): used,
                                  r.by_group(r.GROUP_CORES_AVAILABLE, r.TARGET_GROUP): cores_available})]},
            {50: ("TargetCPUSaturated",)}))
    # Two sidecars: the target's on a remote 2-core machine (4 workers there can use 2 cores), the
    # lab's own on an 8-core one with Locust. Each machine's processes get that machine's cores:
    # counting CPU ids across both sidecars would give the target 4 cores and never see it saturated.
    remote = ("10.0.0.5:9256", 2)
    used = sat * 2
    cpu_cases.append(b.case(
        "target CPU saturated on a remote 2-core host (second sidecar), lab host 8 cores",
        World(duration=at, target_procs=_const(5), target_cores=_step(60, 0.2, used), host_cores=8,
              remote_target=remote),
        {at: [Expect("TargetCPUSaturated", sat, labels={"groupname": r.TARGET_GROUP},
                     queries={**load, r.by_group(r.GROUP_CPU_CORES, r.TARGET_GROUP): used,
                              r.by_group(r.GROUP_CORES_AVAILABLE, r.TARGET_GROUP): 2})]},
        {50: ("TargetCPUSaturated", "LoadLabSidecarDown")},
        exprs=[{"expr": r.HOST_CORES, "eval_time": "60s", "exp_samples": [
            {"labels": f'{r.HOST_CORES}{{instance="{INSTANCES["sidecar"]}"}}', "value": 8},
            {"labels": f'{r.HOST_CORES}{{instance="{remote[0]}"}}', "value": 2}]},
            {"expr": r.by_group(r.GROUP_CORES_AVAILABLE, r.GENERATOR_GROUP), "eval_time": "60s",
             "exp_samples": [{"labels": r.by_group(r.GROUP_CORES_AVAILABLE, r.GENERATOR_GROUP), "value": 1}]}]))
    # An API served by two machines behind a load balancer, one worker each (one usable core each):
    # one machine saturated, the other at 30%. The fleet is at 62% (TargetCPUSaturated stays silent);
    # the per-instance alert fires for the saturated machine only.
    hot, cool = ("10.0.0.5:9256", "10.0.0.6:9256")
    fleet = (Machine(hot, r.TARGET_GROUP, 2, _step(60, 0.2, sat), _const(2)),
             Machine(cool, r.TARGET_GROUP, 2, _const(0.3), _const(2)))
    cpu_cases.append(b.case(
        "one machine of a two-machine API saturated, the fleet not",
        World(duration=at, fleet=fleet),
        {at: [Expect("TargetInstanceCPUSaturated", sat, labels={"groupname": r.TARGET_GROUP, "instance": hot},
                     queries={**load, r.by_group(r.GROUP_CPU_SATURATION, r.TARGET_GROUP): (sat + 0.3) / 2})]},
        {50: ("TargetInstanceCPUSaturated",), at: ("TargetCPUSaturated", "LoadLabSidecarDown")},
        exprs=[{"expr": r.by_group(r.INSTANCE_CORES_AVAILABLE, r.TARGET_GROUP), "eval_time": "60s", "exp_samples": [
            {"labels": f'{r.INSTANCE_CORES_AVAILABLE}{{groupname="{r.TARGET_GROUP}", instance="{i}"}}', "value": 1}
            for i in (hot, cool)]},
            {"expr": r.by_group(r.GROUP_CORES_AVAILABLE, r.TARGET_GROUP), "eval_time": "60s",
             "exp_samples": [{"labels": r.by_group(r.GROUP_CORES_AVAILABLE, r.TARGET_GROUP), "value": 2}]}]))
    # Two load machines, one worker each: one out of CPU makes the measurement invalid; it is named.
    loaders = (Machine(hot, r.GENERATOR_GROUP, 2, _step(60, 0.1, sat), _const(1)),
               Machine(cool, r.GENERATOR_GROUP, 2, _const(0.2), _const(1)))
    cpu_cases.append(b.case(
        "one of two load machines saturated",
        World(duration=at, fleet=loaders, locust_workers=_const(2)),
        {at: [Expect("LoadGeneratorInstanceSaturated", sat, labels={"groupname": r.GENERATOR_GROUP, "instance": hot},
                     queries={**load, r.by_group(r.GROUP_CPU_SATURATION, r.GENERATOR_GROUP): (sat + 0.2) / 2})]},
        {50: ("LoadGeneratorInstanceSaturated",), at: ("LoadGeneratorSaturated",)}))
    # A busy target below the threshold: 2 workers using 1.2 of their 2 cores.
    cpu_cases.append(b.case("target CPU busy but not saturated",
                            World(duration=at, target_cores=_const(0.5 * 2 * t.cpu_saturation_fraction)), {},
                            {at: ("TargetCPUSaturated",)}))
    for label, procs, workers, cores_available in (("standalone", 1, 0, 1), ("master + 4 workers on 2 cores", 5, 4, 2)):
        used = sat * cores_available
        cpu_cases.append(b.case(
            f"generator CPU saturated ({label})",
            World(duration=at, locust_procs=_const(procs), locust_workers=_const(workers),
                  locust_cores=_step(60, 0.1, used)),
            {at: [Expect("LoadGeneratorSaturated", sat, labels={"groupname": r.GENERATOR_GROUP},
                         queries={**load, r.by_group(r.GROUP_CPU_CORES, r.GENERATOR_GROUP): used,
                                  r.by_group(r.GROUP_CORES_AVAILABLE, r.GENERATOR_GROUP): cores_available})]},
            {50: ("LoadGeneratorSaturated",)}))
    # Distributed Locust using one full core of the two its workers may use: not saturated,
    # though a one-core-per-generator rule would say so.
    cpu_cases.append(b.case("generator distributed, half busy",
                            World(duration=at, locust_procs=_const(5), locust_workers=_const(4), locust_cores=_const(1.0)),
                            {}, {at: ("LoadGeneratorSaturated",)}))

    # The knee: users rise 10 per 30 s; completed requests cap at 15 req/s (30 users x 0.5).
    # At 40 users each gets 0.375 req/s (75% of the best 0.5: not yet), at 50 users 0.3 (60%).
    best = 0.5
    cap_users = 30
    knee_users = 50  # first step whose per-user throughput is below plateau_fraction x best
    while cap_users / knee_users >= t.plateau_fraction:
        knee_users += 10
    step_start = (knee_users // 10 - 1) * 30
    eval_knee = step_start + 28
    knee = World(duration=eval_knee, users=lambda s: 10 * (1 + s // 30), per_user_rps=_const(best),
                 max_rps=cap_users * best)
    per_user = cap_users * best / knee_users
    plateau = [
        b.case("throughput plateau while users rise", knee,
               {eval_knee: [Expect("LoadTestThroughputPlateau", per_user,
                                   queries={**_load_queries(knee_users, cap_users * best), r.PER_USER_BEST: best})]},
               {step_start - 2: ("LoadTestThroughputPlateau",)}),
        # Same per-user drop with users flat (latency grew, not load): not the knee.
        b.case("per-user throughput falls with users flat", World(
            duration=300, users=_const(30), per_user_rps=_step(150, best, best * (t.plateau_fraction - 0.2))),
            {}, {300: ("LoadTestThroughputPlateau",)}),
    ]
    # Open model: 20 request slots, 20 arrivals/s offered. From 60 s the API completes only
    # 75 % of them (15 req/s: past its capacity), and the arrivals wait 4 x the SLO from their
    # scheduled start; a run that keeps up (20 of 20 req/s) fires nothing.
    slots, offered = 20.0, 20.0
    done = offered * max(0.5, 1 - 5 * t.throughput_shortfall_fraction)
    behind = World(duration=at, users=_const(slots), per_user_rps=_step(60, offered / slots, done / slots),
                   offered=_const(offered), corrected_latency=_step(60, 0.05, bad_latency))
    open_model = [
        b.case("open model: throughput below the offered rate", behind,
               {at: [Expect("LoadTestThroughputBelowOffered", done,
                            queries={**_load_queries(slots, done), r.OFFERED: offered, r.LATE_RPS: 0.0,
                                     r.DROPPED_RPS: 0.0,
                                     f'sum(rate({ARRIVALS_SCHEDULED}{{{r.LOCUST}}}[{t.plateau_window_seconds}s]))': offered})]},
               {50: ("LoadTestThroughputBelowOffered",)},
               exprs=[{"expr": r.corrected_latency("p95"), "eval_time": f"{at}s",
                       "exp_samples": [{"labels": r.corrected_latency("p95"), "value": p95_bad}]},
                      {"expr": r.OFFERED, "eval_time": f"{at}s", "exp_samples": [{"labels": r.OFFERED, "value": offered}]}]),
        b.case("open model keeping up: no alert",
               World(duration=at, users=_const(slots), per_user_rps=_const(offered / slots), offered=_const(offered)),
               {}, {at: names}),
    ]
    return {
        "healthy_test.yml": {**header, "tests": healthy},
        "breaches_test.yml": {**header, "tests": breaches + plateau + open_model},
        "cpu_test.yml": {**header, "tests": cpu_cases},
    }
