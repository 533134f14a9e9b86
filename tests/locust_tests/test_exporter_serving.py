"""The exporter's own port is answered by a server process, outside Locust's gevent loop: a scrape
succeeds while the loop is blocked, the final scrape still equals Locust's CSV exactly, and the
server process ends with Locust, however Locust ends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from locust_tests.plugins.metrics_server import READY, encode_frame
from tests.helpers import PYTHON, REPO_ROOT, free_port, wait_for_http
from tests.locust_tests.conftest import run_locust, scrape
from tests.locust_tests.test_runs import assert_exporter_equals_csv

SERVER_SCRIPT = REPO_ROOT / "locust_tests" / "plugins" / "metrics_server.py"
# Calls /healthz, with the exporter as in any locustfile. With BLOCK_SECONDS > 0, the gevent loop
# freezes that long once the test has run 2 s: a real (un-patched) sleep holds the loop, as a
# saturating load would, only longer.
LOCUSTFILE = '''
import logging
import os

import gevent
from gevent import monkey
from locust import FastHttpUser, constant, events, task

from locust_tests.plugins import exporter  # noqa: F401

BLOCK_SECONDS = float(os.environ["BLOCK_SECONDS"])


def block_the_loop():
    gevent.sleep(2)
    logging.info("blocking the loop")
    monkey.get_original("time", "sleep")(BLOCK_SECONDS)
    logging.info("loop unblocked")


@events.test_start.add_listener
def _start(**_):
    if BLOCK_SECONDS:
        gevent.spawn(block_the_loop)


class Caller(FastHttpUser):
    wait_time = constant(0.05)

    @task
    def call(self):
        self.client.get("/healthz", name="healthz")
'''
BLOCK_SECONDS = 4


def start_locust(launch, tmp_path: Path, target, name: str, run_time: str, block_seconds: float = 0):
    """Locust on the locustfile above, its exporter on a free port; returns (process, metrics URL)."""
    locustfile = tmp_path / "healthz_locustfile.py"
    locustfile.write_text(LOCUSTFILE)
    port = free_port()
    proc = launch([PYTHON, "-m", "locust", "-f", str(locustfile), "--headless", "--only-summary",
                   "-u", "2", "-r", "2", "-t", run_time, "--host", target.url, "--csv", str(tmp_path / name),
                   "--exporter-port", str(port), "--exporter-linger", "2"],
                  name, env={"PYTHONPATH": str(REPO_ROOT), "BLOCK_SECONDS": str(block_seconds)})
    return proc, f"http://127.0.0.1:{port}/metrics"


def wait_until_closed(url: str, timeout: float = 5.0) -> bool:
    """True once nothing answers at `url` (the server process is gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if scrape(url, timeout=1) is None:
            return True
        time.sleep(0.1)
    return False


def test_scrape_is_answered_while_the_loop_is_blocked(launch, tmp_path, target):
    proc, url = start_locust(launch, tmp_path, target, "blocking", "8s", block_seconds=BLOCK_SECONDS)
    deadline = time.monotonic() + 30
    while "blocking the loop" not in proc.log():
        assert proc.proc.poll() is None and time.monotonic() < deadline, proc.log()[-3000:]
        time.sleep(0.05)

    body = scrape(url, timeout=BLOCK_SECONDS / 2)

    assert "loop unblocked" not in proc.log(), "the scrape was not answered before the loop went on"
    assert body is not None, f"no answer while the loop was blocked:\n{proc.log()[-3000:]}"
    assert 'locust_requests_total{method="GET",name="healthz"}' in body  # values rendered before the block
    run = run_locust(proc, url, timeout=40, csv_prefix=tmp_path / "blocking")
    assert_exporter_equals_csv(run)
    assert wait_until_closed(url), "the exporter port still answers after Locust exited"


def test_the_server_process_ends_with_a_killed_locust(launch, tmp_path, target):
    # SIGKILL gives Locust no chance to clean up: the server process must notice by itself.
    proc, url = start_locust(launch, tmp_path, target, "killed", "60s")
    wait_for_http(url, timeout=30, proc=proc)
    os.kill(proc.pid, signal.SIGKILL)
    assert wait_until_closed(url), "the exporter port still answers after Locust was killed"


def test_server_serves_the_latest_frame_and_503_after_a_failed_render(tmp_path):
    """metrics_server.py alone (it never imports Locust): each frame replaces the served bytes; an
    empty frame (the render failed) gives 503 rather than the previous, stale values."""
    listening = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{listening.getsockname()[1]}/metrics"
    server = subprocess.Popen([PYTHON, "-I", "-S", str(SERVER_SCRIPT), str(listening.fileno())],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(listening.fileno(),))
    listening.close()
    try:
        for i, body in enumerate((b"", b"locust_users 1.0\n", b"locust_users 2.0\n", b"")):
            server.stdin.write(encode_frame(body))
            server.stdin.flush()
            if i == 0:  # it says it serves once it has the first frame (the exporter waits for that)
                assert server.stdout.read(len(READY)) == READY
            if body:
                assert wait_for(lambda: scrape(url) == body.decode()), scrape(url)
            else:
                assert wait_for(lambda: urlopen_status(url) == 503), scrape(url)
        server.stdin.close()  # the Locust process is gone
        assert server.wait(timeout=5) == 0
    finally:
        server.kill()
        server.wait()


def urlopen_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False
