"""Recording rules and breaking-point alerts, built from `loadlab.contract.thresholds`.

Recording rules hold what dashboards and alerts share (throughput, error ratio, latency
quantiles from both histograms, CPU in cores and as a fraction of the cores available), so a
panel shows exactly the number an alert fires on. `monitoring/RUNBOOK.md` explains each alert.

Every rate window is `Thresholds.rate_window_seconds` (4 scrape intervals): shorter windows
hold fewer than two samples after a missed scrape and `rate()` returns nothing.
"""

from __future__ import annotations

from typing import Any

from loadlab.contract.cores import GENERATOR_IDLE_PROCESSES_DISTRIBUTED, TARGET_IDLE_PROCESSES
from loadlab.contract.names import GENERATOR_GROUP, LOCUST_JOB, SIDECAR_JOB, TARGET_GROUP, TARGET_JOB
from loadlab.contract.openmodel import (
    ARRIVAL_RATE,
    ARRIVALS_DROPPED,
    ARRIVALS_LATE,
    ARRIVALS_SCHEDULED,
    CORRECTED_DURATION,
)
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS, Thresholds

# Selectors, in one place like a mixin's config. Job names are the scrape jobs of
# loadlab.contract.names; group names are the sidecar's `--group` names.
LOCUST = f'job="{LOCUST_JOB}"'
TARGET = f'job="{TARGET_JOB}"'
SIDECAR = f'job="{SIDECAR_JOB}"'
# The API's own traffic: health checks (compose, the runner) are cheap and would dilute the
# latency quantiles. /metrics is not counted by the instrumentation at all.
TARGET_API = f'{TARGET}, endpoint!="/healthz"'

# Recording-rule names (level:metric:operations), imported by the dashboards.
USERS = "loadlab:locust_users"
LOCUST_RPS = "loadlab:locust_requests:rate"
LOCUST_FAILURES_RPS = "loadlab:locust_request_failures:rate"
LOCUST_ERROR_RATIO = "loadlab:locust_error_ratio:rate"
PER_USER = "loadlab:locust_throughput_per_user"
PER_USER_SETTLED = "loadlab:locust_throughput_per_user:settled"
PER_USER_BEST = "loadlab:locust_throughput_per_user:best"
TARGET_RPS = "loadlab:http_requests:rate"
TARGET_5XX_RPS = "loadlab:http_requests_5xx:rate"
TARGET_ERROR_RATIO = "loadlab:http_error_ratio:rate"
HOST_CORES = "loadlab:host_cpu:cores"
GROUP_CPU_CORES = "loadlab:namegroup_cpu:cores"
GROUP_CORES_AVAILABLE = "loadlab:namegroup_cpu:cores_available"
GROUP_CPU_SATURATION = "loadlab:namegroup_cpu:saturation"
# The same per sidecar (`instance`): each machine of an API's fleet, each load machine.
INSTANCE_CPU_CORES = "loadlab_instance:namegroup_cpu:cores"
INSTANCE_CORES_AVAILABLE = "loadlab_instance:namegroup_cpu:cores_available"
INSTANCE_CPU_SATURATION = "loadlab_instance:namegroup_cpu:saturation"
# Memory only per machine: its limit is a machine's, and a fleet's sum against it would fire for
# two machines that are each fine.
INSTANCE_RESIDENT_BYTES = "loadlab_instance:namegroup_memory_resident:bytes"
# Open model (arrival-rate runs only; loadlab.contract.openmodel): the rate offered, arrivals
# scheduled/late/dropped per second, and latency from the scheduled start (corrected).
OFFERED = "loadlab:locust_arrival_rate"
SCHEDULED_RPS = "loadlab:locust_arrivals_scheduled:rate"
LATE_RPS = "loadlab:locust_arrivals_late:rate"
DROPPED_RPS = "loadlab:locust_arrivals_dropped:rate"
# Latency quantile name -> the quantile histogram_quantile() takes.
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


