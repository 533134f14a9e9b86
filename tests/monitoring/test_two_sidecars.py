"""Two sidecars in one `sidecar` job, as `loadlab run --target-sidecar` configures Prometheus: the lab's
own (Locust) and one beside a remote API whose group has another name. Real Prometheus, real
sidecars, the committed rules: each sidecar is its own instance, host cores are counted per
instance, the remote group reads as `target` for the rules, and the dashboards' host panels show
both machines."""

from __future__ import annotations

import json
import time

import pytest

from monitoring.prometheus_config import default_rule_files, render
from tests.helpers import PYTHON, REPO_ROOT, free_port, require_binary, wait_for_http
from tests.monitoring.grafana_queries import panel_targets, substitute
from tests.monitoring.test_integration import _api

# A parent with two children: a gunicorn arbiter and its 2 workers, as the sidecar counts them.
FORKING = ("import os, time\n"
           "for _ in range(2):\n"
           "    if os.fork() == 0:\n"
           "        time.sleep(120); os._exit(0)\n"
           "time.sleep(120)\n")


@pytest.mark.timeout(120)
def test_rules_and_dashboards_keep_two_sidecars_apart(spawn, tmp_path):
    prometheus_bin = require_binary("prometheus")
    api = spawn([PYTHON, "-c", FORKING], name="api-stand-in")
    locust = spawn([PYTHON, "-c", "import time; time.sleep(120)"], name="locust-stand-in")
    lab_port, remote_port, prom_port = free_port(), free_port(), free_port()
    lab_sidecar = spawn([PYTHON, "-m", "monitoring.sidecar", "--port", str(lab_port), "--group-pid",
                         f"locust={locust.pid}"], name="lab-sidecar")
    remote_sidecar = spawn([PYTHON, "-m", "monitoring.sidecar", "--port", str(remote_port), "--group-pid",
                            f"api={api.pid}"], name="remote-sidecar")
    remote_url = f"http://127.0.0.1:{remote_port}/metrics"
    for port, proc in ((lab_port, lab_sidecar), (remote_port, remote_sidecar)):
        wait_for_http(f"http://127.0.0.1:{port}/metrics", timeout=30, proc=proc)
    config = tmp_path / "prometheus.yml"
    config.write_text(render({"sidecar": [f"127.0.0.1:{lab_port}", remote_url]}, default_rule_files(), 2,
                             group_aliases={remote_url: {"api": "target"}}))
    prometheus = spawn([prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{prom_port}"], name="prometheus")
    base = f"http://127.0.0.1:{prom_port}"
    wait_for_http(f"{base}/-/ready", timeout=30, proc=prometheus)

    def query(expr: str) -> dict[tuple, float]:
        result = _api(base, "/api/v1/query", query=expr, time=time.time())["result"]
        return {tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__")): float(s["value"][1])
                for s in result}

    lab, remote = f"127.0.0.1:{lab_port}", f"127.0.0.1:{remote_port}"
    deadline = time.monotonic() + 60
    # Both sidecars scraped and the rules evaluated on both (each is scraped on its own schedule).
    while not query('loadlab:namegroup_cpu:cores_available{groupname="target"}') or len(query("loadlab:host_cpu:cores")) < 2:
        assert time.monotonic() < deadline, prometheus.log()[-2000:]
        time.sleep(1)
    cores = query("loadlab:host_cpu:cores")
    assert set(cores) == {(("instance", lab),), (("instance", remote),)}, cores
    assert all(v >= 1 for v in cores.values())
    # The remote group "api" is "target" for the rules, and only on the remote instance.
    procs = query('namedprocess_namegroup_num_procs{groupname="target"}')
    assert [dict(k)["instance"] for k in procs] == [remote] and list(procs.values()) == [3.0]
    assert not query('namedprocess_namegroup_num_procs{groupname="api"}')
    host = cores[(("instance", remote),)]
    assert query('loadlab:namegroup_cpu:cores_available{groupname="target"}') == {(("groupname", "target"),): min(2.0, host)}
    assert list(query('loadlab:namegroup_cpu:cores_available{groupname="locust"}').values()) == [1.0]

    board = json.loads((REPO_ROOT / "grafana/dashboards/load-vs-resources.json").read_text())
    host_panels = {"Host CPU by mode", "Host memory", "Host load average"}
    time.sleep(8)  # rate() over $__rate_interval (8 s) needs two samples of each instance
    for panel, target in panel_targets(board):
        if panel.get("title") not in host_panels:
            continue
        expr = substitute(target["expr"], {}, interval_s=2, scrape_interval_s=2, range_s=60)
        instances = {dict(k).get("instance") for k in query(expr)}
        assert instances == {lab, remote}, f"{panel['title']}: {expr} -> {instances}"
    # The per-instance row: each machine's group on its own line (the lab's Locust, the remote API).
    per_instance = {"CPU per instance: cores used vs available", "CPU saturation per instance"}
    seen = set()
    for panel, target in panel_targets(board):
        if panel.get("title") not in per_instance:
            continue
        expr = substitute(target["expr"], {}, interval_s=2, scrape_interval_s=2, range_s=60)
        lines = {(dict(k).get("instance"), dict(k).get("groupname")) for k in query(expr)}
        assert lines == {(lab, "locust"), (remote, "target")}, f"{panel['title']}: {expr} -> {lines}"
        seen.add(panel["title"])
    assert seen == per_instance
    # With one machine per group the per-instance alerts have nothing to compare: silent.
    assert not query('ALERTS{alertname=~".*InstanceCPUSaturated|LoadGeneratorInstanceSaturated"}')
