"""`loadlab run` end to end against the bundled target, its error paths, and the report in a browser."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

from loadlab.runner import new_run_dir
from tests.helpers import REPO_ROOT, require_binary
from tests.loadlab.conftest import LOADLAB, LabRun, assert_all_gone, run_loadlab

# A short step hunt: 3 steps of 6 s (150 s x 0.04), few seeded accounts, the lab's cheap hash.
SHORT = ["run", "login-step", "--time-scale", "0.04", "--target-workers", "2", "--hash-profile", "lab"]
SHORT_LOCUST = ["--", "--step-users", "5", "--max-users", "15"]
ENV = {"LOGIN_USERS": "10", "MIN_WAIT_TIME": "200", "MAX_WAIT_TIME": "400"}
T = TypeVar("T")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    run = run_loadlab([*SHORT, *SHORT_LOCUST], out, env=ENV, timeout=180)
    return run


@pytest.mark.timeout(240)
def test_run_leaves_a_complete_run_directory_and_no_process(finished_run):
    run = finished_run
    assert run.returncode == 0, run.output
    d = run.run_dir
    assert d.parent.name.startswith("reports") and d.name.endswith("-login-step")
    for name in ("locust_stats_history.csv", "locust_stats.csv", "locust.html", "locust.json", "samples.jsonl",
                 "run.json", "verdict.json", "report.html", "logs/target.log", "logs/sidecar.log", "logs/locust.log"):
        assert (d / name).is_file() and (d / name).stat().st_size > 0, f"{name} missing:\n{run.output}"
    if (d / "logs" / "prometheus.log").exists():  # Prometheus ran (it is on PATH): its TSDB is in the run dir
        assert (d / "prometheus" / "prometheus.yml").is_file() and (d / "prometheus" / "data").is_dir()
    sources = {json.loads(line).get("source") for line in (d / "samples.jsonl").read_text().splitlines()}
    assert {"sidecar", "target", "locust"} <= sources
    verdict = json.loads((d / "verdict.json").read_text())
    assert {"knee", "break", "capacity_rps", "limiting_resource", "first_signal", "breaking_point_reached"} <= set(verdict)
    assert [s["users"] for s in verdict["steps"]][:3] == [5, 10, 15]
    assert all(s["target_cpu_cores"] is not None and s["generator_cpu_cores"] is not None for s in verdict["steps"])
    assert "verdict:" in run.output and f"report: {d / 'report.html'}" in run.output
    assert_all_gone(run.started_pids())


def test_a_run_directory_is_never_reused(tmp_path):
    first = new_run_dir(tmp_path, "login-step")
    (first / "verdict.json").write_text("{}")
    second = new_run_dir(tmp_path, "login-step")
    assert second != first and (first / "verdict.json").read_text() == "{}"


def test_a_taken_port_is_one_clear_error_before_anything_starts(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        run = run_loadlab(["run", "login-step", "--target-port", str(port)], tmp_path / "reports", timeout=60)
    assert run.returncode == 2
    assert f"port {port} for the target API is already in use" in run.output
    assert "--target-port" in run.output
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())


def test_a_missing_prometheus_binary_is_named_with_the_fix(tmp_path):
    env = {"PATH": str(Path(sys.executable).parent)}  # the venv only: no prometheus there
    run = run_loadlab(["run", "login-step", "--prometheus", "on"], tmp_path / "reports", env=env, timeout=60)
    assert run.returncode == 2
    assert "prometheus not found on PATH" in run.output and "apt-get install prometheus" in run.output


def _start_in_background(tmp_path: Path, *lab_args: str, locust_args: Sequence[str] = ()) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "reports"
    args = [*LOADLAB, *SHORT, "--prometheus", "off", "--out", str(out), *lab_args,
            "--", "--step-users", "5", "--max-users", "50", *locust_args]
    log = open(tmp_path / "loadlab.out", "w")
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env={**os.environ, **ENV, "PYTHONUNBUFFERED": "1"}, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # until Locust is up: every component is running
        text = (tmp_path / "loadlab.out").read_text()
        if "\nlocust " in text or text.startswith("locust "):
            break
        assert proc.poll() is None, text
        time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("loadlab did not start Locust in 90 s:\n" + (tmp_path / "loadlab.out").read_text())
    run_dir = next(out.iterdir())
    return proc, run_dir


def _wait_for_load(run_dir: Path, timeout: float = 60) -> None:
    """Until Locust's stats history has a row with users running: there is a part that ran to judge."""
    history = run_dir / "locust_stats_history.csv"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if history.is_file():
            with open(history, newline="") as fh:
                if any(row.get("User Count") not in (None, "", "0") for row in csv.DictReader(fh)):
                    return
        time.sleep(0.3)
    pytest.fail(f"no load recorded in {history} within {timeout} s")


