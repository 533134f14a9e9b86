"""The Grafana dashboards and provisioning: current schema, modern panels only, a datasource
variable everywhere, units on every panel, thresholds from loadlab/contract/thresholds.py, and PromQL
that promtool parses."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from loadlab.contract.thresholds import DEFAULT_THRESHOLDS
from monitoring import dashboards, rules
from tests.helpers import REPO_ROOT
from tests.monitoring.grafana_queries import panel_targets, substitute
from tests.monitoring.grafana_queries import rows as grafana_rows

BOARD_FILES = sorted((REPO_ROOT / "grafana/dashboards").glob("*.json"))
T = DEFAULT_THRESHOLDS


def _load(path):
    return json.loads(path.read_text())


def _panels(board):
    return [p for p in board["panels"] if p["type"] != "row"]


def test_both_dashboards_exist():
    titles = {_load(p)["title"] for p in BOARD_FILES}
    assert "Load lab: Load vs Resources" in titles and "Load lab: per endpoint" in titles


@pytest.mark.parametrize("path", BOARD_FILES, ids=lambda p: p.name)
def test_dashboard_model(path):
    text = path.read_text()
    board = json.loads(text)
    assert "${DS_" not in text and "__inputs" not in board  # import placeholders break provisioning
    assert board["schemaVersion"] >= 39
    assert board["graphTooltip"] == 1  # shared crosshair
    assert re.fullmatch(r"[a-z0-9-]{1,40}", board["uid"])
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert any(p["type"] == "row" for p in board["panels"])
    for panel in _panels(board):
        assert panel["type"] in {"timeseries", "stat", "table", "bargauge"}, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), f"no unit on {panel['title']!r}"
        assert panel.get("description"), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            # Every range selector follows the dashboard (Grafana's rate interval or the time range).
            for window in re.findall(r"\[([^\]]+)\]", target["expr"]):
                assert window in {"$__rate_interval", "$__range"}, (panel["title"], target["expr"])
    annotations = board["annotations"]["list"]
    assert any(a.get("expr") == 'ALERTS{alertstate="firing"}' and a["enable"] for a in annotations)


@pytest.mark.parametrize("path", BOARD_FILES, ids=lambda p: p.name)
def test_panels_do_not_overlap(path):
    occupied: set[tuple[int, int]] = set()
    for panel in _load(path)["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & occupied, f"{panel['title']!r} overlaps another panel"
        occupied |= cells


def test_load_vs_resources_covers_the_issue_rows():
    board = _load(REPO_ROOT / "grafana/dashboards/load-vs-resources.json")
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    for needle in ("throughput", "Failures", "Latency", "Target", "generator", "Host"):
        assert any(needle.lower() in row.lower() for row in rows), needle
    exprs = " ".join(t["expr"] for _, t in panel_targets(board))
    for metric in (rules.USERS, rules.LOCUST_RPS, rules.latency("locust", "p95"), rules.latency("http", "p99"),
                   rules.GROUP_CPU_CORES, rules.INSTANCE_RESIDENT_BYTES, "node_network_receive_bytes_total",
                   "node_memory_MemAvailable_bytes", "locust_request_failures_total"):
        assert metric in exprs, metric
    assert "$__rate_interval" in exprs


def test_several_machines_stay_apart_on_load_vs_resources():
    """Issue 16: with several sidecars and `target` instances, the per-instance row has CPU, requests and
    p95 by `instance`, the saturation stats show the busiest machine beside the sum, and the alerts table
    keeps one row per instance (tests/monitoring/test_two_sidecars.py runs these against Prometheus)."""
    board = dashboards.load_vs_resources(T)
    by_title = {p["title"]: p for p in _panels(board)}
    row = [p["title"] for p in _panels(board) if grafana_rows(board)[p["id"]].startswith("Per instance")]
    exprs = {title: [t["expr"] for t in by_title[title]["targets"]] for title in row}
    assert any(rules.INSTANCE_CPU_SATURATION in e for es in exprs.values() for e in es), row
    assert any("sum by (instance) (rate(http_requests_total" in e for es in exprs.values() for e in es), row
    assert any("sum by (instance, le) (rate(http_request_duration_seconds_bucket" in e
               for es in exprs.values() for e in es), row
    for who, group in (("Target", rules.TARGET_GROUP), ("Generator", rules.GENERATOR_GROUP)):
        targets = next(p for p in _panels(board) if p["title"] == f"{who} CPU saturation" and p["type"] == "stat")["targets"]
        assert [t["legendFormat"] for t in targets] == ["all", "busiest machine"]
        assert targets[1]["expr"] == f"max({rules.by_group(rules.INSTANCE_CPU_SATURATION, group)})"
    (alerts,) = by_title["Alerts in the time range"]["targets"]
    assert re.search(r"max by \([^)]*\binstance\b[^)]*\) \(max_over_time\(ALERTS", alerts["expr"]), alerts["expr"]
    for title in ("Target processes and requests in flight", "Target open file descriptors", "Target memory",
                  "Generator memory"):
        assert all(t["legendFormat"].startswith("{{instance}}") for t in by_title[title]["targets"]), title


def test_slo_and_saturation_lines_come_from_the_thresholds():
    board = dashboards.load_vs_resources(T)
    lines = {}
    for panel in _panels(board):
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        lines[panel["title"]] = [s["value"] for s in steps if s["value"] is not None]
    assert lines["Latency quantiles"] == [T.latency_p95_seconds]
    assert lines["Error ratio"] == [T.error_ratio]
    assert lines["Target CPU saturation"] == [T.cpu_saturation_fraction]
    assert lines["Target memory"] == [T.target_memory_limit_bytes]
    latency = next(p for p in _panels(board) if p["title"] == "Latency quantiles")
    assert latency["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed"


def test_per_endpoint_dashboard_filters_by_its_variables():
    board = _load(REPO_ROOT / "grafana/dashboards/per-endpoint.json")
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["name"]["definition"].startswith("label_values(locust_requests_total")
    assert variables["endpoint"]["definition"].startswith("label_values(http_requests_total")
    for panel, target in panel_targets(board):
        if panel["type"] != "row":
            assert "$name" in target["expr"] or "$endpoint" in target["expr"] or "app_" in target["expr"], panel["title"]


def test_every_panel_query_parses(promtool, tmp_path):
    """promtool parses every query (with Grafana's substitutions) as a recording rule."""
    records = []
    for path in BOARD_FILES:
        board = _load(path)
        for i, (panel, target) in enumerate(panel_targets(board)):
            expr = substitute(target["expr"], {"name": [".*"], "endpoint": ["/client_login", "/x.y"]},
                              interval_s=2, scrape_interval_s=2, range_s=900)
            assert "$" not in expr
            records.append({"record": f"dashboard:query_{path.stem.replace('-', '_')}_{i}", "expr": expr})
    rules_file = tmp_path / "queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": records}]}))
    result = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_substitution_matches_grafana():
    expr = 'rate(x{name=~"$name", e=~"${endpoint}"}[$__rate_interval]) + increase(y[$__range])'
    out = substitute(expr, {"name": ["/a.b"], "endpoint": ["/a", "/b"]}, interval_s=15, scrape_interval_s=2, range_s=3600)
    assert out == r'rate(x{name=~"/a\\.b", e=~"(/a|/b)"}[17s]) + increase(y[3600s])'
    assert "[8s]" in substitute("rate(x[$__rate_interval])", {}, interval_s=2, scrape_interval_s=2, range_s=60)


def test_grafana_provisioning():
    ds = yaml.safe_load((REPO_ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert ds["uid"] == dashboards.DATASOURCE_UID and ds["type"] == "prometheus"
    assert ds["jsonData"]["timeInterval"] == f"{T.scrape_interval_seconds}s"
    assert ds["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((REPO_ROOT / "grafana/provisioning/dashboards/loadlab.yml").read_text())["providers"][0]
    assert provider["type"] == "file"
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
    for board in BOARD_FILES:
        assert _load(board)["templating"]["list"][0]["current"]["value"] == ds["uid"]
