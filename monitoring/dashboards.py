"""Grafana dashboards and datasource provisioning, built from `loadlab.contract.thresholds` as plain dicts.

Plain dicts rather than grafana-foundation-sdk: the SDK's PyPI versions are epoch-numbered per
Grafana release (`pip install grafana-foundation-sdk` resolves to the *10.1* schema, and pinning
needs strings like `1769699379!11.6.0`), it would be a runtime dependency of a project that only
needs JSON out, and the dashboard model is small enough that `tests/monitoring/` checks it
directly (panel types, units, datasource references, PromQL syntax through promtool, and every
query against a real Prometheus in the integration test).

Panels that show a number an alert fires on query the recording rule (what you see is what
alerts); breakdowns by request name, endpoint or mode use `rate(...[$__rate_interval])`.
"""

from __future__ import annotations

from typing import Any

from loadlab.contract.openmodel import ARRIVALS_DROPPED
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS, Thresholds
from monitoring import rules as r

DATASOURCE_UID = "loadlab-prometheus"
DATASOURCE_NAME = "Prometheus"
# Every panel and query points at the template variable, never at a fixed uid or an import
# placeholder (`${DS_...}` breaks file provisioning).
DS = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39
# The row whose panels only have data in arrival-rate (open-model) runs.
OPEN_MODEL_ROW = "Open model (arrival rate): offered vs achieved"
CORES = "suffix: cores"