def _component(run_dir: Path, name: str) -> dict:
    return next(c for c in json.loads((run_dir / "run.json").read_text())["components"] if c["name"] == name)


def _assert_partial(run: LabRun, reason: str) -> dict:
    """The run wrote a verdict and a report of the part that ran, marked complete: false, and said so."""
    verdict = run.verdict()
    assert verdict["complete"] is False, run.output
    assert reason in verdict["incomplete_reason"]
    assert verdict["summary"][0].startswith("PARTIAL verdict"), verdict["summary"]
    assert verdict["steps"], run.output  # the part that ran was judged
    assert "PARTIAL" in (run.run_dir / "report.html").read_text()
    assert f"the verdict is PARTIAL (complete: false in verdict.json): {verdict['incomplete_reason']}" in run.output
    return verdict


def _finish(proc: subprocess.Popen, tmp_path: Path, run_dir: Path, stop: Callable[[], T]) -> tuple[T, LabRun]:
    """Call `stop` on the running lab, wait for loadlab to exit (killed if it has not), and return what
    `stop` returned and the finished run (exit code, output, run.json)."""
    try:
        stopped = stop()
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    run = LabRun(code, (tmp_path / "loadlab.out").read_text(), run_dir)
    assert "pids" in run.meta(), run.output  # the runner records every PID it started, even when stopped early
    return stopped, run


@pytest.mark.timeout(180)
def test_a_component_dying_mid_run_is_named_and_nothing_is_left(tmp_path):
    proc, run_dir = _start_in_background(tmp_path)

    def kill_sidecar() -> dict:
        _wait_for_load(run_dir)
        sidecar = _component(run_dir, "sidecar")
        os.kill(sidecar["pid"], signal.SIGKILL)
        return sidecar

    sidecar, run = _finish(proc, tmp_path, run_dir, kill_sidecar)
    assert run.returncode == 1, run.output
    log = str(run_dir / "logs" / "sidecar.log")
    assert f"sidecar (pid {sidecar['pid']}) exited" in run.output and log in run.output
    _assert_partial(run, f"sidecar (pid {sidecar['pid']}) exited with code -9 (killed by SIGKILL)")
    assert_all_gone(run.started_pids())


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_dead_locust_worker_is_noticed_within_15_s(tmp_path, sig):
    # Killed, or stopped cleanly (it exits 0 and says goodbye to the master): either way the master
    # would run on with fewer users than the step asks for.
    proc, run_dir = _start_in_background(tmp_path, "--workers", "2")

    def kill_worker() -> tuple[int, float]:
        _wait_for_load(run_dir)
        pid = _component(run_dir, "locust-worker-2")["pid"]
        os.kill(pid, sig)
        killed_at = time.monotonic()
        while (f"locust worker 2 (pid {pid}) exited" not in (tmp_path / "loadlab.out").read_text()
               and time.monotonic() - killed_at < 60):
            time.sleep(0.2)
        return pid, time.monotonic() - killed_at

    (pid, noticed_after), run = _finish(proc, tmp_path, run_dir, kill_worker)
    assert noticed_after <= 15, run.output
    assert run.returncode == 1, run.output
    _assert_partial(run, f"locust worker 2 (pid {pid}) exited")
    assert "every other component was stopped" in run.output
    assert_all_gone(run.started_pids())


