"""Several sidecars in one `sidecar` job, as `loadlab run --target-sidecar` configures Prometheus. Real
Prometheus, real sidecars, the committed rules and dashboards.

- The lab's own (Locust) and one beside a remote API whose group has another name: each sidecar is its
  own instance, host cores are counted per instance, the remote group reads as `target` for the rules,
  and the dashboards' host panels show both machines.
- An API on two machines (two loopback addresses, each with the real target and a sidecar of its own,
  both groups named `target`, both metrics ports in the `target` job): every panel that shows several
  machines names them, the per-instance panels have one line per machine, and the alerts table keeps
  two machines' alerts apart.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from monitoring.prometheus_config import default_rule_files, render
from tests.helpers import PYTHON, REPO_ROOT, ManagedProcess, free_port, require_binary, wait_for_http
from tests.monitoring.grafana_queries import panel_targets, rows, substitute
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
        return _series(base, expr)

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


def _series(base: str, expr: str, at: float | None = None) -> dict[tuple, float]:
    """Labels (without the name) -> value of each series `expr` returns."""
    result = _api(base, "/api/v1/query", query=expr, time=at or time.time())["result"]
    return {tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__")): float(s["value"][1])
            for s in result}


def _post_logins(url: str, count: int) -> None:
    """`count` logins without credentials: 400 at once, no password hash, but counted like any request."""
    for _ in range(count):
        request = urllib.request.Request(f"{url}/client_login", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except urllib.error.HTTPError:
            pass


# The per-instance panels of "Load vs Resources" and which job's instances they show.
SIDECAR_PANELS = {"Target memory", "Target processes and requests in flight", "Target open file descriptors",
                  "CPU per instance: cores used vs available", "CPU saturation per instance", "Host CPU by mode",
                  "Host memory", "Host network", "Host load average"}
TARGET_JOB_PANELS = {"API requests per instance", "API p95 latency per instance",
                     "Target processes and requests in flight"}


@pytest.mark.timeout(180)
def test_an_api_on_two_machines_stays_two_machines_on_the_dashboards_and_alerts(spawn, tmp_path):
    prometheus_bin = require_binary("prometheus")
    apis, sidecars = [], []
    for address in ("127.0.0.2", "127.0.0.3"):
        port, metrics_port, car_port = free_port(address), free_port(address), free_port(address)
        api = spawn([PYTHON, "-m", "target_app", "--host", address, "--port", str(port), "--metrics-port",
                     str(metrics_port), "--workers", "1", "--db", str(tmp_path / f"{address}.db")], name=f"api-{address}")
        car = spawn([PYTHON, "-m", "monitoring.sidecar", "--host", address, "--port", str(car_port), "--group-pid",
                     f"target={api.pid}"], name=f"sidecar-{address}")
        wait_for_http(f"http://{address}:{metrics_port}/metrics", timeout=30, proc=api)
        wait_for_http(f"http://{address}:{car_port}/metrics", timeout=30, proc=car)
        apis.append((f"http://{address}:{port}", f"{address}:{metrics_port}"))
        sidecars.append(f"{address}:{car_port}")
    # Two more machines of the API that are down: TargetDown for each, two rows in the alerts table.
    down = [f"{address}:{free_port(address)}" for address in ("127.0.0.4", "127.0.0.5")]
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(render({"sidecar": sidecars, "target": [m for _, m in apis] + down}, default_rule_files(), 2))
    prometheus = spawn([prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{prom_port}"], name="prometheus")
    base = f"http://127.0.0.1:{prom_port}"
    wait_for_http(f"{base}/-/ready", timeout=30, proc=prometheus)

    # A balancer that sends the second machine three times the first one's requests (bounded: at most
    # 90 s of 16 light requests/s).
    stop = threading.Event()

    def unbalanced() -> None:
        deadline = time.monotonic() + 90
        while not stop.is_set() and time.monotonic() < deadline:
            _post_logins(apis[0][0], 1)
            _post_logins(apis[1][0], 3)
            stop.wait(0.25)

    sender = threading.Thread(target=unbalanced, daemon=True)
    sender.start()
    try:
        _check_two_machines(base, prometheus, [m for _, m in apis], sidecars, down)
    finally:
        stop.set()
        sender.join(timeout=10)


def _check_two_machines(base: str, prometheus: ManagedProcess, api_instances: list[str], sidecars: list[str],
                        down: list[str]) -> None:
    board = json.loads((REPO_ROOT / "grafana/dashboards/load-vs-resources.json").read_text())

    def panel_query(expr: str) -> str:
        return substitute(expr, {}, interval_s=2, scrape_interval_s=2, range_s=60)

    requests = next(panel_query(t["expr"]) for p, t in panel_targets(board) if p["title"] == "API requests per instance")
    deadline = time.monotonic() + 90
    # Both machines scraped, the rules evaluated on both, two samples of each in every rate window.
    while not (len(_series(base, 'loadlab_instance:namegroup_cpu:saturation{groupname="target"}')) == 2
               and len(_series(base, 'ALERTS{alertname="TargetDown"}')) == 2
               and len(rates := _series(base, requests)) == 2 and all(v > 0 for v in rates.values())):
        assert time.monotonic() < deadline, prometheus.log()[-2000:]
        time.sleep(1)

    under = rows(board)
    seen: dict[str, set[str]] = {}
    at = time.time()
    for panel, target in panel_targets(board):
        expr = panel_query(target["expr"])
        result = _series(base, expr, at)
        instances = {dict(k).get("instance") for k in result}
        where = f"{panel['title']} ({target['refId']}): {expr} -> {sorted(map(str, instances))}"
        # Whatever draws several machines names them (a table shows every label anyway).
        if target.get("format") != "table" and len(instances - {None}) > 1:
            assert "{{instance}}" in target["legendFormat"], where
        if "{{instance}}" not in target["legendFormat"] or not result:
            continue
        if panel["title"] == "Alerts in the time range":
            continue
        expected = set(api_instances) if 'job="target"' in expr else set(sidecars)
        assert instances == expected, where
        seen.setdefault(panel["title"], set()).update(instances)
    assert SIDECAR_PANELS | TARGET_JOB_PANELS <= set(seen), sorted(SIDECAR_PANELS | TARGET_JOB_PANELS - set(seen))
    assert all(under[p["id"]].startswith("Per instance") for p, _ in panel_targets(board)
               if p["title"] in {"API requests per instance", "API p95 latency per instance"})

    # The imbalance shows: the second machine got about three times the first one's requests.
    rates = {dict(k)["instance"]: v for k, v in _series(base, requests, at).items()}
    assert rates[api_instances[1]] > 1.5 * rates[api_instances[0]], rates

    # "Now": the busiest machine beside all of them together.
    busiest = next(t for p, t in panel_targets(board)
                   if p["title"] == "Target CPU saturation" and p["type"] == "stat" and t["legendFormat"] == "busiest machine")
    per_machine = _series(base, 'loadlab_instance:namegroup_cpu:saturation{groupname="target"}', at)
    assert list(_series(base, busiest["expr"], at).values()) == [max(per_machine.values())]

    # The alerts table: one row per machine that is down, not one for both (and, before the first
    # scrape of the `target` job, one without an instance: `absent(up)` pending).
    (table,) = (t for p, t in panel_targets(board) if p["title"] == "Alerts in the time range")
    alert_rows = _series(base, panel_query(table["expr"]), at)
    down_rows = {dict(k).get("instance") for k in alert_rows if dict(k)["alertname"] == "TargetDown"}
    assert down_rows - {None} == set(down), alert_rows
    # The per-machine alerts stay silent: neither machine is busy, nor holds 1 GiB.
    assert not _series(base, 'ALERTS{alertname=~"TargetInstanceCPUSaturated|TargetMemoryHigh"}')
    memory = _series(base, 'loadlab_instance:namegroup_memory_resident:bytes{groupname="target"}')
    assert {dict(k)["instance"] for k in memory} == set(sidecars) and all(v > 0 for v in memory.values()), memory
