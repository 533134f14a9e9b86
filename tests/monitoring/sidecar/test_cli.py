"""The command line: serving, promtool-clean output, and clear errors for bad input."""

from __future__ import annotations

import socket
import subprocess
import uuid

from tests.helpers import free_port, require_binary

from .conftest import KNOWN_PROMTOOL_LINTS, group_cpu, parse, run_sidecar_cli, scrape_text, value, wait_until


def test_group_matching_nothing_reports_zero_procs_and_scrape_is_200(sidecar):
    car = sidecar("--group", "nothing=^no-such-program-anywhere$")
    samples = car.scrape()  # asserts HTTP 200
    assert value(samples, "namedprocess_namegroup_num_procs", groupname="nothing") == 0
    assert group_cpu(samples, "nothing") == 0
    assert value(samples, "namedprocess_namegroup_memory_bytes", groupname="nothing", memtype="resident") == 0


def test_the_sidecar_never_counts_itself(sidecar):
    # Its own command line contains the regex text, so the regex matches the sidecar itself
    # (and, thanks to the random tag, nothing else on this shared machine).
    car = sidecar("--group", f"me=self-{uuid.uuid4().hex}")
    assert car.procs("me") == 0


def test_scrape_passes_promtool_check_metrics(sidecar, workload):
    promtool = require_binary("promtool")
    member = workload("tree", "--children", "2")
    car = sidecar("--group-pid", f"tree={member.pid}", "--group", "none=^no-such-program$")
    wait_until(lambda: car.procs("tree") == 3, 15, "the tree's three processes")
    text = scrape_text(car.url)
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                            timeout=30)
    complaints = {line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()}
    assert complaints <= KNOWN_PROMTOOL_LINTS, f"promtool complained: {complaints - KNOWN_PROMTOOL_LINTS}"
    for family in ("namedprocess_namegroup_cpu_seconds_total", "namedprocess_namegroup_memory_bytes",
                   "namedprocess_namegroup_num_procs", "namedprocess_namegroup_num_threads",
                   "namedprocess_namegroup_open_filedesc", "node_cpu_seconds_total", "node_memory_MemTotal_bytes",
                   "node_memory_MemAvailable_bytes", "node_network_receive_bytes_total",
                   "node_network_transmit_bytes_total", "node_load1", "process_resident_memory_bytes"):
        assert f"\n# TYPE {family} " in text


def test_once_prints_one_scrape_without_host_metrics_when_asked():
    result = run_sidecar_cli("--once", "--no-host-metrics", "--group", "none=^nothing$")
    assert result.returncode == 0, result.stderr
    samples = parse(result.stdout)
    assert value(samples, "namedprocess_namegroup_num_procs", groupname="none") == 0
    assert not any(name.startswith("node_") for name, _ in samples)


def test_port_in_use_is_one_clear_line_and_a_nonzero_exit():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_sidecar_cli("--port", str(port))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in lines[0] and "--port" in lines[0]


def test_bad_regex_names_the_flag_and_the_regex():
    result = run_sidecar_cli("--port", str(free_port()), "--group", "target=gunicorn(")
    assert result.returncode == 2
    assert "--group 'target=gunicorn('" in result.stderr and "is invalid" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_file_names_the_file(tmp_path):
    path = tmp_path / "groups.yaml"
    path.write_text("groups:\n  target:\n    cmdline: 'ok'\n    pidz: [1]\n")
    result = run_sidecar_cli("--port", str(free_port()), "--config", str(path))
    assert result.returncode == 2
    assert str(path) in result.stderr and "pidz" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_and_bad_port_are_clear_errors(tmp_path):
    result = run_sidecar_cli("--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2 and "missing.toml" in result.stderr and "cannot be read" in result.stderr
    result = run_sidecar_cli("--port", "70000")
    assert result.returncode == 2 and "--port" in result.stderr


def test_config_file_groups_are_served(sidecar, workload, tmp_path):
    member = workload("tree", "--children", "1")
    path = tmp_path / "groups.toml"
    path.write_text(f"[groups.fromfile]\npids = [{member.pid}]\n")
    car = sidecar("--config", str(path))
    wait_until(lambda: car.procs("fromfile") == 2, 15, "the process from the config file and its child")
