"""Plain `locust -f ...` from the repository root puts its web UI (no authentication) on 127.0.0.1,
by the repository's locust.conf, and --web-host still chooses another address."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from tests.helpers import REPO_ROOT, ManagedProcess, free_port
from tests.locust_tests.conftest import locust_args


@pytest.fixture
def start_locust(tmp_path):
    """Start Locust in web UI mode from the repository root (where a user types the README's
    commands), without LOCUST_* variables from outside; stopped by PID when the test ends."""
    started: list[ManagedProcess] = []

    def _start(*args: str) -> ManagedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
        proc = ManagedProcess(locust_args("login_test", "--exporter-port", "0", *args),
                              tmp_path / f"locust-{len(started)}.log", env=env, cwd=REPO_ROOT)
        started.append(proc)
        return proc

    yield _start
    for proc in started:
        proc.stop()


def listening_address(proc: ManagedProcess, port: int, timeout: float = 40.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            pytest.fail(f"locust exited with {proc.proc.returncode}:\n{proc.log()[-3000:]}")
        for conn in psutil.Process(proc.pid).net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                return conn.laddr.ip
        time.sleep(0.2)
    pytest.fail(f"locust did not listen on port {port} within {timeout}s:\n{proc.log()[-3000:]}")


def test_plain_locust_serves_its_web_ui_on_localhost_only(start_locust):
    port = free_port()
    proc = start_locust("--web-port", str(port))  # no --web-host: Locust's own default is every address
    assert listening_address(proc, port) == "127.0.0.1"


def test_web_host_flag_still_wins_over_locust_conf(start_locust):
    port = free_port()
    proc = start_locust("--web-port", str(port), "--web-host", "127.0.0.2")  # loopback too, but not .1
    assert listening_address(proc, port) == "127.0.0.2"
