"""The lab on an API that is not the bundled one, the way a user runs it (issue 11, the proof).

`other_api.py` has other paths and body fields, answers registration with 200 {"user": {"id"}},
login with {"access_token"}, hashes with werkzeug's default (scrypt). It runs under plain
`gunicorn -c python:loadlab.gunicorn_conf -w 2 tests.loadlab.other_api:app` (instrumented with
`loadlab.instrument`, as a user would), and a sidecar watches it by a command-line regex, as
one would on a test server: the lab never gets its PID and reads that sidecar through
`--target-sidecar` as if it ran on another machine. Then:

- /metrics totals are exact across the two workers, from either worker and from the arbiter's port;

- the bundled login step hunt, told the API's contract only through the suite's settings, runs
  without one failed request, and its verdict names target_cpu (from that sidecar) with a capacity
  within 15 % of what the workers and their measured CPU per login allow (W/D with whole cores, the
  utilization law X = U/D when they do not get them on a shared machine; D and U measured by this
  test with psutil, never taken from the verdict);
- the API's own locustfile, which imports nothing of this project, gives a verdict through
  `--locustfile`, and the run is named after it; `up --locustfile` serves it in Locust's UI;
- a locustfile with its own LoadTestShape keeps it, and the lab says there is no step hunt.
"""

from __future__ import annotations

import ast
import collections
import glob
import json
import os
import random
import re
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy
import psutil
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.security import check_password_hash, generate_password_hash

from loadlab.multiproc import MULTIPROC_PREFIX, memory_tmp_dir
from tests.helpers import PYTHON, REPO_ROOT, VENV_BIN, ManagedProcess, free_port, wait_for_http
from tests.loadlab.conftest import LOADLAB, assert_all_gone, run_loadlab, step_table

HERE = Path(__file__).resolve().parent
OWN_LOCUSTFILE = HERE / "other_api_locustfile.py"
WORKERS = 2
# The API's contract, as settings only (locust_tests/config/test_config.py).
CONTRACT = {
    "REGISTRATION_ENDPOINT": "/api/v2/accounts",
    "REGISTRATION_BODY": '{"account": {"login": "{username}", "mail": "{email}", "secret": "{password}", '
                         '"display_name": "{name}"}}',
    "REGISTRATION_OK_STATUS": "200",
    "LOGIN_ENDPOINT": "/api/v2/auth/token",
    "LOGIN_BODY": '{"login": "{username}", "secret": "{password}"}',
    "LOGIN_OK_STATUS": "200",
    "LOGIN_TOKEN_FIELD": "access_token",
}
# Think time 0.4-0.6 s; 20 seeded accounts (each costs a hash to create).
LOAD = {"MIN_WAIT_TIME": "400", "MAX_WAIT_TIME": "600", "LOGIN_USERS": "20"}


@dataclass
class OtherApi:
    url: str
    sidecar_url: str
    metrics_url: str  # the arbiter's merged metrics (LOADLAB_METRICS_PORT)
    gunicorn: ManagedProcess


@pytest.fixture(scope="module")
def other_api(tmp_path_factory):
    """gunicorn -w 2 with the other API, and a sidecar that finds it by its command line. Both are
    stopped by PID group when the module's tests end, pass or fail."""
    tmp = tmp_path_factory.mktemp("other-api")
    started: list[ManagedProcess] = []
    try:
        port, sidecar_port, metrics_port = free_port(), free_port(), free_port()
        bind = f"127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        gunicorn = ManagedProcess([str(VENV_BIN / "gunicorn"), "-c", "python:loadlab.gunicorn_conf", "-w", str(WORKERS),
                                   "-b", bind, "tests.loadlab.other_api:app"], tmp / "gunicorn.log",
                                  env={**env, "OTHER_API_DB": str(tmp / "other.db"), "LOADLAB_METRICS_PORT": str(metrics_port)})
        started.append(gunicorn)
        url = f"http://{bind}"
        wait_for_http(f"{url}/api/v2/status", timeout=30, proc=gunicorn)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_for_http(metrics_url, timeout=30, proc=gunicorn)
        # As on a server: the regex of the command line (this test's port keeps other runs out).
        regex = rf"gunicorn .*-b {re.escape(bind)} tests\.loadlab\.other_api:app"
        sidecar = ManagedProcess([PYTHON, "-m", "monitoring.sidecar", "--port", str(sidecar_port),
                                  "--group", f"target={regex}"], tmp / "sidecar.log")
        started.append(sidecar)
        sidecar_url = f"http://127.0.0.1:{sidecar_port}/metrics"
        wait_for_http(sidecar_url, timeout=30, proc=sidecar)
        yield OtherApi(url, sidecar_url, metrics_url, gunicorn)
    finally:
        for proc in reversed(started):
            proc.stop()