def latency(side: str, quantile: str) -> str:
    """Recording-rule name of a latency quantile: side is "locust" (client) or "http" (server)."""
    return f"loadlab:{side}_request_duration_seconds:{quantile}"


def corrected_latency(quantile: str) -> str:
    """Recording-rule name of a quantile of the open model's corrected latency."""
    return f"loadlab:{CORRECTED_DURATION}:{quantile}"


def by_group(metric: str, group: str, selector: str = "") -> str:
    """`metric` selected for one sidecar process group, after any other `selector` labels."""
    labels = f'{selector}, groupname="{group}"' if selector else f'groupname="{group}"'
    return f"{metric}{{{labels}}}"


def _s(seconds: int) -> str:
    return f"{int(seconds)}s"


def _quantile_expr(metric: str, selector: str, q: float, window: str) -> str:
    # `>= 0` drops the NaN histogram_quantile returns for a window without requests: the
    # alerts treat "nothing completed" explicitly instead of comparing against NaN.
    return f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{selector}}}[{window}]))) >= 0"


def recording_groups(t: Thresholds = DEFAULT_THRESHOLDS) -> list[dict[str, Any]]:
    w = _s(t.rate_window_seconds)
    pw = _s(t.plateau_window_seconds)
    load = [
        {"record": USERS, "expr": f"sum(locust_users{{{LOCUST}}})"},
        {"record": LOCUST_RPS, "expr": f"sum(rate(locust_requests_total{{{LOCUST}}}[{w}]))"},
        {"record": LOCUST_FAILURES_RPS, "expr": f"sum(rate(locust_request_failures_total{{{LOCUST}}}[{w}]))"},
        # Absent (not NaN) when nothing completed; the alerts handle that case on purpose.
        {"record": LOCUST_ERROR_RATIO, "expr": f"{LOCUST_FAILURES_RPS} / ({LOCUST_RPS} > 0)"},
        # Averaged over the same window as the rate, so users spawned a moment ago do not
        # count before their requests can.
        {"record": PER_USER, "expr": (
            f"sum(rate(locust_requests_total{{{LOCUST}}}[{pw}]))\n"
            f"/ (sum(avg_over_time(locust_users{{{LOCUST}}}[{pw}])) > 0)")},
        # Only once users have been running for a whole window: right after the first spawn
        # every new user fires at once, which would set an unreachable "best".
        {"record": PER_USER_SETTLED, "expr": f"{PER_USER} and on() (min_over_time({USERS}[{pw}]) > 0)"},
        {"record": PER_USER_BEST, "expr": f"max_over_time({PER_USER_SETTLED}[{_s(t.plateau_lookback_seconds)}])"},
        {"record": TARGET_RPS, "expr": f"sum(rate(http_requests_total{{{TARGET_API}}}[{w}]))"},
        {"record": TARGET_5XX_RPS,
         "expr": f'sum(rate(http_requests_total{{{TARGET_API}, status=~"5.."}}[{w}])) or on() (0 * {TARGET_RPS})'},
        {"record": TARGET_ERROR_RATIO, "expr": f"{TARGET_5XX_RPS} / ({TARGET_RPS} > 0)"},
    ]
    for name, q in QUANTILES.items():
        load.append({"record": latency("locust", name),
                     "expr": _quantile_expr("locust_request_duration_seconds", LOCUST, q, w)})
    for name, q in QUANTILES.items():
        load.append({"record": latency("http", name),
                     "expr": _quantile_expr("http_request_duration_seconds", TARGET_API, q, w)})
    load += [
        {"record": OFFERED, "expr": f"sum({ARRIVAL_RATE}{{{LOCUST}}})"},
        {"record": SCHEDULED_RPS, "expr": f"sum(rate({ARRIVALS_SCHEDULED}{{{LOCUST}}}[{w}]))"},
        {"record": LATE_RPS, "expr": f"sum(rate({ARRIVALS_LATE}{{{LOCUST}}}[{w}]))"},
        {"record": DROPPED_RPS, "expr": f"sum(rate({ARRIVALS_DROPPED}{{{LOCUST}}}[{w}]))"},
    ]
    for name, q in QUANTILES.items():
        load.append({"record": corrected_latency(name), "expr": _quantile_expr(CORRECTED_DURATION, LOCUST, q, w)})

    def procs(group: str) -> str:
        # Per sidecar (`instance`): the lab's own and one on a remote API's machine are one job.
        return f"sum by (instance, groupname) ({by_group('namedprocess_namegroup_num_procs', group, SIDECAR)})"

    def per_instance_at_most_host_cores(busy: str) -> str:
        """min(busy, the cores of the same sidecar's host) per instance: each machine's processes can
        use at most that machine's cores (PromQL has no two-vector min, so: busy where it is below
        the host's cores, else the host's cores with busy's labels)."""
        cores_here = f"(0 * {busy} + on(instance) group_left() {HOST_CORES})"
        return f"({busy} < on(instance) group_left() {HOST_CORES})\n  or {cores_here}"

    def at_most_host_cores(busy: str) -> str:
        """The same summed over instances."""
        return f"sum by (groupname) (\n  {per_instance_at_most_host_cores(busy)}\n)"

    target_busy = f"clamp_min({procs(TARGET_GROUP)} - {TARGET_IDLE_PROCESSES}, 1)"
    generator_busy = (f"clamp_min(\n  {procs(GENERATOR_GROUP)}\n"
                      f"  - on() group_left() {GENERATOR_IDLE_PROCESSES_DISTRIBUTED}\n"
                      f"    * (max(locust_workers{{{LOCUST}}}) > bool 0 or on() vector(0)),\n"
                      f"  1)")

    resources = [
        # Per sidecar: with a remote target the lab's host and the API's host are two machines, and
        # counting CPU ids across both would give the larger one's count to each.
        {"record": HOST_CORES, "expr": f"count by (instance) (count by (instance, cpu) (node_cpu_seconds_total{{{SIDECAR}}}))"},
        {"record": GROUP_CPU_CORES, "expr": (
            f'sum by (groupname) (rate(namedprocess_namegroup_cpu_seconds_total{{{SIDECAR}, '
            f'groupname=~"{TARGET_GROUP}|{GENERATOR_GROUP}"}}[{w}]))')},
        # The cores-available model of loadlab.contract.cores, in PromQL. Target: one core per
        # gunicorn worker, i.e. its processes minus the arbiter, at most the host's cores.
        {"record": GROUP_CORES_AVAILABLE, "labels": {"groupname": TARGET_GROUP}, "expr": at_most_host_cores(target_busy)},
        # Generator: one core per Locust process generating load. Standalone that is the one
        # process; distributed (locust_workers > 0) the master only coordinates, so its
        # process does not count.
        {"record": GROUP_CORES_AVAILABLE, "labels": {"groupname": GENERATOR_GROUP},
         "expr": at_most_host_cores(generator_busy)},
        {"record": GROUP_CPU_SATURATION, "expr": f"{GROUP_CPU_CORES} / {GROUP_CORES_AVAILABLE}"},
        # Per machine (`instance`): an API served by a fleet, load generators on several machines. A
        # fleet at 60% with one machine at 100% is limited by that machine; the sums above hide it.
        {"record": INSTANCE_CPU_CORES, "expr": (
            f'sum by (instance, groupname) (rate(namedprocess_namegroup_cpu_seconds_total{{{SIDECAR}, '
            f'groupname=~"{TARGET_GROUP}|{GENERATOR_GROUP}"}}[{w}]))')},
        {"record": INSTANCE_CORES_AVAILABLE, "labels": {"groupname": TARGET_GROUP},
         "expr": per_instance_at_most_host_cores(target_busy)},
        {"record": INSTANCE_CORES_AVAILABLE, "labels": {"groupname": GENERATOR_GROUP},
         "expr": per_instance_at_most_host_cores(generator_busy)},
        {"record": INSTANCE_CPU_SATURATION, "expr": f"{INSTANCE_CPU_CORES} / {INSTANCE_CORES_AVAILABLE}"},
        {"record": INSTANCE_RESIDENT_BYTES, "expr": (
            f'sum by (instance, groupname) (namedprocess_namegroup_memory_bytes{{{SIDECAR}, memtype="resident", '
            f'groupname=~"{TARGET_GROUP}|{GENERATOR_GROUP}"}})')},
    ]
    interval = _s(t.scrape_interval_seconds)
    return [
        {"name": "loadlab-load", "interval": interval, "rules": load},
        {"name": "loadlab-resources", "interval": interval, "rules": resources},
    ]


