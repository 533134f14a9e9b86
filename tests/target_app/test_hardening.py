"""The bundled target against careless or hostile clients: slow clients, malformed chunked bodies,
compressed bodies, probing for the admin route, timing logins across a hash-profile change, and
what a killed server leaves behind. Over real TCP against `python -m target_app` (gunicorn, 2
workers) where the server is the point; through the test client where only the app is."""

from __future__ import annotations

import glob
import gzip
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from target_app.server import MULTIPROC_PREFIX, make_multiproc_dir, memory_tmp_dir
from target_app.worker import HEADER_TIMEOUT
from tests.helpers import PYTHON, ManagedProcess, free_port, wait_for_http

from .conftest import ADMIN_TOKEN, ERROR_KEYS, make_app
from .test_server import start

pytestmark = pytest.mark.timeout(120)


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def exchange(port: int, data: bytes, timeout: float = 10.0) -> Reply:
    """Send raw bytes, read the answer until the server closes the connection (it closes after
    every response), and split it into status, headers and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in header_lines)]
    return Reply(int(status_line.split()[1]), headers, body)


def assert_json_error(reply: Reply, status: int, error: str) -> dict:
    assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.header("Content-Type") == "application/json", reply.headers
    body = reply.json()
    assert set(body) == ERROR_KEYS and body["error"] == error and body["field"] is None, body
    assert isinstance(body["message"], str) and body["message"]
    return body


@dataclass
class Target:
    proc: ManagedProcess
    port: int


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Target:
    """One real server for the raw-socket tests of this module (admin token set), stopped by PID."""
    tmp = tmp_path_factory.mktemp("hardening")
    port = free_port()
    proc = ManagedProcess([PYTHON, "-m", "target_app", "--port", str(port), "--workers", "2",
                           "--db", str(tmp / "users.db"), "--hash-profile", "lab"], tmp / "target.log",
                          env={**os.environ, "LAB_ADMIN_TOKEN": ADMIN_TOKEN})
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=30, proc=proc)
        yield Target(proc, port)
    finally:
        proc.stop()


# --- slow clients -----------------------------------------------------------------------------

def test_ten_clients_sending_headers_one_byte_per_second_do_not_stop_the_api(spawn, tmp_path):
    server = start(spawn, tmp_path)
    request = (b"POST /client_login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: 2\r\nX-Slow: " + b"s" * 60 + b"\r\n\r\n{}")  # ~130 s at 1 byte/s
    stop = threading.Event()
    cut_off_at: dict[int, float] = {}

    def dribble(index: int, sock: socket.socket) -> None:
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # the server closed the connection
                cut_off_at[index] = time.monotonic()
                return
            if stop.wait(1.0):
                return

    started = time.monotonic()
    slow = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(10)]
    threads = [threading.Thread(target=dribble, args=(i, s), daemon=True) for i, s in enumerate(slow)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.5)  # every slow client has sent a byte or two and a worker has taken it
        for _ in range(3):
            began = time.monotonic()
            status, body = server.request("GET", "/healthz", timeout=2)  # TimeoutError if blocked
            assert status == 200 and body["status"] == "ok"
            assert time.monotonic() - began < 2
            time.sleep(1)
        # The server does not wait for ever either: each connection is cut at the header timeout.
        for thread in threads:
            thread.join(timeout=HEADER_TIMEOUT + 10 - (time.monotonic() - started))
        assert len(cut_off_at) == 10, f"only {len(cut_off_at)} of 10 slow connections were closed"
        assert max(cut_off_at.values()) - started < HEADER_TIMEOUT + 5
    finally:
        stop.set()
        for sock in slow:
            sock.close()
    log = server.proc.log()
    assert log.count("request headers incomplete after") == 10, log[-2000:]
    assert "WORKER TIMEOUT" not in log and "Perhaps out of memory" not in log


# --- malformed and compressed bodies ----------------------------------------------------------

GOOD = b'{"username": "nobody_here", "password": "correct horse"}'


def chunked_login(body: bytes) -> bytes:
    return (b"POST /client_login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + body)


def test_a_well_formed_chunked_body_is_read(target):
    reply = exchange(target.port, chunked_login(b"%x\r\n%s\r\n0\r\n\r\n" % (len(GOOD), GOOD)))
    assert_json_error(reply, 401, "invalid_credentials")  # parsed and checked like any login


@pytest.mark.parametrize("body", [
    b"zz\r\n" + GOOD + b"\r\n0\r\n\r\n",
    b"-2\r\n" + GOOD + b"\r\n0\r\n\r\n",
    b"0x2\r\n" + GOOD + b"\r\n0\r\n\r\n",
    b"%x\r\n%sXX0\r\n\r\n" % (len(GOOD), GOOD),  # no CRLF after the chunk data
    b"%x\r\n%s\r\n0\r\nnot a header line\r\n\r\n" % (len(GOOD), GOOD),  # bad trailer
], ids=["size-zz", "size-negative", "size-0x", "missing-crlf", "bad-trailer"])
def test_malformed_chunked_body_is_400_with_the_json_error_body(target, body):
    log_before = len(target.proc.log())
    body_json = assert_json_error(exchange(target.port, chunked_login(body)), 400, "malformed_body")
    assert "chunked" in body_json["message"]
    assert "Traceback" not in target.proc.log()[log_before:]


@pytest.mark.parametrize("coding", ["gzip", "deflate", "identity, gzip"])
def test_compressed_body_is_415_naming_the_encoding(target, coding):
    payload = gzip.compress(GOOD)
    request = (b"POST /client_login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s" % (coding.encode(), len(payload), payload))
    body = assert_json_error(exchange(target.port, request), 415, "unsupported_content_encoding")
    assert coding.split(", ")[-1] in body["message"] and "UTF-8" not in body["message"]


def test_identity_content_encoding_is_plain_json(target):
    request = (b"POST /client_login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Encoding: identity\r\nContent-Length: %d\r\n\r\n%s" % (len(GOOD), GOOD))
    assert_json_error(exchange(target.port, request), 401, "invalid_credentials")


# --- the admin route --------------------------------------------------------------------------

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"]


def _without_date(reply: Reply) -> tuple:
    return reply.status, [(k, v) for k, v in reply.headers if k.lower() != "date"], reply.body


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_admin_path_without_the_right_token_answers_exactly_like_an_unknown_path(target, token):
    extra = f"X-Admin-Token: {token}\r\n" if token else ""
    for method in METHODS:
        def ask(path: str) -> Reply:
            return exchange(target.port, f"{method} {path}?prefix=lt_ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                         f"{extra}Content-Length: 0\r\n\r\n".encode())
        admin, unknown = ask("/admin/users"), ask("/admin/userz")
        assert admin.status == 404, (method, admin.status, admin.headers)
        assert admin.header("Allow") is None, (method, admin.headers)
        assert _without_date(admin) == _without_date(unknown), method
    # Nor do the metrics name the route: the probes count as unmatched paths.
    metrics = exchange(target.port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").body.decode()
    assert 'endpoint="/admin/users"' not in metrics


def test_admin_path_with_the_token_may_say_which_method_it_takes(admin_app):
    response = admin_app.test_client().get("/admin/users", headers={"X-Admin-Token": ADMIN_TOKEN})
    assert response.status_code == 405 and "DELETE" in response.headers["Allow"]


# --- login timing after a hash-profile change -------------------------------------------------

def _time_login(client, username: str, samples: list[float]) -> None:
    began = time.perf_counter()
    response = client.post("/client_login", json={"username": username, "password": "wrong password"})
    samples.append((time.perf_counter() - began) * 1000)
    assert response.status_code == 401


@pytest.mark.parametrize("made_with, served_with", [("lab", "default"), ("default", "lab")])
def test_unknown_user_takes_as_long_as_a_known_one_after_a_hash_profile_change(tmp_path, made_with, served_with):
    maker = make_app(tmp_path, HASH_PROFILE=made_with).test_client()
    assert maker.post("/client_registeration", json={"username": "alice", "email": "alice@example.com",
                                                     "password": "correct horse"}).status_code == 201
    client = make_app(tmp_path, HASH_PROFILE=served_with).test_client()
    known: list[float] = []
    unknown: list[float] = []
    for _ in range(7):  # interleaved, so load from elsewhere hits both alike
        _time_login(client, "alice", known)
        _time_login(client, "nobody", unknown)
    k, u = statistics.median(known), statistics.median(unknown)
    assert max(k, u) / min(k, u) < 2, f"known user {k:.1f} ms, unknown user {u:.1f} ms"


def test_login_with_an_outdated_hash_rehashes_it_with_the_configured_method(tmp_path):
    maker = make_app(tmp_path, HASH_PROFILE="lab").test_client()
    maker.post("/client_registeration", json={"username": "alice", "email": "alice@example.com",
                                              "password": "correct horse"})
    app = make_app(tmp_path, HASH_PROFILE="default")

    def stored_hash() -> str:
        with sqlite3.connect(app.config["DATABASE"]) as conn:
            return conn.execute("SELECT password_hash FROM users WHERE username = 'alice'").fetchone()[0]

    assert stored_hash().startswith("scrypt:1024:8:1$")
    client = app.test_client()
    assert client.post("/client_login", json={"username": "alice", "password": "wrong password"}).status_code == 401
    assert stored_hash().startswith("scrypt:1024:8:1$")  # only a correct password can be rehashed
    assert client.post("/client_login", json={"username": "alice", "password": "correct horse"}).status_code == 200
    assert stored_hash().startswith("scrypt:16384:8:1$")
    assert client.post("/client_login", json={"username": "alice", "password": "correct horse"}).status_code == 200


# --- leftovers of a killed server -------------------------------------------------------------

def _multiproc_dirs(pid: int) -> list[str]:
    parent = memory_tmp_dir() or tempfile.gettempdir()
    return glob.glob(os.path.join(parent, f"{MULTIPROC_PREFIX}{pid}-*"))


@pytest.mark.serial  # any gunicorn start (another xdist worker's) clears the dead server's /dev/shm directory this checks
def test_a_killed_servers_metrics_directory_is_removed_at_the_next_start_and_a_live_ones_kept(spawn, tmp_path):
    live = start(spawn, tmp_path)
    killed = start(spawn, tmp_path)
    live_dirs, killed_dirs = _multiproc_dirs(live.proc.pid), _multiproc_dirs(killed.proc.pid)
    assert len(live_dirs) == 1 and len(killed_dirs) == 1, (live_dirs, killed_dirs)

    workers = psutil.Process(killed.proc.pid).children()
    os.kill(killed.proc.pid, signal.SIGKILL)  # no cleanup runs in the arbiter
    killed.proc.wait(timeout=10)
    _, alive = psutil.wait_procs(workers, timeout=15)  # workers leave when their parent is gone
    assert not alive
    assert os.path.isdir(killed_dirs[0]), "precondition: SIGKILL left the directory behind"

    restarted = start(spawn, tmp_path)
    assert not os.path.exists(killed_dirs[0]), "the dead server's directory was not removed at start"
    assert os.path.isdir(live_dirs[0]), "a live server's directory was removed"
    assert len(_multiproc_dirs(restarted.proc.pid)) == 1
    assert live.request("GET", "/healthz")[0] == 200
    assert live.total("http_requests_total", endpoint="/healthz") >= 2  # its metrics still add up


def test_only_directories_named_with_a_dead_pid_are_cleared(tmp_path):
    finished = subprocess.run([PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                              check=True)
    dead_pid = int(finished.stdout)
    dead = tmp_path / f"{MULTIPROC_PREFIX}{dead_pid}-abc123"
    alive = tmp_path / f"{MULTIPROC_PREFIX}{os.getppid()}-abc123"
    other_naming = tmp_path / f"{MULTIPROC_PREFIX}x7k2_q9z"  # an older server's: owner unknown
    for path in (dead, alive, other_naming):
        path.mkdir()
        (path / "counter_1.db").write_bytes(b"\0" * 16)
    made = Path(make_multiproc_dir(str(tmp_path)))
    assert not dead.exists()
    assert alive.exists() and other_naming.exists()
    assert made.name.startswith(f"{MULTIPROC_PREFIX}{os.getpid()}-") and made.is_dir()
