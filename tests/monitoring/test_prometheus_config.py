"""`monitoring.prometheus_config.render`: the one function behind every Prometheus config."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from monitoring.prometheus_config import COMPOSE_TARGETS, JOBS, ConfigRenderError, default_rule_files, render
from tests.helpers import REPO_ROOT


def test_rendered_config_for_free_ports_passes_promtool(tmp_path, promtool):
    targets = {"target": "127.0.0.1:41001", "locust": "127.0.0.1:41002", "sidecar": "127.0.0.1:41003"}
    path = tmp_path / "prometheus.yml"
    path.write_text(render(targets, default_rule_files(), 2, alertmanager="127.0.0.1:41004"))
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text())
    assert [job["job_name"] for job in config["scrape_configs"]] == list(JOBS)
    assert config["scrape_configs"][1]["static_configs"][0]["targets"] == ["127.0.0.1:41002"]
    assert config["global"]["scrape_interval"] == config["global"]["evaluation_interval"] == "2s"
    assert config["global"]["scrape_timeout"] == "2s"
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:41004"]


def test_subset_of_jobs_and_no_alertmanager():
    config = yaml.safe_load(render({"locust": "127.0.0.1:9646"}, [], 3))
    assert [job["job_name"] for job in config["scrape_configs"]] == ["locust"]
    assert "alerting" not in config


@pytest.mark.parametrize("targets, interval, message", [
    ({"targett": "127.0.0.1:1"}, 2, "unknown scrape job(s) targett"),
    ({"target": "127.0.0.1"}, 2, "not a host:port address"),
    ({"target": "127.0.0.1:70000"}, 2, "not a host:port address"),
    ({}, 2, "no scrape targets"),
    ({"target": "127.0.0.1:5000"}, 0, "scrape interval"),
])
def test_bad_arguments_are_named(targets, interval, message):
    with pytest.raises(ConfigRenderError, match=message.replace("(", r"\(").replace(")", r"\)")):
        render(targets, [], interval)


def test_committed_configs_use_the_compose_and_native_targets():
    compose = yaml.safe_load((REPO_ROOT / "monitoring/prometheus/prometheus.compose.yml").read_text())
    assert {job["job_name"]: job["static_configs"][0]["targets"][0] for job in compose["scrape_configs"]} == COMPOSE_TARGETS
    native = yaml.safe_load((REPO_ROOT / "monitoring/prometheus/prometheus.yml").read_text())
    for job in native["scrape_configs"]:
        assert job["static_configs"][0]["targets"][0].startswith("127.0.0.1:")


def test_default_rule_files_exist():
    for path in default_rule_files():
        assert path.startswith("/") and (REPO_ROOT / "monitoring/prometheus/rules").joinpath(path.rsplit("/", 1)[1]).is_file()
