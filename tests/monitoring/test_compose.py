"""docker-compose.yml: Debian's docker-compose accepts it, and it agrees with the Prometheus
compose config (every scrape target is a service on the port it listens on) and with the code
(every module, locustfile and flag it runs exists). No Docker engine is needed."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from functools import cache

import pytest
import yaml

from tests.helpers import PYTHON, REPO_ROOT, VENV_BIN, require_binary

ENV = {"GF_SECURITY_ADMIN_USER": "lab-admin", "GF_SECURITY_ADMIN_PASSWORD": "not-a-default"}


def _compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    binary = require_binary("docker-compose")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GF_", "LOCUST_", "TARGET_", "LAB_"))}
    return subprocess.run([binary, "-f", str(REPO_ROOT / "docker-compose.yml"), *args], cwd=REPO_ROOT,
                          env={**clean, **(env or {})}, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def resolved() -> dict:
    """The compose file as docker-compose resolves it (variables interpolated, anchors merged)."""
    result = _compose("config", env=ENV)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_docker_compose_config_accepts_the_file():
    result = _compose("config", "-q", env=ENV)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", sorted(ENV))
def test_grafana_admin_credentials_have_no_default(missing):
    result = _compose("config", "-q", env={k: v for k, v in ENV.items() if k != missing})
    assert result.returncode != 0
    assert missing in result.stderr


def _flag(command: list[str], name: str) -> str | None:
    for i, arg in enumerate(command):
        if arg == name and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _listening_ports(service: dict) -> set[int]:
    command = service.get("command") or []
    ports = set()
    for flag in ("--port", "--metrics-port", "--exporter-port", "--web-port"):
        value = _flag(command, flag)
        if value:
            ports.add(int(value))
    for flag in ("--web.listen-address",):
        value = _flag(command, flag)
        if value:
            ports.add(int(value.rsplit(":", 1)[1]))
    return ports


def test_every_scrape_target_is_a_compose_service_on_its_port(resolved):
    prom = yaml.safe_load((REPO_ROOT / "monitoring/prometheus/prometheus.compose.yml").read_text())
    services = resolved["services"]
    addresses = [(job["job_name"], target) for job in prom["scrape_configs"]
                 for static in job["static_configs"] for target in static["targets"]]
    addresses += [("alertmanager", target) for am in prom["alerting"]["alertmanagers"]
                  for static in am["static_configs"] for target in static["targets"]]
    assert {job for job, _ in addresses} == {"target", "locust", "sidecar", "alertmanager"}
    for job, address in addresses:
        host, port = address.rsplit(":", 1)
        assert host in services, f"{job}: {host} is not a compose service"
        assert int(port) in _listening_ports(services[host]), f"{job}: {host} does not listen on {port}"
        # Reachable from another container: the service binds every interface.
        command = " ".join(services[host].get("command") or [])
        assert "0.0.0.0" in command, f"{host} binds only its own loopback: {command}"


def test_prometheus_mounts_the_compose_config_and_rules(resolved):
    prometheus = resolved["services"]["prometheus"]
    mounts = {}
    for volume in prometheus["volumes"]:
        if isinstance(volume, dict):
            mounts[volume["target"]] = volume.get("source", "")
        else:
            source, target = volume.split(":")[:2]
            mounts[target] = source
    config_path = _flag(prometheus["command"], "--config.file")
    assert mounts[config_path].endswith("monitoring/prometheus/prometheus.compose.yml")
    config = yaml.safe_load((REPO_ROOT / "monitoring/prometheus/prometheus.compose.yml").read_text())
    config_dir = config_path.rsplit("/", 1)[0]
    for rule_file in config["rule_files"]:
        in_container = f"{config_dir}/{rule_file}"
        mount = next(t for t in mounts if in_container.startswith(t + "/"))
        on_host = mounts[mount] + in_container[len(mount):]
        assert os.path.isfile(on_host), f"{rule_file} -> {on_host} does not exist"


def test_mounted_files_exist(resolved):
    for name, service in resolved["services"].items():
        for volume in service.get("volumes", []):
            source = volume.get("source") if isinstance(volume, dict) else volume.split(":")[0]
            if source and source.startswith("/"):
                assert os.path.exists(source), f"{name} mounts {source}, which does not exist"


@cache
def _help(*command: str) -> str:
    result = subprocess.run(list(command), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{command} --help failed:\n{result.stderr[-2000:]}"
    return result.stdout


def _flags(command: list[str]) -> list[str]:
    return [arg.split("=", 1)[0] for arg in command if arg.startswith("--")]


def test_locust_list_rejects_unknown_flags():
    """The --list check below can fail."""
    result = subprocess.run([str(VENV_BIN / "locust"), "-f", "locust_tests/scenarios/login_test.py", "--no-such-flag",
                             "--list"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--no-such-flag" in result.stderr


def test_every_python_command_exists_with_its_flags(resolved):
    built = {name: s for name, s in resolved["services"].items() if "build" in s}
    assert set(built) == {"target", "sidecar", "locust-master", "locust-worker"}
    for name, service in built.items():
        command = service["command"]
        if command[:2] == ["python", "-m"]:
            module = command[2]
            assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
            help_text = _help(PYTHON, "-m", module, "--help")
        else:
            assert command[0] == "locust", name
            locustfile = _flag(command, "-f")
            assert (REPO_ROOT / locustfile).is_file(), f"{name}: {locustfile} does not exist"
            # Locust's --help leaves out plugin options; --list parses the whole command line
            # (plugins included), rejects unknown flags with exit 2, and exits before any test.
            result = subprocess.run([str(VENV_BIN / "locust"), *command[1:], "--list"], cwd=REPO_ROOT,
                                    capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, f"{name}: {command} rejected:\n{result.stderr[-2000:]}"
            continue
        for flag in _flags(command):
            assert re.search(rf"(^|[\s,]){re.escape(flag)}([\s=,]|$)", help_text, re.M), f"{name}: {flag} not in --help"


@pytest.mark.parametrize("service, binary", [("prometheus", "prometheus"), ("alertmanager", "prometheus-alertmanager")])
def test_image_commands_use_existing_flags(resolved, service, binary):
    path = require_binary(binary)
    help_text = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=30)
    text = help_text.stdout + help_text.stderr
    for flag in _flags(resolved["services"][service]["command"]):
        assert flag in text, f"{service}: {flag} unknown to {binary}"


def test_healthchecks_and_start_order(resolved):
    services = resolved["services"]
    for name in ("target", "sidecar", "locust-master", "prometheus", "alertmanager", "grafana"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert condition["condition"] in {"service_healthy", "service_started"}
            if condition["condition"] == "service_healthy":
                assert services[dependency].get("healthcheck"), f"{name} waits on {dependency}, which has no health check"
    assert services["locust-worker"]["depends_on"]["locust-master"]["condition"] == "service_healthy"


def test_workers_scale_and_the_sidecar_sees_other_containers(resolved):
    worker = resolved["services"]["locust-worker"]
    assert "ports" not in worker and "container_name" not in worker  # --scale locust-worker=4 works
    assert _flag(worker["command"], "--master-host") == "locust-master"
    assert resolved["services"]["sidecar"]["pid"] == "host"


def test_published_ports_bind_loopback_by_default(resolved):
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond this machine"


def test_dockerfile_installs_the_project_on_python_311_slim():
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert re.search(r"^RUN pip install .*'\.\[lab\]'$", dockerfile, re.M)  # the lab: target, Locust, sidecar
    for copied in re.findall(r"^COPY (\S+)", dockerfile, re.M):
        assert (REPO_ROOT / copied.rstrip("/")).exists(), copied
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_only_the_profiling_sidecar_gets_ptrace(resolved):
    """py-spy needs SYS_PTRACE; the sidecar (the service that serves /profile) has it, and no
    other service has any capability added or is privileged."""
    services = resolved["services"]
    sidecar = services["sidecar"]
    assert sidecar.get("cap_add") == ["SYS_PTRACE"]
    assert "--allow-profiling" in sidecar["command"]
    assert "ports" not in sidecar  # /profile is reachable inside the compose network only
    for name, service in services.items():
        assert not service.get("privileged"), f"{name} is privileged"
        if name != "sidecar":
            assert not service.get("cap_add"), f"{name} gets {service['cap_add']}"
