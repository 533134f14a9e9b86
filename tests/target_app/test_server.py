"""The real thing: `python -m target_app` under gunicorn with 2 workers, over TCP."""

from __future__ import annotations

import collections
import http.client
import json
import os
import random
import signal
import socket
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadlab.multiproc import MULTIPROC_PREFIX
from tests.helpers import PYTHON, free_port, wait_for_http

pytestmark = pytest.mark.timeout(120)


def total_in(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` with these labels in a /metrics text."""
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


class Server:
    def __init__(self, proc, port: int, db: str) -> None:
        self.proc, self.port, self.db = proc, port, db

    def request(self, method: str, path: str, body: object | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, dict | str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = json.dumps(body) if body is not None else None
            all_headers = {"Content-Type": "application/json"} if body is not None else {}
            all_headers.update(headers or {})
            conn.request(method, path, body=data, headers=all_headers)
            response = conn.getresponse()
            text = response.read().decode()
            is_json = response.getheader("Content-Type", "").startswith("application/json")
            return response.status, json.loads(text) if is_json else text
        finally:
            conn.close()

    def total(self, name: str, **labels: str) -> float:
        status, text = self.request("GET", "/metrics")
        assert status == 200
        return total_in(text, name, **labels)


def start(spawn, tmp_path, *extra: str, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    db = str(tmp_path / "users.db")
    proc = spawn([PYTHON, "-m", "target_app", "--port", str(port), "--workers", "2", "--db", db,
                  "--hash-profile", "lab", *extra], name="target_app", env=env)
    wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=30, proc=proc)
    # One worker answering does not mean the second has been forked yet.
    deadline = time.monotonic() + 20
    while len(psutil.Process(proc.pid).children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return Server(proc, port, db)


@pytest.fixture
def server(spawn, tmp_path) -> Server:
    return start(spawn, tmp_path)


def test_request_count_summed_over_labels_equals_requests_sent(server):
    # A mix of endpoints and statuses, sent 8 at a time so both workers serve some.
    plan = ([("GET", "/healthz", None)] * 60
            + [("POST", "/client_registeration", {"username": f"user{i}", "email": f"user{i}@example.com",
                                                   "password": "correct horse"}) for i in range(30)]
            + [("POST", "/client_login", {"username": f"user{i}", "password": "wrong password"}) for i in range(20)]
            + [("POST", "/client_registeration", {"username": "x"})] * 20
            + [("GET", "/no/such/path", None)] * 20 + [("DELETE", "/client_login", None)] * 10)
    random.Random(1).shuffle(plan)
    before = server.total("http_requests_total")  # the readiness probe's /healthz
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda r: server.request(*r), plan))
    pids = {body["pid"] for status, body in results if isinstance(body, dict) and "pid" in body}
    assert len(pids) == 2, f"all /healthz answers came from one worker: {pids}"
    assert collections.Counter(status for status, _ in results) == {200: 60, 201: 30, 401: 20, 400: 20, 404: 20, 405: 10}
    # Scrapes themselves are not counted: scraping twice must give the same total.
    assert server.total("http_requests_total") == before + len(plan)
    assert server.total("http_requests_total") == before + len(plan)
    assert server.total("http_requests_total", endpoint="<unmatched>") == 30
    assert server.total("http_request_duration_seconds_count") == before + len(plan)
    assert server.total("app_registrations_total", outcome="created") == 30
    assert "http_requests_in_progress" not in server.request("GET", "/metrics")[1]  # no per-request gauge writes


def test_concurrent_duplicate_registrations_nothing_lost_nothing_doubled(server):
    users = [(f"conc_{i}", f"conc_{i}@example.com") for i in range(80)]
    # 20 more requests reuse 20 of the usernames (with their own emails): exactly one of each pair may win.
    attempts = users + [(name, f"dup_{i}@example.com") for i, (name, _) in enumerate(users[:20])]
    random.Random(2).shuffle(attempts)

    def register(attempt):
        name, email = attempt
        return server.request("POST", "/client_registeration",
                              {"username": name, "email": email, "password": f"pw-{name}-secret"})

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(register, attempts))
    assert collections.Counter(status for status, _ in results) == {201: 80, 409: 20}
    created = [body for status, body in results if status == 201]
    assert sorted(b["username"] for b in created) == sorted(name for name, _ in users)
    assert len({b["id"] for b in created}) == 80

    with ThreadPoolExecutor(50) as pool:
        logins = list(pool.map(lambda u: server.request("POST", "/client_login",
                                                        {"username": u[0], "password": f"pw-{u[0]}-secret"}), users))
    assert [status for status, _ in logins] == [200] * 80
    with sqlite3.connect(server.db) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (80,)
    assert server.total("app_registrations_total", outcome="created") == 80
    assert server.total("app_registrations_total", outcome="duplicate") == 20
    assert server.total("app_logins_total", outcome="success") == 80


def test_every_process_carries_target_app_and_sigterm_stops_all_cleanly(server):
    arbiter = psutil.Process(server.proc.pid)
    workers = arbiter.children()
    assert len(workers) == 2
    for process in [arbiter, *workers]:
        assert "target_app" in " ".join(process.cmdline())  # how the sidecar finds the target
    server.request("GET", "/healthz")
    # The worker keeps its metric files open; their directory is the multiprocess dir.
    metric_files = [f.path for w in workers for f in w.open_files() if MULTIPROC_PREFIX in f.path]
    assert metric_files, "no worker has Prometheus multiprocess files open"
    multiproc_dir = os.path.dirname(metric_files[0])

    os.kill(server.proc.pid, signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    assert not os.path.exists(multiproc_dir), "the Prometheus multiprocess directory was left behind"


def test_no_metrics_serves_the_api_without_metrics(spawn, tmp_path):
    server = start(spawn, tmp_path, "--no-metrics")
    assert server.request("GET", "/healthz")[0] == 200
    assert server.request("GET", "/metrics")[0] == 404


def test_admin_endpoint_needs_lab_admin_token(spawn, tmp_path):
    server = start(spawn, tmp_path, env={"LAB_ADMIN_TOKEN": "t0ken"})
    for i in range(3):
        server.request("POST", "/client_registeration",
                       {"username": f"lt_run_{i}", "email": f"lt{i}@example.com", "password": "correct horse"})
    assert server.request("DELETE", "/admin/users?prefix=lt_run_", headers={"X-Admin-Token": "nope"})[0] == 404
    assert server.request("DELETE", "/admin/users?prefix=lt_run_", headers={"X-Admin-Token": "t0ken"}) == (
        200, {"deleted": 3, "prefix": "lt_run_"})


def _startup_failure(spawn, tmp_path, args: list[str]) -> str:
    proc = spawn([PYTHON, "-m", "target_app", *args], name="failing")
    assert proc.wait(timeout=20) != 0
    lines = [line for line in proc.log().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_port_in_use_is_one_clear_line_and_nonzero_exit(spawn, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _startup_failure(spawn, tmp_path, ["--port", str(port), "--db", str(tmp_path / "u.db")])
    assert f"port {port}" in line and "already in use" in line and "--port" in line


def test_unwritable_db_path_is_one_clear_line_and_nonzero_exit(spawn, tmp_path):
    not_a_dir = tmp_path / "plain-file"
    not_a_dir.write_text("")
    db = not_a_dir / "users.db"  # unusable even for root
    line = _startup_failure(spawn, tmp_path, ["--port", str(free_port()), "--db", str(db)])
    assert str(db) in line and "--db" in line


def test_missing_db_directory_is_one_clear_line_and_nonzero_exit(spawn, tmp_path):
    db = tmp_path / "missing" / "users.db"
    line = _startup_failure(spawn, tmp_path, ["--port", str(free_port()), "--db", str(db)])
    assert "does not exist" in line and "--db" in line


# --- --metrics-port: the arbiter serves the merged metrics on a port of its own ---------------

def scrape(port: int, timeout: float) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def listening_ports(process: psutil.Process) -> set[int]:
    return {c.laddr.port for c in process.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}


def test_metrics_port_reports_the_totals_of_all_workers(spawn, tmp_path):
    metrics_port = free_port()
    server = start(spawn, tmp_path, "--metrics-port", str(metrics_port))
    plan = ([("GET", "/healthz", None)] * 40
            + [("POST", "/client_login", {"username": f"nobody{i}", "password": "wrong password"}) for i in range(20)]
            + [("GET", "/no/such/path", None)] * 10)
    before = total_in(scrape(metrics_port, 10)[1], "http_requests_total")
    # The totals must span both workers. A gevent worker can accept a whole burst by itself, so the
    # plan is sent again (at most 5 rounds) until both answered some of it.
    pids: set[int] = set()
    rounds = 0
    with ThreadPoolExecutor(8) as pool:
        while len(pids) < 2 and rounds < 5:
            results = list(pool.map(lambda r: server.request(*r), plan))
            pids |= {body["pid"] for _, body in results if isinstance(body, dict) and "pid" in body}
            rounds += 1
    assert len(pids) == 2, f"one worker answered all {rounds} rounds"
    status, text = scrape(metrics_port, 10)
    assert status == 200
    assert total_in(text, "http_requests_total") == before + rounds * len(plan)
    assert total_in(text, "http_requests_total", endpoint="/client_login", status="401") == rounds * 20
    assert total_in(text, "app_logins_total", outcome="failure") == rounds * 20
    # The API port's /metrics is unchanged and agrees with the arbiter's.
    assert server.total("http_requests_total") == before + rounds * len(plan)


def test_metrics_port_is_served_by_the_arbiter_while_every_worker_is_busy(spawn, tmp_path):
    metrics_port = free_port()
    server = start(spawn, tmp_path, "--metrics-port", str(metrics_port))
    arbiter = psutil.Process(server.proc.pid)
    workers = arbiter.children()
    assert metrics_port in listening_ports(arbiter)
    for worker in workers:  # the inherited listener is closed after the fork
        assert metrics_port not in listening_ports(worker), f"worker {worker.pid} holds the metrics port"

    # Make every worker unable to answer: SIGSTOP them (a slow client no longer blocks a worker,
    # see test_hardening), so the API port answers nothing while the arbiter runs on.
    for worker in workers:
        worker.suspend()
    try:
        with pytest.raises(TimeoutError):  # the precondition: /metrics on the API port is queued
            scrape(server.port, timeout=3)
        status, text = scrape(metrics_port, timeout=20)
        assert status == 200
        assert "http_requests_total" in text
    finally:
        for worker in workers:
            worker.resume()
    assert server.request("GET", "/healthz")[0] == 200  # the workers are free again


def test_metrics_port_in_use_is_one_clear_line_and_exit_2(spawn, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = spawn([PYTHON, "-m", "target_app", "--port", str(free_port()), "--metrics-port", str(port),
                      "--db", str(tmp_path / "u.db")], name="failing")
        assert proc.wait(timeout=20) == 2
    lines = [line for line in proc.log().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"port {port}" in lines[0] and "already in use" in lines[0] and "--metrics-port" in lines[0]


@pytest.mark.parametrize("args, expected", [
    (["--no-metrics"], "--no-metrics"),
    (["--port", "{metrics_port}"], "both"),
])
def test_metrics_port_conflicting_flags_are_one_clear_line(spawn, tmp_path, args, expected):
    metrics_port = free_port()
    args = [a.format(metrics_port=metrics_port) for a in args]
    if "--port" not in args:
        args += ["--port", str(free_port())]
    line = _startup_failure(spawn, tmp_path, ["--metrics-port", str(metrics_port), "--db", str(tmp_path / "u.db"),
                                              *args])
    assert expected in line and "--metrics-port" in line


def test_dev_server_serves_the_metrics_port_too(spawn, tmp_path):
    port, metrics_port = free_port(), free_port()
    proc = spawn([PYTHON, "-m", "target_app", "--dev", "--port", str(port), "--metrics-port", str(metrics_port),
                  "--db", str(tmp_path / "u.db"), "--hash-profile", "lab"], name="dev")
    wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=30, proc=proc)
    server = Server(proc, port, str(tmp_path / "u.db"))
    before = total_in(scrape(metrics_port, 10)[1], "http_requests_total", endpoint="/healthz")
    for _ in range(5):
        server.request("GET", "/healthz")
    assert total_in(scrape(metrics_port, 10)[1], "http_requests_total", endpoint="/healthz") == before + 5
