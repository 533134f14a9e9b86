"""`loadlab run --host URL --target-sidecar URL [--target-metrics URL | --target-metrics-port P]`: an API
whose processes the lab cannot see, measured by a sidecar beside it. Its flags are checked before
anything starts; during the run the API's own latency is read beside Locust's, and a sidecar that
stops answering does not stop the run: the lab says which and since when, and the steps it left
without samples get no resource verdict."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import PYTHON, REPO_ROOT, free_port, wait_for_http
from tests.loadlab.conftest import LOADLAB, LabRun, assert_all_gone, run_loadlab, step_table


def no_run_started(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(("args", "says"), [
    (["run"], "give a SCENARIO (registration-normal"),
    (["run", "login-step", "--locustfile", "x.py"], "give a SCENARIO or --locustfile, not both"),
    (["run", "--locustfile", "/nonexistent/mine.py"], "--locustfile /nonexistent/mine.py: no such file"),
    (["run", "--locustfile", "README.md"], "Locust loads only .py files"),
    (["run", "--locustfile", "tests/loadlab/other_api_locustfile.py", "--", "-f", "x.py"],
     "--locustfile gives Locust its -f already"),
    (["run", "login-step", "--target-sidecar", "http://127.0.0.1:9256"], "--target-sidecar needs --host"),
    (["run", "login-step", "--host", "http://127.0.0.1:5000", "--target-group", "api"],
     "--target-group names a group of the sidecar given by --target-sidecar"),
    (["run", "login-step", "--host", "http://127.0.0.1:5000", "--target-sidecar", "10.0.0.5:9256"],
     "--target-sidecar '10.0.0.5:9256' is not a URL"),
    (["run", "login-step", "--host", "http://127.0.0.1:5000", "--target-metrics", "http://127.0.0.1:1/metrics",
      "--target-metrics-port", "9101"], "--target-metrics and --target-metrics-port both"),
])
def test_bad_flags_are_one_line_and_nothing_starts(tmp_path, args, says):
    run = run_loadlab(args, tmp_path / "reports", timeout=60)
    assert run.returncode == 2, run.output
    assert says in run.output, run.output
    assert "Traceback" not in run.output and no_run_started(tmp_path / "reports")


def test_a_remote_source_that_does_not_answer_or_lacks_the_group_is_refused_before_anything_starts(spawn, tmp_path):
    nothing = f"http://127.0.0.1:{free_port()}"
    run = run_loadlab(["run", "login-step", "--host", "http://127.0.0.1:5000", "--target-sidecar", nothing],
                      tmp_path / "reports", timeout=60)
    assert run.returncode == 2 and f"--target-sidecar {nothing}/metrics does not answer" in run.output, run.output
    assert "python -m monitoring.sidecar --host 0.0.0.0" in run.output

    # A sidecar whose regex matches nothing running: its group reads as an idle API, so it is refused.
    port = free_port()
    car = spawn([PYTHON, "-m", "monitoring.sidecar", "--port", str(port), "--group", "api=^no-such-program-x7 "],
                name="sidecar")
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for_http(url, proc=car)
    base = ["run", "login-step", "--host", "http://127.0.0.1:5000", "--target-sidecar", url]
    run = run_loadlab(base, tmp_path / "reports", timeout=60)
    assert run.returncode == 2 and f"--target-sidecar {url} has no process group 'target' (its groups: api)" in run.output
    run = run_loadlab([*base, "--target-group", "api"], tmp_path / "reports", timeout=60)
    assert run.returncode == 2 and "group 'api' has no process" in run.output, run.output

    # A sidecar you started yourself on the lab's usual sidecar port is not the lab's own: say how to use it.
    run = run_loadlab(["run", "login-step", "--sidecar-port", str(port)], tmp_path / "reports", timeout=60)
    assert run.returncode == 2 and f"port {port} for the resource sidecar is already in use" in run.output
    assert f"pass --target-sidecar {url}" in run.output, run.output

    # --target-metrics-port with --host is the API's metrics port on the API's machine, and must answer.
    metrics_port = free_port()
    run = run_loadlab(["run", "login-step", "--host", "http://127.0.0.1:5000", "--target-metrics-port",
                       str(metrics_port)], tmp_path / "reports", timeout=60)
    assert run.returncode == 2, run.output
    assert f"--target-metrics-port http://127.0.0.1:{metrics_port}/metrics does not answer" in run.output
    assert no_run_started(tmp_path / "reports")


@pytest.mark.timeout(300)
def test_a_remote_target_gets_server_latency_and_survives_its_sidecar_going_away(spawn, tmp_path):
    # The bundled target as someone else's server: started by hand, its metrics on their own port,
    # found by the sidecar beside it by its command line. The lab gets neither PID.
    port, metrics_port, sidecar_port = free_port(), free_port(), free_port()
    server = spawn([PYTHON, "-m", "target_app", "--host", "127.0.0.1", "--port", str(port), "--metrics-port",
                    str(metrics_port), "--workers", "2", "--hash-profile", "lab", "--db", str(tmp_path / "t.db")],
                   name="remote-target")
    host = f"http://127.0.0.1:{port}"
    wait_for_http(f"{host}/healthz", timeout=30, proc=server)
    car = spawn([PYTHON, "-m", "monitoring.sidecar", "--port", str(sidecar_port), "--group",
                 f"target=-m target_app --host 127\\.0\\.0\\.1 --port {port} "], name="remote-sidecar")
    sidecar_url = f"http://127.0.0.1:{sidecar_port}/metrics"
    wait_for_http(sidecar_url, proc=car)

    out = tmp_path / "reports"
    log_path = tmp_path / "loadlab.out"
    args = [*LOADLAB, "run", "login-step", "--host", host, "--target-sidecar", sidecar_url, "--target-metrics-port",
            str(metrics_port), "--target-workers", "2", "--prometheus", "off", "--out", str(out), "--",
            "--step-users", "2", "--step-time", "6s", "--max-users", "8", "--no-stop-on-break"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LOGIN_USERS": "10", "MIN_WAIT_TIME": "300", "MAX_WAIT_TIME": "500"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 150
        stopped_at = None
        while proc.poll() is None:
            assert time.monotonic() < deadline, log_path.read_text()
            samples = next(out.iterdir(), None) if out.exists() else None
            if stopped_at is None and samples is not None and users_reached(samples / "samples.jsonl", 4):
                time.sleep(3)
                car.stop()  # the sidecar beside the API goes away in the second step
                stopped_at = time.time()
            time.sleep(0.5)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log_path.read_text()
    run_dir = Path(re.search(r"run directory (\S+)", output).group(1))
    run = LabRun(code, output, run_dir)
    assert stopped_at is not None, output
    assert_all_gone(run.started_pids())
    verdict = run.verdict()
    # A knee or break whose limiting resource the outage left unknown is a partial verdict: exit 1.
    lost = verdict["limiting_resource"] is None and (verdict["knee"] or verdict["break"])
    assert code == (1 if lost else 0), output
    assert ("the limiting resource is unknown because a source" in output) == bool(lost), output
    assert f"target_sidecar {sidecar_url} stopped answering at" in output and "the run goes on" in output
    meta, verdict = run.meta(), run.verdict()
    assert meta["target_metrics"] == f"http://127.0.0.1:{metrics_port}/metrics"  # not ignored with --host
    assert meta["target_workers"] == 2 and meta["remote_sources"]["target_sidecar"] == sidecar_url
    detail = step_table(verdict) + "\n" + "\n".join(verdict["summary"])
    steps = verdict["steps"]
    assert [s["users"] for s in steps] == [2, 4, 6, 8], detail
    assert verdict["complete"] is True
    # Before the sidecar went away the API's CPU is known; after it, unknown (not judged from part of a hold).
    assert steps[0]["target_cpu_cores"] is not None and steps[0]["resource_gap"] is None, detail
    assert all(s["target_cpu_cores"] is None and s["resource_gap"] for s in steps[2:]), detail
    assert any("target_sidecar" in line and "stopped answering" in line for line in verdict["summary"]), detail
    # The API's own latency beside Locust's, in every step (its metrics port kept answering); the
    # client's includes the network and the queue in front of the app, so it is never lower.
    for s in steps:
        assert s["server_p95_ms"] is not None and s["server_mean_ms"] is not None, detail
        assert s["server_mean_ms"] <= s["mean_response_ms"] * 1.05 + 2, detail
    report = (run_dir / "report.html").read_text()
    assert "<th>server p95 ms</th>" in report
    table = report[report.index('<table id="steps">'):]
    assert f"<td>{steps[0]['server_p95_ms']:.0f}</td>" in table


def users_reached(samples: Path, users: int) -> bool:
    """Whether Locust's exporter, as the lab sampled it, reports at least `users` users."""
    try:
        lines = samples.read_text().splitlines()
    except OSError:
        return False
    for line in reversed(lines[-20:]):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("source") == "locust" and record.get("ok"):
            return any(name == "locust_users" and value >= users for name, _, value in record["samples"])
    return False
