"""`loadlab up`, `loadlab data` and `loadlab cleanup`: the commands beside `run`, used for real."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.helpers import REPO_ROOT, free_port, wait_for_http
from tests.loadlab.conftest import LOADLAB, assert_all_gone

ADMIN_TOKEN = "test-admin-token-for-cleanup"


def _post_json(url: str, body: dict) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


@pytest.mark.timeout(180)
def test_up_serves_the_web_ui_and_exporter_until_ctrl_c_then_leaves_nothing(tmp_path):
    out = tmp_path / "reports"
    log_path = tmp_path / "up.out"
    args = [*LOADLAB, "up", "login-baseline", "--free-ports", "--prometheus", "off", "--hash-profile", "lab",
            "--target-workers", "1", "--out", str(out)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "LOGIN_USERS": "5", "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 90
        while not re.search(r"locust UI\s+(http://127\.0\.0\.1:\d+)", log_path.read_text()):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "no web UI URL printed in 90 s:\n" + log_path.read_text()
            time.sleep(0.3)
        ui_url = re.search(r"locust UI\s+(http://127\.0\.0\.1:\d+)", log_path.read_text()).group(1)
        wait_for_http(ui_url, timeout=30)
        with urllib.request.urlopen(ui_url, timeout=10) as response:
            assert response.status == 200
        # The exporter is on Locust's web UI too, as the Locust suite promises.
        with urllib.request.urlopen(f"{ui_url}/metrics", timeout=10) as response:
            assert "locust_users" in response.read().decode()
        run_dir = next(out.iterdir())
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
    output = log_path.read_text()
    assert code == 130, output
    meta = json.loads((run_dir / "run.json").read_text())
    assert {c["name"] for c in meta["components"]} >= {"target", "sidecar", "locust"}
    assert_all_gone([c["pid"] for c in meta["components"]] + meta["pids"])


def test_data_regenerates_the_same_users_from_the_same_seed(tmp_path):
    files = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in files:
        done = subprocess.run([*LOADLAB, "data", "--count", "7", "--seed", "3", "--out", str(path)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    users = json.loads(files[0].read_text())
    users = users["users"] if isinstance(users, dict) else users
    assert len(users) == 7 and len({u["username"] for u in users}) == 7
    assert files[0].read_bytes() == files[1].read_bytes()


def test_cleanup_deletes_only_users_with_the_prefix(spawn, tmp_path):
    port = free_port()
    target = spawn([sys.executable, "-m", "target_app", "--port", str(port), "--workers", "1", "--hash-profile",
                    "lab", "--db", str(tmp_path / "t.db")], name="target", env={"LAB_ADMIN_TOKEN": ADMIN_TOKEN})
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/healthz", proc=target)
    for name in ("lt_cleanme_1", "lt_cleanme_2", "keeper_1"):
        assert _post_json(f"{url}/client_registeration",
                          {"username": name, "email": f"{name}@example.com", "password": "password-123"}) == 201

    done = subprocess.run([*LOADLAB, "cleanup", "--host", url, "--prefix", "lt_cleanme_"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "LAB_ADMIN_TOKEN": ADMIN_TOKEN})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deleted 2 users" in done.stdout
    # The kept user still logs in; the deleted ones are gone (same 401 as a wrong password).
    assert _post_json(f"{url}/client_login", {"username": "keeper_1", "password": "password-123"}) == 200
    with pytest.raises(urllib.error.HTTPError) as err:
        _post_json(f"{url}/client_login", {"username": "lt_cleanme_1", "password": "password-123"})
    assert err.value.code == 401


def test_cleanup_without_a_token_says_how_to_give_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LAB_ADMIN_TOKEN"}
    done = subprocess.run([*LOADLAB, "cleanup", "--host", "http://127.0.0.1:9"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode != 0
    assert "LAB_ADMIN_TOKEN" in done.stderr and "--token" in done.stderr