class _Grid:
    """Lays panels left to right in rows of 24 columns, as Grafana's gridPos expects."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = self.row_h = 0

    def _next_id(self) -> int:
        return len(self.panels) + 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "id": self._next_id(), "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
            self.x = self.row_h = 0

    def add(self, panel: dict[str, Any], w: int, h: int = 8) -> None:
        if self.x + w > 24:
            self._newline()
        panel["id"] = self._next_id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def q(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> dict[str, Any]:
    target: dict[str, Any] = {"datasource": DS, "editorMode": "code", "expr": expr,
                              "legendFormat": legend or "__auto", "range": not instant, "instant": instant}
    if table:
        target["format"] = "table"
    return target


def _thresholds(line: float | None, color: str = "red") -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if line is not None:
        steps.append({"color": color, "value": line})
    return {"mode": "absolute", "steps": steps}


def _with_ref_ids(targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for i, target in enumerate(targets):
        target["refId"] = chr(ord("A") + i)
    return targets


def timeseries(title: str, description: str, targets: list[dict[str, Any]], unit: str, *,
               line: float | None = None, overrides: list[dict[str, Any]] | None = None,
               stack: bool = False, min_: float | None = 0) -> dict[str, Any]:
    """A time series panel; `line` draws a dashed threshold line (SLO, saturation level)."""
    defaults: dict[str, Any] = {
        "unit": unit,
        "color": {"mode": "palette-classic"},
        "custom": {
            "drawStyle": "line", "lineWidth": 1, "fillOpacity": 20 if stack else 0, "showPoints": "never",
            "spanNulls": False, "axisPlacement": "auto",
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            "thresholdsStyle": {"mode": "dashed" if line is not None else "off"},
        },
        "thresholds": _thresholds(line),
    }
    if min_ is not None:
        defaults["min"] = min_
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "targets": _with_ref_ids(targets),
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def stat(title: str, description: str, expr: str | list[dict[str, Any]], unit: str, *,
         line: float | None = None) -> dict[str, Any]:
    """A stat of one query, or of several (`expr` a list of targets), each shown with its legend."""
    return {
        "type": "stat", "title": title, "description": description, "datasource": DS,
        "targets": _with_ref_ids([q(expr)] if isinstance(expr, str) else expr),
        "fieldConfig": {"defaults": {"unit": unit, "decimals": 2, "color": {"mode": "thresholds"},
                                     "thresholds": _thresholds(line)}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "textMode": "auto",
                    "justifyMode": "auto", "orientation": "auto"},
    }


def bargauge(title: str, description: str, targets: list[dict[str, Any]], unit: str, *,
             line: float | None = None) -> dict[str, Any]:
    return {
        "type": "bargauge", "title": title, "description": description, "datasource": DS,
        "targets": _with_ref_ids(targets),
        "fieldConfig": {"defaults": {"unit": unit, "min": 0, "color": {"mode": "thresholds"},
                                     "thresholds": _thresholds(line)}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True,
                    "valueMode": "color", "namePlacement": "auto", "sizing": "auto"},
    }


def table(title: str, description: str, targets: list[dict[str, Any]], unit: str,
          hide: tuple[str, ...] = ("Time",)) -> dict[str, Any]:
    """A table of instant queries, merged on their labels (one row per label set)."""
    return {
        "type": "table", "title": title, "description": description, "datasource": DS,
        "targets": _with_ref_ids(targets),
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"align": "auto"},
                                     "thresholds": _thresholds(None)}, "overrides": []},
        "transformations": [{"id": "merge", "options": {}},
                            {"id": "organize", "options": {"excludeByName": {name: True for name in hide}}}],
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
    }


def _axis_right(series: str, unit: str) -> dict[str, Any]:
    return {"matcher": {"id": "byName", "options": series},
            "properties": [{"id": "unit", "value": unit}, {"id": "custom.axisPlacement", "value": "right"}]}


def _dashed(series: str, regexp: bool = False) -> dict[str, Any]:
    """Draw the series named `series` (or, with `regexp`, every series whose name matches it) dashed."""
    return {"matcher": {"id": "byRegexp" if regexp else "byName", "options": series},
            "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}


def _datasource_variable() -> dict[str, Any]:
    return {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
            "current": {"selected": False, "text": DATASOURCE_NAME, "value": DATASOURCE_UID},
            "hide": 0, "refresh": 1, "regex": "", "options": [], "includeAll": False, "multi": False}


def _query_variable(name: str, label: str, metric: str, label_name: str) -> dict[str, Any]:
    return {"type": "query", "name": name, "label": label, "datasource": DS,
            "definition": f"label_values({metric}, {label_name})",
            "query": {"qryType": 1, "query": f"label_values({metric}, {label_name})",
                      "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2, "sort": 1, "multi": True, "includeAll": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "hide": 0, "regex": "", "options": []}


def _alert_annotations() -> list[dict[str, Any]]:
    return [
        {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
         "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"},
        # Prometheus's own alert state: firing breaking-point alerts appear on every panel.
        {"datasource": DS, "enable": True, "hide": False, "iconColor": "red", "name": "Firing alerts",
         "expr": 'ALERTS{alertstate="firing"}', "step": "10s", "titleFormat": "{{alertname}}",
         "tagKeys": "severity,component,instance", "textFormat": "{{component}}: {{alertname}} {{instance}}",
         "useValueForTime": False},
    ]


def _dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]],
               variables: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description,
        "tags": ["loadlab", "load-test"], "editable": True, "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "timezone": "browser",
        "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
        "time": {"from": "now-15m", "to": "now"}, "refresh": "5s",
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"]},
        "annotations": {"list": _alert_annotations()},
        "templating": {"list": [_datasource_variable(), *variables]},
        "links": [{"title": "Load lab dashboards", "type": "dashboards", "tags": ["loadlab"], "asDropdown": False,
                   "includeVars": True, "keepTime": True, "icon": "external link", "targetBlank": False,
                   "tooltip": "", "url": ""}],
        "panels": panels,
    }


def _group_rows(g: _Grid, t: Thresholds, group: str, who: str) -> None:
    g.add(timeseries(
        f"{who} CPU: cores used vs available",
        f"CPU of every process in the sidecar's `{group}` group (children included), and the cores it can "
        "use: one per busy process, at most the host's cores (see RUNBOOK).",
        [q(r.by_group(r.GROUP_CPU_CORES, group), "used"), q(r.by_group(r.GROUP_CORES_AVAILABLE, group), "available")],
        CORES, overrides=[_dashed("available")]), w=8)
    g.add(timeseries(
        f"{who} CPU saturation",
        f"Cores used / cores available; the saturation alert fires above {t.cpu_saturation_fraction:g}.",
        [q(r.by_group(r.GROUP_CPU_SATURATION, group), "saturation")], "percentunit",
        line=t.cpu_saturation_fraction), w=8)
    memory_line = t.target_memory_limit_bytes if group == r.TARGET_GROUP else None
    g.add(timeseries(
        f"{who} memory",
        "Resident memory summed over the group's processes, per machine (instance) (shared pages of forked "
        "workers count once per process, so this errs high)."
        + (" Dashed line: TargetMemoryHigh, which judges each machine." if memory_line else ""),
        [q(r.by_group(r.INSTANCE_RESIDENT_BYTES, group), "{{instance}}")], "bytes", line=memory_line), w=8)


def _saturation_stat(t: Thresholds, who: str, group: str, description: str) -> dict[str, Any]:
    """Cores used / available of all the group's machines together, and of its busiest machine: a
    fleet at 60% can have one machine at 100%."""
    return stat(f"{who} CPU saturation", description + " All machines together, and the busiest one.",
                [q(r.by_group(r.GROUP_CPU_SATURATION, group), "all"),
                 q(f"max({r.by_group(r.INSTANCE_CPU_SATURATION, group)})", "busiest machine")],
                "percentunit", line=t.cpu_saturation_fraction)


def _per_instance(metric: str, group: str) -> str:
    """A sidecar metric of one group, summed per machine (instance)."""
    return f"sum by (instance) ({r.by_group(metric, group, r.SIDECAR)})"


def load_vs_resources(t: Thresholds = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    g = _Grid()
    slo = t.latency_p95_seconds
    g.row("Now")
    g.add(stat("Users", "Simulated users (locust_users).", r.USERS, "none"), w=4, h=4)
    g.add(stat("Throughput", "Requests per second completed, as Locust sees them.", r.LOCUST_RPS, "reqps"), w=4, h=4)
    g.add(stat("p95 latency (client)", f"Locust's p95; SLO {t.latency_p95_ms:g} ms.",
               r.latency("locust", "p95"), "s", line=slo), w=4, h=4)
    g.add(stat("Error ratio", f"Failed / all requests; SLO {t.error_ratio:g}.", r.LOCUST_ERROR_RATIO,
               "percentunit", line=t.error_ratio), w=4, h=4)
    g.add(_saturation_stat(t, "Target", r.TARGET_GROUP, "Target cores used / cores available."), w=4, h=4)
    g.add(_saturation_stat(t, "Generator", r.GENERATOR_GROUP, "Locust cores used / cores available. Above the "
                           "line the generator, not the target, is the bottleneck."), w=4, h=4)

    g.row("Load: users and throughput")
    g.add(timeseries(
        "Users and throughput",
        "Simulated users (right axis) against requests/s completed: Locust's count (client) and the API's "
        "(server, health checks excluded). Where users keep rising and throughput does not, that is the knee.",
        [q(r.USERS, "users"), q(r.LOCUST_RPS, "req/s (Locust)"), q(r.TARGET_RPS, "req/s (API)")],
        "reqps", overrides=[_axis_right("users", "none")]), w=12, h=9)
    g.add(timeseries(
        "Throughput per user (the knee)",
        f"Requests/s per simulated user over {t.plateau_window_seconds}s, its best of the run, and the level "
        f"({t.plateau_fraction:g} x best) below which LoadTestThroughputPlateau fires while users rise.",
        [q(r.PER_USER, "per user"), q(r.PER_USER_BEST, "best of run"),
         q(f"{t.plateau_fraction:g} * {r.PER_USER_BEST}", "plateau alert level")],
        "reqps", overrides=[_dashed("plateau alert level")]), w=12, h=9)

    g.row(OPEN_MODEL_ROW)
    g.add(timeseries(
        "Offered rate vs achieved throughput",
        "Arrival-rate runs only (--arrival-rate, --scenario rate-step). The rate offered, the arrivals actually "
        "scheduled per second, and the requests the API completed. While it keeps up they coincide; past its "
        f"capacity the throughput stays flat below them. Dashed: the alert level ({1 - t.throughput_shortfall_fraction:g}"
        " x the arrivals), below which LoadTestThroughputBelowOffered fires.",
        [q(r.OFFERED, "offered"), q(r.SCHEDULED_RPS, "arrivals scheduled"), q(r.LOCUST_RPS, "achieved"),
         q(f"{1 - t.throughput_shortfall_fraction:g} * {r.SCHEDULED_RPS}", "alert level")],
        "reqps", overrides=[_dashed("alert level")]), w=8, h=9)
    g.add(timeseries(
        "Late and dropped arrivals",
        "Arrivals per second that found every request slot (--max-concurrency) busy and waited (late), and that "
        "were never sent (dropped: waited longer than --arrival-timeout, or still waiting when the test ended).",
        [q(r.LATE_RPS, "late"),
         q(f"sum by (reason) (rate({ARRIVALS_DROPPED}{{{r.LOCUST}}}[$__rate_interval]))", "dropped ({{reason}})")],
        "reqps"), w=8, h=9)
    g.add(timeseries(
        "Latency from the scheduled start (corrected) vs from the send",
        "Corrected p50/p95/p99: from each arrival's scheduled start, what traffic that keeps arriving sees; the "
        "uncorrected p95 is Locust's own, from when the request was sent (it leaves out the wait for a slot: "
        f"coordinated omission). Dashed line: the {t.latency_p95_ms:g} ms p95 SLO, judged on the corrected p95.",
        [*(q(r.corrected_latency(name), f"{name} corrected") for name in r.QUANTILES),
         q(r.latency("locust", "p95"), "p95 uncorrected")],
        "s", line=t.latency_p95_seconds), w=8, h=9)

    g.row("Failures")
    g.add(timeseries(
        "Failures by request (Locust)", "Failed requests per second by Locust request name.",
        [q('sum by (name) (rate(locust_request_failures_total{%s}[$__rate_interval]))' % r.LOCUST, "{{name}}")],
        "reqps"), w=8)
    g.add(timeseries(
        "Error ratio", f"Client-side failed/all, and the API's 5xx/all. SLO line at {t.error_ratio:g}.",
        [q(r.LOCUST_ERROR_RATIO, "client (Locust)"), q(r.TARGET_ERROR_RATIO, "server 5xx (API)")],
        "percentunit", line=t.error_ratio), w=8)
    g.add(timeseries(
        "API responses by status", "Responses per second the API sent, by status code.",
        [q('sum by (status) (rate(http_requests_total{%s}[$__rate_interval]))' % r.TARGET_API, "{{status}}")],
        "reqps", stack=True), w=8)
    g.add(table(
        "Errors (Locust) in the time range",
        "Locust's error messages by request name; a single `(none)` row means no request failed.",
        [q('sum by (name, error) (increase(locust_errors_total{%s}[$__range]))'
           ' or on() label_replace(label_replace(vector(0), "name", "(none)", "", ""), "error", "(none)", "", "")'
           % r.LOCUST, instant=True, table=True)],
        "none"), w=24, h=6)

    g.row("Latency: Locust (client) vs API (server)")
    g.add(timeseries(
        "Latency quantiles",
        f"p50/p95/p99 from Locust's histogram (what users see, queueing included) and the API's "
        f"(time inside the app). Dashed line: the {t.latency_p95_ms:g} ms p95 SLO. Client far above server "
        "means requests wait before the app sees them.",
        [q(r.latency(side, name), f"{name} {label}") for side, label in (("locust", "client"), ("http", "server"))
         for name in r.QUANTILES],
        "s", line=slo), w=16, h=9)
    g.add(bargauge(
        "p95 by request (client)", "Locust's p95 per request name over the dashboard's rate interval.",
        [q('histogram_quantile(0.95, sum by (le, name) (rate(locust_request_duration_seconds_bucket{%s}[$__rate_interval])))'
           % r.LOCUST, "{{name}}")],
        "s", line=slo), w=8, h=9)

    g.row("Target (API) resources")
    _group_rows(g, t, r.TARGET_GROUP, "Target")
    g.add(timeseries(
        "Target processes and requests in flight",
        "gunicorn arbiter + workers, their threads, and the mean number of requests being handled "
        "(Little's law: the rate of the time spent in requests), per machine: the sidecar's instance for "
        "processes and threads, the metrics endpoint's (`target` job) for requests in flight.",
        [q(_per_instance("namedprocess_namegroup_num_procs", r.TARGET_GROUP), "{{instance}} processes"),
         q(_per_instance("namedprocess_namegroup_num_threads", r.TARGET_GROUP), "{{instance}} threads"),
         q(f"sum by (instance) (rate(http_request_duration_seconds_sum{{{r.TARGET}}}[$__rate_interval]))",
           "{{instance}} requests in flight")],
        "none"), w=12, h=7)
    g.add(timeseries(
        "Target open file descriptors", "Sockets, the SQLite file and its WAL across the target's processes, "
        "per machine (instance).",
        [q(_per_instance("namedprocess_namegroup_open_filedesc", r.TARGET_GROUP), "{{instance}}")],
        "none"), w=12, h=7)

    g.row("Load generator (Locust) resources")
    _group_rows(g, t, r.GENERATOR_GROUP, "Generator")
    g.add(timeseries(
        "Locust processes and workers",
        "Processes in the sidecar's locust group on each load machine (instance), and workers connected to "
        "the master (0 standalone).",
        [q(_per_instance("namedprocess_namegroup_num_procs", r.GENERATOR_GROUP), "{{instance}} processes"),
         q(f"sum(locust_workers{{{r.LOCUST}}})", "workers (master)")], "none"), w=24, h=6)

    g.row("Per instance (each machine of a fleet)")
    g.add(timeseries(
        "CPU per instance: cores used vs available",
        "Each sidecar (instance) on its own: every machine of an API served by a fleet (--target-sidecar, "
        "repeated) and every load machine (--generator-sidecar). A fleet whose sum looks fine can have one "
        "machine out of CPU (TargetInstanceCPUSaturated).",
        [q(r.INSTANCE_CPU_CORES, "{{instance}} {{groupname}} used"),
         q(r.INSTANCE_CORES_AVAILABLE, "{{instance}} {{groupname}} available")],
        CORES, overrides=[_dashed(".* available$", regexp=True)]), w=12)
    g.add(timeseries(
        "CPU saturation per instance",
        f"Cores used / cores available on each machine; the per-instance alerts fire above "
        f"{t.cpu_saturation_fraction:g} when a group runs on more than one machine.",
        [q(r.INSTANCE_CPU_SATURATION, "{{instance}} {{groupname}}")], "percentunit",
        line=t.cpu_saturation_fraction), w=12)
    g.add(timeseries(
        "API requests per instance",
        "Requests/s each metrics endpoint of the API (`target` job, --target-metrics repeated) counted, health "
        "checks excluded. Behind a load balancer the machines' shares show here: unequal lines with equal "
        "machines mean an unequal balance.",
        [q(f"sum by (instance) (rate(http_requests_total{{{r.TARGET_API}}}[$__rate_interval]))", "{{instance}}")],
        "reqps"), w=12)
    g.add(timeseries(
        "API p95 latency per instance",
        f"Server-side p95 of each metrics endpoint (`target` job); dashed line: the {t.latency_p95_ms:g} ms SLO. "
        "One machine far above the others is the slower or the busier one.",
        [q("histogram_quantile(0.95, sum by (instance, le) "
           f"(rate(http_request_duration_seconds_bucket{{{r.TARGET_API}}}[$__rate_interval])))", "{{instance}} p95")],
        "s", line=slo), w=12)

    g.row("Host")
    g.add(timeseries(
        "Host CPU by mode", "Share of all host cores by mode (idle left out), stacked; one set per sidecar "
        "(instance): with a remote target, the lab's host and the API's host.",
        [q(f'sum by (instance, mode) (rate(node_cpu_seconds_total{{{r.SIDECAR}, mode!="idle"}}[$__rate_interval]))'
           f' / on(instance) group_left() {r.HOST_CORES}',
           "{{instance}} {{mode}}")], "percentunit", stack=True, line=t.cpu_saturation_fraction), w=8)
    g.add(timeseries(
        "Host memory", "Memory in use (total - available) and total, per sidecar (instance).",
        [q(f"sum by (instance) (node_memory_MemTotal_bytes{{{r.SIDECAR}}}) - sum by (instance) "
           f"(node_memory_MemAvailable_bytes{{{r.SIDECAR}}})", "{{instance}} used"),
         q(f"sum by (instance) (node_memory_MemTotal_bytes{{{r.SIDECAR}}})", "{{instance}} total")], "bytes",
        overrides=[_dashed(".* total$", regexp=True)]), w=8)
    g.add(timeseries(
        "Host network", "Bytes per second received (+) and sent (-) by interface; natively the load runs over `lo`.",
        [q(f"sum by (instance, device) (rate(node_network_receive_bytes_total{{{r.SIDECAR}}}[$__rate_interval]))",
           "{{instance}} {{device}} rx"),
         q(f"-sum by (instance, device) (rate(node_network_transmit_bytes_total{{{r.SIDECAR}}}[$__rate_interval]))",
           "{{instance}} {{device}} tx")],
        "Bps", min_=None), w=8)
    g.add(timeseries(
        "Host load average", "1-minute load average against the number of cores.",
        [q(f"node_load1{{{r.SIDECAR}}}", "{{instance}} load1"), q(r.HOST_CORES, "{{instance}} cores")], "none",
        overrides=[_dashed(".* cores$", regexp=True)]), w=12, h=7)
    g.add(table(
        "Alerts in the time range",
        "Every lab alert that was pending or firing at some point of the dashboard's time range, one row per "
        "machine (instance) for the alerts that judge one.",
        [q("max by (alertname, alertstate, severity, component, instance) (max_over_time(ALERTS[$__range]))",
           instant=True, table=True)], "none", hide=("Time", "Value")), w=12, h=7)
    return _dashboard(
        "loadlab-load-vs-resources", "Load lab: Load vs Resources",
        "Users, throughput, failures and latency on the same time axis as the CPU and memory of the target, "
        "the load generator and the host. Firing alerts are annotations.", g.panels, [])


def per_endpoint(t: Thresholds = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    g = _Grid()
    slo = t.latency_p95_seconds
    name_sel = f'{r.LOCUST}, name=~"$name"'
    ep_sel = f'{r.TARGET}, endpoint=~"$endpoint"'
    g.row("Per request name (Locust, client side)")
    g.add(timeseries(
        "Throughput by request", "Requests/s by Locust request name (failures included).",
        [q(f"sum by (name) (rate(locust_requests_total{{{name_sel}}}[$__rate_interval]))", "{{name}}")],
        "reqps"), w=8)
    g.add(timeseries(
        "Failures by request", "Failed requests/s by Locust request name.",
        [q(f"sum by (name) (rate(locust_request_failures_total{{{name_sel}}}[$__rate_interval]))", "{{name}}")],
        "reqps"), w=8)
    g.add(timeseries(
        "Latency by request", f"p50/p95/p99 per request name; dashed line: the {t.latency_p95_ms:g} ms SLO.",
        [q(f"histogram_quantile({qv}, sum by (le, name) (rate(locust_request_duration_seconds_bucket{{{name_sel}}}[$__rate_interval])))",
           f"{qn} {{{{name}}}}") for qn, qv in r.QUANTILES.items()],
        "s", line=slo), w=8)
    g.add(table(
        "Requests in the time range",
        "Per request name: requests and failures in the time range, and the p95 over it.",
        [q(f"sum by (name) (increase(locust_requests_total{{{name_sel}}}[$__range]))", instant=True, table=True),
         q(f"sum by (name) (increase(locust_request_failures_total{{{name_sel}}}[$__range]))", instant=True, table=True),
         q(f"histogram_quantile(0.95, sum by (le, name) (increase(locust_request_duration_seconds_bucket{{{name_sel}}}[$__range])))",
           instant=True, table=True)],
        "none"), w=24, h=6)

    g.row("Per endpoint (API, server side)")
    g.add(timeseries(
        "Responses by endpoint and status", "Responses/s the API sent, by matched URL rule and status.",
        [q(f"sum by (endpoint, status) (rate(http_requests_total{{{ep_sel}}}[$__rate_interval]))",
           "{{endpoint}} {{status}}")], "reqps"), w=8)
    g.add(timeseries(
        "Latency by endpoint", f"Server-side p50/p95/p99 per URL rule; dashed line: the {t.latency_p95_ms:g} ms SLO.",
        [q(f"histogram_quantile({qv}, sum by (le, endpoint) (rate(http_request_duration_seconds_bucket{{{ep_sel}}}[$__rate_interval])))",
           f"{qn} {{{{endpoint}}}}") for qn, qv in r.QUANTILES.items()],
        "s", line=slo), w=8)
    g.add(bargauge(
        "p95 by endpoint (server)", "Server-side p95 per URL rule over the rate interval.",
        [q(f"histogram_quantile(0.95, sum by (le, endpoint) (rate(http_request_duration_seconds_bucket{{{ep_sel}}}[$__rate_interval])))",
           "{{endpoint}}")], "s", line=slo), w=8)
    g.add(timeseries(
        "Registrations by outcome", "app_registrations_total: created, duplicate (409), invalid (400).",
        [q("sum by (outcome) (rate(app_registrations_total{%s}[$__rate_interval]))" % r.TARGET, "{{outcome}}")],
        "reqps", stack=True), w=12, h=7)
    g.add(timeseries(
        "Logins by outcome", "app_logins_total: success, failure (401), invalid (400).",
        [q("sum by (outcome) (rate(app_logins_total{%s}[$__rate_interval]))" % r.TARGET, "{{outcome}}")],
        "reqps", stack=True), w=12, h=7)
    variables = [
        _query_variable("name", "Locust request", f"locust_requests_total{{{r.LOCUST}}}", "name"),
        _query_variable("endpoint", "API endpoint", f"http_requests_total{{{r.TARGET}}}", "endpoint"),
    ]
    return _dashboard(
        "loadlab-per-endpoint", "Load lab: per endpoint",
        "Throughput, failures and latency per Locust request name and per API endpoint.", g.panels, variables)


def all_dashboards(t: Thresholds = DEFAULT_THRESHOLDS) -> dict[str, dict[str, Any]]:
    """File name -> dashboard model."""
    return {"load-vs-resources.json": load_vs_resources(t), "per-endpoint.json": per_endpoint(t)}


def datasource_provisioning(t: Thresholds = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """Grafana's datasource provisioning file for the compose stack."""
    return {"apiVersion": 1, "datasources": [{
        "name": DATASOURCE_NAME, "uid": DATASOURCE_UID, "type": "prometheus", "access": "proxy",
        "url": "http://prometheus:9090", "isDefault": True, "editable": False,
        # Grafana's $__rate_interval is max(4 x timeInterval, interval + timeInterval): it must know
        # the real scrape interval, or rate windows hold too few samples.
        "jsonData": {"timeInterval": f"{t.scrape_interval_seconds}s", "httpMethod": "POST"},
    }]}
