"""The Lab tab of `loadlab up`, in headless Chromium: a step hunt started through Locust's own REST
endpoint (/swarm), the page checked as a browser renders it, and the tab behind --web-login."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.cookiejar import CookieJar
from pathlib import Path

import psutil
import pytest

from tests.helpers import REPO_ROOT, require_binary
from tests.loadlab.conftest import LOADLAB, assert_all_gone

# One gunicorn worker with the default (scrypt) hash: throughput flattens at a few users. The SLO is
# set out of reach so that the hunt climbs past the knee instead of stopping at a latency break (on a
# busy machine p95 crosses 500 ms early), and the live verdict has a knee to show.
UP = ["up", "login-step", "--free-ports", "--prometheus", "off", "--hash-profile", "default",
      "--target-workers", "1", "--time-scale", "0.05", "--slo-p95-ms", "60000"]
HUNT = ["--step-users", "2", "--max-users", "16"]  # 8 steps of 7.5 s
ENV = {"LOGIN_USERS": "16", "MIN_WAIT_TIME": "200", "MAX_WAIT_TIME": "400"}
PASSWORD = "lab-tab-test-password"


@dataclass
class Up:
    proc: subprocess.Popen
    log: Path
    url: str  # Locust's web UI
    run_dir: Path

    def output(self) -> str:
        return self.log.read_text()


@contextmanager
def lab_up(tmp_path: Path, locust_args: list[str] = (), env: dict[str, str] | None = None) -> Iterator[Up]:
    """`loadlab up` until the block ends; then Ctrl-C, and every process it started is gone."""
    out, log = tmp_path / "reports", tmp_path / "up.out"
    args = [*LOADLAB, *UP, "--out", str(out), "--", *HUNT, *locust_args]
    with open(log, "w") as fh:
        proc = subprocess.Popen(args, cwd=REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, **ENV, "PYTHONUNBUFFERED": "1", **(env or {})})
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"locust UI\s+(http://127\.0\.0\.1:\d+)", log.read_text())):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no web UI in 120 s:\n" + log.read_text()
            time.sleep(0.3)
        up = Up(proc, log, found.group(1), next(out.iterdir()))
        yield up
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 130, log.read_text()
        assert_all_gone(started(out))
    finally:
        if proc.poll() is None:  # the test failed: the lab's own SIGTERM handling stops what it started
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        for pid in started(out):  # a failed test must not leave load running for the tests after it
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass


def started(out: Path) -> list[int]:
    """Every PID the lab recorded in its run directory's run.json."""
    pids: list[int] = []
    for meta_path in out.glob("*/run.json") if out.is_dir() else []:
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:  # being rewritten this instant
            continue
        pids += [c["pid"] for c in meta.get("components", [])] + meta.get("pids", [])
    return pids


def chromium_dom(url: str, profile: Path, budget_ms: int = 4000) -> str:
    """The DOM of `url` after Chromium ran its scripts for `budget_ms` of virtual time."""
    chromium = require_binary("chromium")
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
        capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def get(url: str, headers: dict[str, str] | None = None, opener=None) -> tuple[int, str, dict[str, str]]:
    """(status, body, headers) without following redirects (a login redirect is the answer itself)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = opener or urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=15) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace"), dict(err.headers)


def lab_data(up: Up) -> dict:
    status, body, _ = get(f"{up.url}/lab/data")
    assert status == 200, body[:2000]
    return json.loads(body)


def wait_for(up: Up, what: str, ready: Callable[[dict], bool], timeout: float) -> dict:
    """The tab's data (/lab/data) once `ready` says so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert up.proc.poll() is None, up.output()
        view = lab_data(up)
        if ready(view):
            return view
        time.sleep(1)
    pytest.fail(f"{what}: not within {timeout:.0f} s\n{json.dumps(lab_data(up))[:3000]}\n{up.output()[-3000:]}")


def section(dom: str, element_id: str) -> str:
    found = re.search(rf'<(\w+)[^>]*id="{element_id}"[^>]*>(.*?)</\1>', dom, re.S)
    assert found, f'no id="{element_id}" in the page:\n{dom[:3000]}'
    return found.group(2)


def points(dom: str, key: str) -> int:
    """How many points the page's chart line for `key` has (0 when the line is not drawn)."""
    found = re.search(rf'data-key="{key}" data-points="(\d+)"', dom)
    return int(found.group(1)) if found else 0