@pytest.mark.timeout(180)
def test_killing_loadlab_stops_every_process_it_started_within_10_s(tmp_path):
    # SIGKILL, as a CI job's timeout does: loadlab cannot clean up. Locust with --processes forks its
    # workers, and gunicorn forks its own: grandchildren of loadlab, which the kernel does not signal.
    proc, run_dir = _start_in_background(tmp_path, locust_args=["--processes", "2"])
    started: list[psutil.Process] = []
    try:
        _wait_for_load(run_dir)
        started = psutil.Process(proc.pid).children(recursive=True)
        components = {c["pid"] for c in json.loads((run_dir / "run.json").read_text())["components"]}
        assert components <= {p.pid for p in started}
        # target + 2 gunicorn workers, sidecar, Locust + its 2 processes (+ the watchdog)
        assert len(started) >= 7, [p.cmdline()[:4] for p in started]
        proc.kill()
        proc.wait(timeout=10)
        killed_at = time.monotonic()
        alive = started
        while alive and time.monotonic() - killed_at < 10:
            time.sleep(0.2)
            alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"still running 10 s after loadlab was killed: {[(p.pid, p.cmdline()[:4]) for p in alive]}"
    finally:
        if proc.poll() is None:
            proc.kill()
        for leftover in started:  # by PID and start time: only what this test started
            try:
                leftover.kill()
            except psutil.Error:
                pass


@pytest.mark.timeout(180)
def test_ctrl_c_stops_every_component(tmp_path):
    proc, run_dir = _start_in_background(tmp_path)

    def interrupt() -> None:
        _wait_for_load(run_dir)
        proc.send_signal(signal.SIGINT)

    _, run = _finish(proc, tmp_path, run_dir, interrupt)
    assert run.returncode == 130, run.output
    assert "interrupted" in run.output
    _assert_partial(run, "interrupted by SIGINT")
    # Locust was stopped as by Ctrl-C, so it wrote its own reports too.
    assert "<html" in (run_dir / "locust.html").read_text()
    assert json.loads((run_dir / "locust.json").read_text())
    assert_all_gone(run.started_pids())


@pytest.mark.parametrize("host, code", [("closed", 1), ("http://", 2)])
def test_locust_stopping_early_is_one_line_without_a_traceback(tmp_path, host, code):
    with socket.socket() as sock:  # a port nothing listens on (bound, not listening: refused)
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}" if host == "closed" else host
        run = run_loadlab(["run", "login-step", "--prometheus", "off", "--host", url], tmp_path / "reports",
                          timeout=120)
    assert run.returncode == code, run.output
    assert "Traceback" not in run.output
    errors = [line for line in run.output.splitlines() if "error:" in line]
    assert len(errors) == 1, run.output
    if host == "closed":
        assert errors[0].startswith("error: Locust stopped before any load (code 1): preflight: nothing answers at "
                                    f"{url}"), run.output
        assert f"its log: {run.run_dir / 'logs' / 'locust.log'}" in errors[0]
        assert_all_gone(run.started_pids())
    else:
        assert "--host 'http://' names no host" in errors[0]


@pytest.mark.timeout(120)
def test_report_renders_in_headless_chromium_with_every_chart(finished_run, tmp_path):
    chromium = require_binary("chromium")
    report = finished_run.run_dir / "report.html"
    assert finished_run.returncode == 0, finished_run.output
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=90)
    dom = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'id="verdict"' in dom and "capacity" in dom
    # Every chart decoded to a real image (the report's inline check marks them), none broken.
    assert dom.count('class="chart decoded"') == 6, dom[:2000]  # five on the time axis, one against users
    assert 'class="chart broken"' not in dom
    # The page writes nothing to the console, so any console line (an uncaught error) is a failure.
    assert not [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line], proc.stderr