# Annotation fragments. `query` runs at the alert's evaluation time, so they quote the load at
# the moment the alert (re-)evaluated, not a later one.
def _q(expr: str, fmt: str) -> str:
    """Template text quoting the first value of `expr`, or "unknown"."""
    return f"{{{{ with query `{expr}` }}}}{{{{ . | first | value | {fmt} }}}}{{{{ else }}}}unknown{{{{ end }}}}"


def _load_context() -> str:
    return "at " + _q(USERS, 'printf "%.0f"') + " users and " + _q(LOCUST_RPS, 'printf "%.1f"') + " req/s"


def _stalled(window: str) -> str:
    # Users have been running for a whole window and not one request completed in it: every
    # ratio and quantile has a zero denominator, which must not look like "healthy". (A whole
    # window, `offset` included: a request counter that just appeared needs two samples, and a
    # rule evaluation after them, before rate() returns anything.)
    return (f"(clamp_max(min_over_time({USERS}[{window}]) > 0, 1) and on() ({USERS} offset {window} > 0)"
            f" unless on() ({LOCUST_RPS} > 0))")


def alert_rules(t: Thresholds = DEFAULT_THRESHOLDS) -> list[dict[str, Any]]:
    w = _s(t.rate_window_seconds)
    pw = _s(t.plateau_window_seconds)
    stalled = _stalled(w)
    fors = t.alert_for_seconds
    ctx = _load_context()
    slo_ms = f"{t.latency_p95_ms:g}ms"
    pct = f"{t.error_ratio * 100:g}%"
    sat = f"{t.cpu_saturation_fraction * 100:g}%"

    def alert(name: str, expr: str, severity: str, component: str, summary: str, description: str) -> dict[str, Any]:
        return {
            "alert": name, "expr": expr, "for": _s(fors[name]),
            "labels": {"severity": severity, "component": component},
            "annotations": {"summary": summary, "description": description,
                            "runbook_url": f"monitoring/RUNBOOK.md#{name.lower()}"},
        }

    def cpu_saturated(name: str, group: str, severity: str, component: str, who: str, summary: str,
                      consequence: str) -> dict[str, Any]:
        """The CPU-saturation alert of one process group: its cores used over the cores available to it."""
        return alert(name,
                     f"{by_group(GROUP_CPU_SATURATION, group)} > {t.cpu_saturation_fraction:g}",
                     severity, component, summary,
                     f"The {who} uses " + _q(by_group(GROUP_CPU_CORES, group), 'printf "%.2f"') + " of "
                     + _q(by_group(GROUP_CORES_AVAILABLE, group), 'printf "%.0f"') + " cores available to it "
                     "({{ $value | humanizePercentage }}, saturated at " + sat + "), " + ctx + ". " + consequence)

    def instance_saturated(name: str, group: str, severity: str, component: str, who: str, summary: str,
                           consequence: str) -> dict[str, Any]:
        """The CPU-saturation alert of one machine of several (its `instance`) for a process group:
        fires for that machine only, and only when the group runs on more than one machine (with one,
        the alert above says the same)."""
        one = by_group(INSTANCE_CPU_SATURATION, group)
        return alert(name,
                     f"{one} > {t.cpu_saturation_fraction:g}\nand on() (count({one}) > 1)",
                     severity, component, summary,
                     f"The {who} on {{{{ $labels.instance }}}} uses {{{{ $value | humanizePercentage }}}} of the cores "
                     f"available to it there (saturated at {sat}) while all its machines together are at "
                     + _q(by_group(GROUP_CPU_SATURATION, group), "humanizePercentage") + ", " + ctx + ". "
                     + consequence)

    p95_client, p95_server = latency("locust", "p95"), latency("http", "p95")
    rules = [
        alert("TargetDown",
              f"up{{{TARGET}}} == 0 or absent(up{{{TARGET}}})",
              "critical", "target",
              "Target API is down{{ if $labels.instance }} ({{ $labels.instance }}){{ end }}",
              "Prometheus cannot scrape the target API{{ if $labels.instance }} at {{ $labels.instance }}"
              "{{ else }}: no `target` job is scraped at all{{ end }}, " + ctx + ". The last scrape took "
              + _q(f'scrape_duration_seconds{{{TARGET}}}', 'printf "%.2f"') + f" s (timeout {t.scrape_interval_seconds} s). "
              "The lab scrapes the target's metrics port, served by the gunicorn arbiter apart from the load, "
              "so far below the timeout the target refuses connections (down, or the wrong port); at the "
              "timeout the host is starved, or the job scrapes /metrics on the API port, which waits behind "
              "the load (start the target with --metrics-port)."),
        alert("LoadTestErrorRatioHigh",
              f"{LOCUST_ERROR_RATIO} > {t.error_ratio:g}\n"
              f"or on() {stalled}\n"
              # Load from another tool (no Locust job): judge the API's own 5xx ratio.
              f"or on() ({TARGET_ERROR_RATIO} > {t.error_ratio:g} unless on() {LOCUST_RPS})",
              "critical", "target",
              "Error ratio {{ $value | humanizePercentage }} is above the " + pct + " SLO",
              "{{ $value | humanizePercentage }} of requests failed over the last " + w + " (SLO " + pct + "), "
              + ctx + " (100% with no request completing means the target stopped answering). "
              "The API itself counted " + _q(TARGET_5XX_RPS, 'printf "%.1f"') + " 5xx/s."),
        alert("LoadTestLatencySLOBreached",
              f"{p95_client} > {t.latency_p95_seconds:g}\n"
              f"or on() ({p95_server} > {t.latency_p95_seconds:g} unless on() {p95_client})\n"
              f"or on() ({stalled} * +Inf)",
              "critical", "target",
              "p95 latency {{ $value | humanizeDuration }} breaches the " + slo_ms + " SLO",
              "Client-side (Locust) p95 latency is {{ $value | humanizeDuration }} over the last " + w
              + " (SLO " + slo_ms + "; +Inf: no request completed), " + ctx
              + ". Server-side p95 is " + _q(p95_server, "humanizeDuration")
              + ": far below the client's means requests queue before the app sees them."),
        alert("LoadTestThroughputPlateau",
              f"{PER_USER} < {t.plateau_fraction:g} * {PER_USER_BEST}\n"
              f"and on() ({USERS} > min_over_time({USERS}[{_s(t.users_rising_window_seconds)}]))",
              "warning", "target",
              "Throughput per user fell to {{ $value | printf \"%.3f\" }} req/s while users keep rising: the knee",
              "Each user now gets {{ $value | printf \"%.3f\" }} req/s, below " + f"{t.plateau_fraction * 100:g}%"
              + " of the run's best (" + _q(PER_USER_BEST, 'printf "%.3f"') + " req/s), " + ctx
              + ". Adding users no longer adds throughput: the target has passed its knee."),
        cpu_saturated("TargetCPUSaturated", TARGET_GROUP, "warning", "target", "target",
                      "Target CPU at {{ $value | humanizePercentage }} of its available cores",
                      "CPU is what runs out first."),
        instance_saturated("TargetInstanceCPUSaturated", TARGET_GROUP, "warning", "target", "target",
                           "Target CPU on {{ $labels.instance }} at {{ $value | humanizePercentage }} of its available cores",
                           "One machine of the API's fleet is out of CPU and limits it: a slower machine, or a load "
                           "balancer that sends it more than its share."),
        # Per machine, on one machine or many: the limit is what one machine holds.
        alert("TargetMemoryHigh",
              f"{by_group(INSTANCE_RESIDENT_BYTES, TARGET_GROUP)} > {t.target_memory_limit_bytes}",
              "warning", "target",
              "Target resident memory on {{ $labels.instance }} {{ $value | humanize1024 }}B is above "
              f"{t.target_memory_limit_bytes / 1024**2:g} MiB",
              "The target's processes on {{ $labels.instance }} hold {{ $value | humanize1024 }}B resident (limit "
              f"{t.target_memory_limit_bytes / 1024**2:g} MiB per machine), " + ctx + ". A leak or too many workers."),
        cpu_saturated("LoadGeneratorSaturated", GENERATOR_GROUP, "critical", "generator", "load generator",
                      "Locust is out of CPU ({{ $value | humanizePercentage }}): the measured breaking point is not valid",
                      "Latency and throughput now measure Locust, not the target: add Locust workers "
                      "(--processes N or --worker)."),
        instance_saturated("LoadGeneratorInstanceSaturated", GENERATOR_GROUP, "critical", "generator", "load generator",
                           "Locust on {{ $labels.instance }} is out of CPU ({{ $value | humanizePercentage }}): the "
                           "measured breaking point is not valid",
                           "That load machine measures itself, not the target: add workers on more machines, or "
                           "fewer per machine."),
        # The open model's break: completions fall short of the arrivals. Averaged over the plateau
        # window (20 s) rather than the rate window, because the requests in flight at a window's
        # edges are a few percent of an 8 s window at light load, and that is no shortfall; judged
        # only once arrivals have been offered for that whole window (at the start Locust's request
        # counter appears with the first answer, after the arrivals'); no answer at all counts as 0.
        alert("LoadTestThroughputBelowOffered",
              f"(sum(rate(locust_requests_total{{{LOCUST}}}[{pw}])) or on() vector(0))\n"
              f"< {1 - t.throughput_shortfall_fraction:g} * sum(rate({ARRIVALS_SCHEDULED}{{{LOCUST}}}[{pw}]))\n"
              f"and on() (min_over_time({OFFERED}[{pw}]) > 0)",
              "critical", "target",
              "Throughput {{ $value | printf \"%.1f\" }} req/s is below the offered arrival rate",
              "The API completed {{ $value | printf \"%.1f\" }} req/s over the last " + pw + " while "
              + _q(f"sum(rate({ARRIVALS_SCHEDULED}{{{LOCUST}}}[{pw}]))", 'printf "%.1f"') + " arrivals/s were "
              "scheduled (offered rate " + _q(OFFERED, 'printf "%.1f"') + "/s), " + ctx + ": below "
              + f"{(1 - t.throughput_shortfall_fraction) * 100:g}%" + " of the arrivals, the API no longer keeps up"
              ". Late arrivals " + _q(LATE_RPS, 'printf "%.1f"') + "/s, dropped " + _q(DROPPED_RPS, 'printf "%.1f"')
              + "/s. Past its capacity: the backlog grows, and so does the latency from the scheduled start."),
        # Not a breaking-point alert: without the sidecar the CPU and memory alerts above would
        # resolve silently, because their series disappear.
        alert("LoadLabSidecarDown",
              f"up{{{SIDECAR}}} == 0 or absent(up{{{SIDECAR}}})",
              "warning", "sidecar",
              "Resource sidecar is not scraped: CPU and memory alerts are blind",
              "Prometheus cannot scrape the psutil sidecar{{ if $labels.instance }} at {{ $labels.instance }}{{ end }}, "
              + ctx + ". TargetCPUSaturated, TargetMemoryHigh and LoadGeneratorSaturated cannot fire."),
    ]
    return [{"name": "loadlab-alerts", "interval": _s(t.scrape_interval_seconds), "rules": rules}]