@pytest.mark.serial  # the live hunt must find a knee: run alone
@pytest.mark.timeout(420)
def test_lab_tab_draws_resources_and_the_live_verdict_through_a_step_hunt(tmp_path):
    require_binary("chromium")
    with lab_up(tmp_path) as up:
        status, body, _ = get(f"{up.url}/lab")
        assert status == 200 and "No test running yet" in body
        request = urllib.request.Request(f"{up.url}/swarm", data=urllib.parse.urlencode(
            {"user_count": 1, "spawn_rate": 1}).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=15) as response:  # the step scenario is preselected
            assert json.loads(response.read())["success"] is True
        wait_for(up, "a first finished step", lambda v: bool(v["steps"]), 120)
        dom = chromium_dom(f"{up.url}/lab", tmp_path / "chromium-1")
        # The page itself: the charts' target CPU and users lines drawn, the first step judged.
        assert points(dom, "target_cpu_cores") > 0 and points(dom, "users") > 0, dom[:3000]
        assert points(dom, "generator_cpu_cores") > 0 and points(dom, "target_memory_bytes") > 0
        steps = section(dom, "steps")
        assert re.search(r"<td>step 1</td><td>2</td>", steps), steps
        assert "the lab's analysis" in dom

        final = wait_for(up, "the knee, or the end of the hunt", lambda v: v["knee"] or v["state"] == "stopped", 240)
        assert final["knee"], f"the hunt ended without a knee: {final['summary']}"
        dom = chromium_dom(f"{up.url}/lab", tmp_path / "chromium-2", budget_ms=8000)
        verdict = section(dom, "verdict")
        assert re.search(r"<li>knee: ~[\d.]+ users \(first flat step \d+ users", verdict), verdict
        assert 'class="mark-knee"' in dom  # and marked on the charts
        assert int(re.search(r'id="lab" data-refreshes="(\d+)"', dom).group(1)) >= 1  # it refreshed itself

        # Locust's own UI has the Lab tab too, its rows riding on the stats request.
        ui = chromium_dom(f"{up.url}/?tab=lab", tmp_path / "chromium-3", budget_ms=6000)
        assert "step 1" in ui and "knee: ~" in ui, ui[:3000]

        stopped = wait_for(up, "the end of the hunt and its report", lambda v: v["state"] == "stopped" and v["report"], 240)
        dom = chromium_dom(f"{up.url}/lab", tmp_path / "chromium-4")
        assert 'href="lab/report"' in section(dom, "report")
        status, report, _ = get(f"{up.url}/lab/report")
        assert status == 200 and 'id="verdict"' in report
    # Ctrl-C: the lab's final verdict prints the very lines the tab showed.
    printed = up.output().split("\nverdict:\n", 1)[1].split("\nreport: ", 1)[0]
    assert [line.strip() for line in printed.splitlines()] == stopped["summary"]


@pytest.mark.timeout(240)
def test_lab_tab_is_refused_without_the_web_login(tmp_path):
    with lab_up(tmp_path, ["--web-login"], env={"LOCUST_WEB_PASSWORD": PASSWORD}) as up:
        for path in ("/lab", "/lab/panel", "/lab/data", "/lab/report", "/", "/metrics"):
            status, body, headers = get(up.url + path)
            assert status == 302 and "/login" in headers.get("Location", ""), (path, status, body[:300])
            assert "live-verdict" not in body and "series" not in body
        wrong = base64.b64encode(b"locust:wrong-password").decode()
        assert get(f"{up.url}/lab/data", {"Authorization": f"Basic {wrong}"})[0] == 302
        # With the account: HTTP Basic for scripts...
        right = base64.b64encode(f"locust:{PASSWORD}".encode()).decode()
        status, body, _ = get(f"{up.url}/lab/data", {"Authorization": f"Basic {right}"})
        assert status == 200 and json.loads(body)["source"] == "lab"
        # ...and Locust's own login form for people (a session cookie).
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        form = urllib.parse.urlencode({"username": "locust", "password": PASSWORD}).encode()
        opener.open(urllib.request.Request(f"{up.url}/login_submit", data=form, method="POST"), timeout=15)
        status, body, _ = get(f"{up.url}/lab", opener=opener)
        assert status == 200 and 'id="live-verdict"' in body
        # A browser without credentials gets Locust's login page, not the tab.
        dom = chromium_dom(f"{up.url}/lab", tmp_path / "chromium")
        assert 'id="live-verdict"' not in dom and 'id="root"' in dom, dom[:2000]