def hash_cost_s() -> float:
    """CPU seconds of one werkzeug default password check (what a login costs the API), the median of 5."""
    hashed = generate_password_hash("a test password!")
    costs = []
    for _ in range(5):
        start = time.thread_time()
        check_password_hash(hashed, "a test password!")
        costs.append(time.thread_time() - start)
    return statistics.median(costs)


def worker_cpu_seconds(arbiter_pid: int) -> float:
    """User + system CPU seconds the gunicorn workers (the arbiter's children) have used so far."""
    total = 0.0
    for child in psutil.Process(arbiter_pid).children():
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def login_cpu_cost(api: OtherApi, logins: int = 24) -> float:
    """CPU seconds the API's workers spend per login (D), measured with psutil over `logins` logins
    sent two at a time (one per worker) to one account this creates."""
    username = f"cost_{random.randrange(10**9)}"
    account = json.dumps({"account": {"login": username, "mail": f"{username}@example.com",
                                      "secret": "a test password!", "display_name": "Cost Probe"}}).encode()
    login = json.dumps({"login": username, "secret": "a test password!"}).encode()

    def post(path: str, body: bytes) -> int:
        req = urllib.request.Request(api.url + path, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status

    assert post(CONTRACT["REGISTRATION_ENDPOINT"], account) == 200
    post(CONTRACT["LOGIN_ENDPOINT"], login)  # warm
    before = worker_cpu_seconds(api.gunicorn.pid)
    with ThreadPoolExecutor(WORKERS) as pool:
        statuses = list(pool.map(lambda _: post(CONTRACT["LOGIN_ENDPOINT"], login), range(logins)))
    assert statuses == [200] * logins
    return (worker_cpu_seconds(api.gunicorn.pid) - before) / logins


class WorkerCpu:
    """The workers' CPU seconds sampled every 0.25 s while the block runs; `cores(t0, t1)`: the
    cores they used between two wall-clock times (interpolated between samples)."""

    def __init__(self, arbiter_pid: int) -> None:
        self.arbiter_pid = arbiter_pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.samples.append((time.time(), worker_cpu_seconds(self.arbiter_pid)))
            if self._stop.wait(0.25):
                return

    def __enter__(self) -> WorkerCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def cores(self, start: float, end: float) -> float:
        times, cpu = zip(*self.samples)
        return (float(numpy.interp(end, times, cpu)) - float(numpy.interp(start, times, cpu))) / (end - start)


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names} | {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def failures(run_dir: Path) -> int:
    with open(run_dir / "locust_stats.csv") as fh:
        header, *rows = [line.rstrip("\n").split(",") for line in fh]
    aggregated = next(row for row in rows if row[header.index("Name")] == "Aggregated")
    return int(aggregated[header.index("Failure Count")])


def metrics_total(url: str, name: str, **labels: str) -> float:
    """Sum of the samples `name` with these labels in one scrape of `url`."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def requests_counted_per_process(arbiter_pid: int) -> dict[int, float]:
    """http_requests_total in each process's own multiprocess file (what one worker alone would report)."""
    parent = memory_tmp_dir() or tempfile.gettempdir()
    [directory] = glob.glob(os.path.join(parent, f"{MULTIPROC_PREFIX}{arbiter_pid}-*"))
    counts: dict[int, float] = {}
    for path in glob.glob(os.path.join(directory, "counter_*.db")):
        pid = int(Path(path).stem.split("_")[1])
        counts[pid] = sum(value for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(path)
                          if json.loads(key)[1] == "http_requests_total")
    return counts


@pytest.mark.timeout(60)
def test_metrics_totals_are_exact_across_two_workers(other_api):
    # Plain gunicorn with `-c python:loadlab.gunicorn_conf`: any worker's /metrics, and the arbiter's
    # port, must count every request of both workers. Without the config module each worker reports
    # only its own (the 195, then 187, for 382).
    worker_pids = {p.pid for p in psutil.Process(other_api.gunicorn.pid).children()}
    assert len(worker_pids) == WORKERS
    plan = ([("GET", "/api/v2/status", None)] * 300 + [("GET", "/no/such/path", None)] * 40
            + [("POST", "/api/v2/accounts", b'{"account": {}}')] * 22)
    random.Random(11).shuffle(plan)
    api_metrics = other_api.url + "/metrics"
    before = metrics_total(other_api.metrics_url, "http_requests_total")

    def send(request: tuple[str, str, bytes | None]) -> int:
        method, path, body = request
        req = urllib.request.Request(other_api.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    with ThreadPoolExecutor(8) as pool:
        statuses = collections.Counter(pool.map(send, plan))
    assert statuses == {200: 300, 404: 40, 422: 22}
    per_process = requests_counted_per_process(other_api.gunicorn.pid)
    served = {pid: n for pid, n in per_process.items() if pid in worker_pids}
    assert len(served) == WORKERS and all(n > 0 for n in served.values()), per_process  # both workers served
    for _ in range(3):  # scrapes land on either worker; the scrapes themselves are not counted
        assert metrics_total(api_metrics, "http_requests_total") == before + len(plan)
    assert metrics_total(other_api.metrics_url, "http_requests_total") == before + len(plan)
    assert metrics_total(other_api.metrics_url, "http_requests_total", endpoint="/api/v2/status", status="200") >= 300
    assert metrics_total(other_api.metrics_url, "http_requests_total", endpoint="<unmatched>", status="404") == 40
    assert metrics_total(other_api.metrics_url, "http_request_duration_seconds_count",
                         endpoint="/api/v2/accounts") == 22


@pytest.mark.serial  # capacity from measured CPU per login: run alone
@pytest.mark.timeout(300)
def test_the_bundled_login_hunt_on_another_api_names_its_cpu_with_the_right_capacity(other_api, tmp_path):
    # SLO_P95_MS is one of the suite's settings too: a 500 ms SLO breaks at the knee of a server whose
    # login costs ~170 ms of CPU, and the knee's plateau is what the capacity is read from.
    env = {**CONTRACT, **LOAD, "SLO_P95_MS": "5000"}
    cost_before = hash_cost_s()
    cost_before_run = login_cpu_cost(other_api)
    with WorkerCpu(other_api.gunicorn.pid) as worker_cpu:
        run = run_loadlab(["run", "login-step", "--host", other_api.url, "--target-sidecar", other_api.sidecar_url,
                           "--target-metrics", other_api.metrics_url,  # the arbiter's port: no queue behind the load
                           "--target-workers", str(WORKERS), "--prometheus", "off", "--",
                           "--step-users", "2", "--step-time", "10s", "--max-users", "16", "--no-stop-on-break"],
                          tmp_path / "reports", env=env, timeout=280)
    assert run.returncode == 0, run.output
    assert_all_gone(run.started_pids())
    verdict, meta = run.verdict(), run.meta()
    detail = step_table(verdict)
    assert failures(run.run_dir) == 0, detail  # not one request failed: the contract is right
    assert verdict["functional_failure"] is None, detail
    # The API's CPU came from the sidecar beside it (never from a PID), Locust's from the lab's own.
    assert meta["target_sidecar"] == other_api.sidecar_url and meta["target_workers"] == WORKERS
    assert all(c["name"] != "target" for c in meta["components"])
    sources = {json.loads(line)["source"] for line in (run.run_dir / "samples.jsonl").read_text().splitlines()}
    assert {"target_sidecar", "sidecar", "locust"} <= sources
    assert all(s["target_cpu_cores"] is not None and s["generator_cpu_cores"] is not None for s in verdict["steps"])
    # The API's own latency (loadlab.instrument, merged by loadlab.gunicorn_conf) beside Locust's, every step.
    assert all(s["server_p95_ms"] is not None for s in verdict["steps"]), detail
    assert "stopped answering" not in run.output, run.output
    assert "target sidecar " + other_api.sidecar_url in run.output
    # No admin endpoint there: a note that the test accounts stay, with their prefix, and no failure.
    assert f"locust: cleanup: note: the test accounts stay on {other_api.url}" in run.output
    assert "their usernames start with lt_data_" in run.output
    assert verdict["limiting_resource"] == "target_cpu", detail

    # Ground truth, measured by this test and not by the lab: W workers each spend D of CPU per login
    # (psutil on the workers over logins sent two at a time, as the plateau keeps both workers
    # hashing: concurrent scrypt checks contend for memory and cost more CPU than one alone). With
    # whole cores X = W/D; on a shared machine the workers get U cores (psutil on the workers over the
    # holds of the steps from the knee to the break) and X = U/D, the utilization law.
    hash_cost = (cost_before + hash_cost_s()) / 2
    cost = (cost_before_run + login_cpu_cost(other_api)) / 2
    steps = verdict["steps"]
    knee = next(i for i, s in enumerate(steps) if s["start"] == verdict["knee"]["time"])
    end = next((i for i, s in enumerate(steps) if verdict["break"] and s["start"] == verdict["break"]["time"]), len(steps))
    cores_got = statistics.median(worker_cpu.cores(s["hold_start"], s["end"]) for s in steps[knee:max(end, knee + 1)])
    usable = WORKERS if cores_got >= 0.9 * WORKERS else cores_got
    expected = usable / cost
    print(f"\nhash {hash_cost * 1000:.0f} ms CPU, {cost * 1000:.0f} ms a login (measured before and after the run); "
          f"the workers got {cores_got:.2f} cores at the plateau -> expected {expected:.2f} req/s; "
          f"capacity {verdict['capacity_rps']} req/s\n{detail}")
    assert verdict["capacity_rps"] == pytest.approx(expected, rel=0.15), detail


@pytest.mark.timeout(240)
def test_your_own_locustfile_gets_a_verdict_named_after_it(other_api, tmp_path):
    assert imports(OWN_LOCUSTFILE) == {"secrets", "locust"}  # nothing of this project
    run = run_loadlab(["run", "--locustfile", str(OWN_LOCUSTFILE), "--host", other_api.url, "--target-sidecar",
                       other_api.sidecar_url, "--prometheus", "off", "--",
                       "--step-users", "2", "--step-time", "6s", "--max-users", "6", "--no-stop-on-break"],
                      tmp_path / "reports", timeout=200)
    assert run.returncode == 0, run.output
    assert_all_gone(run.started_pids())
    assert run.run_dir.name.endswith("-other_api_locustfile")
    assert "locust     other_api_locustfile.py --scenario step" in run.output
    verdict = run.verdict()
    assert [s["users"] for s in verdict["steps"]] == [2, 4, 6], step_table(verdict)  # the step hunt ran it
    assert verdict["source"]["scenario"] == "other_api_locustfile.py"
    assert verdict["functional_failure"] is None and failures(run.run_dir) == 0
    assert all(s["target_cpu_cores"] is not None for s in verdict["steps"])
    assert verdict["summary"] and "verdict:" in run.output
    report = (run.run_dir / "report.html").read_text()
    assert "<title>loadlab run: other_api_locustfile.py</title>" in report
    # Its requests, under the names it gave them, and the lab's exporter beside them.
    names = {line.split(",")[1] for line in (run.run_dir / "locust_stats.csv").read_text().splitlines()[1:]}
    assert {"create account", "sign in"} <= names


OWN_SHAPE = '''
from locust import FastHttpUser, LoadTestShape, constant, task


class Visitor(FastHttpUser):
    wait_time = constant(0.5)

    @task
    def status(self):
        self.client.get("/api/v2/status")


class TwoLevels(LoadTestShape):
    def tick(self):
        t = self.get_run_time()
        return (2, 10) if t < 4 else (4, 10) if t < 8 else None
'''


@pytest.mark.timeout(180)
def test_a_locustfile_with_its_own_shape_keeps_it_and_the_lab_says_no_step_hunt(other_api, tmp_path):
    mine = tmp_path / "shaped.py"
    mine.write_text(OWN_SHAPE)
    run = run_loadlab(["run", "--locustfile", str(mine), "--host", other_api.url, "--prometheus", "off"],
                      tmp_path / "reports", timeout=150)
    assert run.returncode == 0, run.output
    assert "locust     shaped.py: the locustfile defines its own LoadTestShape TwoLevels: it runs as written, " \
           "and --scenario step is not applied (no step hunt)" in run.output
    assert run.meta()["step_hunt"] is False
    assert "shaped.py --scenario step" not in run.output  # the console names no hunt that did not run
    verdict = run.verdict()
    assert any("own LoadTestShape drove the load, not the lab's step hunt" in line for line in verdict["summary"])
    assert [s["users"] for s in verdict["steps"]] == [2, 4], step_table(verdict)  # its levels, not the hunt's 10s
    assert_all_gone(run.started_pids())


def test_a_run_of_its_own_shape_says_so_in_the_verdict_and_a_step_hunt_does_not(tmp_path):
    from loadlab import rundir
    from tests.loadlab.synthetic import write_history

    write_history(tmp_path / f"{rundir.LOCUST_PREFIX}{rundir.HISTORY_SUFFIX}",
                  [(2, 4.0, 0.0, 50.0)] * 10 + [(4, 8.0, 0.0, 50.0)] * 10)
    note = "note: the locustfile's own LoadTestShape drove the load, not the lab's step hunt"
    for step_hunt, said in ((False, True), (None, False)):
        (tmp_path / rundir.RUN_META).write_text(json.dumps({"scenario": "shaped.py", "step_hunt": step_hunt}))
        verdict, _ = rundir.analyze(tmp_path, write=False)
        assert any(line.startswith(note) for line in verdict.summary()) is said, verdict.summary()


@pytest.mark.timeout(180)
def test_up_serves_your_locustfile_in_the_web_ui(other_api, tmp_path):
    out = tmp_path / "reports"
    log_path = tmp_path / "up.out"
    args = [*LOADLAB, "up", "--locustfile", str(OWN_LOCUSTFILE), "--host", other_api.url, "--free-ports",
            "--prometheus", "off", "--out", str(out)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 90
        while not re.search(r"locust UI\s+(http://127\.0\.0\.1:\d+)", log_path.read_text()):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "no web UI URL printed in 90 s:\n" + log_path.read_text()
            time.sleep(0.3)
        ui_url = re.search(r"locust UI\s+(http://127\.0\.0\.1:\d+)", log_path.read_text()).group(1)
        wait_for_http(ui_url, timeout=30)
        with urllib.request.urlopen(ui_url, timeout=10) as response:
            page = response.read().decode()
        assert "other_api_locustfile.py" in page and "Customer" in page  # its file and its User class
        run_dir = next(out.iterdir())
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
    assert code == 130, log_path.read_text()
    assert run_dir.name.endswith("-other_api_locustfile")
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["scenario"] == "other_api_locustfile.py"
    assert_all_gone([c["pid"] for c in meta["components"]] + meta["pids"])
