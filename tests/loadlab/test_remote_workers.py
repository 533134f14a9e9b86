"""Load generators on other machines (`--remote-workers N`), simulated on this one: the lab prints
the worker command, the test runs it as a user would on each load machine, and the run completes
with one verdict whose exporter totals equal Locust's CSV. Workers that do not all come fail fast
with one line naming how many did; one lost mid-run stops the run with a PARTIAL verdict. `loadlab up
--remote-workers` waits for its workers the same way before it prints the web UI's URL.

Loopback addresses stand in for the machines: the master listens on 127.0.0.1 (the lab's machine)
and each worker's sidecar on its own address (127.0.0.2, 127.0.0.3). What this does not prove:
separate kernels, clocks and networks (firewalls, latency between machines).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import time
import types
import urllib.request
from pathlib import Path

import pytest

from loadlab import fleet, generators
from loadlab.analysis import analyze_steps
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS
from loadlab.history import Samples, read_samples, scrape_value
from loadlab.runner import Lab, LabOptions
from tests.helpers import ManagedProcess
from tests.loadlab.conftest import (
    LOADLAB,
    assert_all_gone,
    lab_pids,
    printed_command,
    run_dir_of,
    run_remote_workers,
    start_machine_sidecar,
    start_worker,
)
from tests.loadlab.synthetic import model_steps

# The short step hunt of tests/loadlab/test_runner.py: 3 steps of 6 s, few seeded accounts, a cheap hash.
SHORT = ["run", "login-step", "--time-scale", "0.04", "--target-workers", "2", "--hash-profile", "lab",
         "--prometheus", "off"]
SHORT_LOCUST = ["--", "--step-users", "5", "--max-users", "15"]
ENV = {"LOGIN_USERS": "10", "MIN_WAIT_TIME": "200", "MAX_WAIT_TIME": "400", "PYTHONUNBUFFERED": "1"}


def start_lab(spawn, tmp_path: Path, *args: str) -> ManagedProcess:
    out = tmp_path / "reports"
    return spawn([*LOADLAB, *SHORT, "--out", str(out), *args, *SHORT_LOCUST], name="loadlab", env=ENV)


@pytest.mark.timeout(240)
def test_two_remote_workers_run_the_hunt_and_the_exporter_equals_the_csv(spawn, tmp_path):
    pid_files = [tmp_path / f"worker-{i}.pid" for i in (1, 2)]
    sidecars = [start_machine_sidecar(spawn, address, pid_file)
                for address, pid_file in zip(("127.0.0.2", "127.0.0.3"), pid_files)]
    lab = start_lab(spawn, tmp_path, "--remote-workers", "2", "--workers-timeout", "60",
                    *(arg for url in sidecars for arg in ("--generator-sidecar", url)))
    command, workers, run_dir = run_remote_workers(spawn, lab, pid_files)
    output = lab.log()
    assert " --worker --master-host 127.0.0.1 --master-port " in command
    verdict = json.loads((run_dir / "verdict.json").read_text())
    assert verdict["complete"] is True, output
    assert verdict["steps"], output

    # Each load machine's generator CPU is in every step, named by its sidecar; the step's total is their sum.
    for step in verdict["steps"]:
        machines = {m["instance"]: m for m in step["generator_machines"]}
        assert set(sidecars) <= set(machines), step
        for url in sidecars:
            assert machines[url]["procs"] == 1 and machines[url]["cores_available"] == 1, machines[url]
            assert machines[url]["cpu_cores"] > 0, machines[url]  # its worker sent this step's requests
        assert step["generator_cpu_cores"] == pytest.approx(sum(m["cpu_cores"] for m in machines.values()), abs=1e-3)
    assert verdict["measurement_valid"] is True, output
    busiest = next(line for line in verdict["summary"] if line.startswith("note: generator CPU per load machine"))
    assert all(f"{url} " in busiest for url in sidecars), busiest

    # Both workers took load (the master sends none), and its exporter counted all of it.
    assert "to 2 ready workers" in (run_dir / "logs" / "locust.log").read_text()
    for worker in workers:
        assert worker.wait(timeout=30) == 0, worker.log()  # told to quit by the master at the end
    with open(run_dir / "locust_stats.csv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["Name"] == "Aggregated")
    last = read_samples(run_dir / "samples.jsonl").scrapes("locust")[-1]
    assert int(row["Request Count"]) > 0
    assert scrape_value(last, "locust_requests_total") == int(row["Request Count"])
    assert (scrape_value(last, "locust_request_failures_total") or 0) == int(row["Failure Count"])
    assert scrape_value(last, "locust_workers") is not None
    assert_all_gone(lab_pids(run_dir))


@pytest.mark.timeout(120)
def test_one_of_two_remote_workers_fails_fast_naming_1_of_2(spawn, tmp_path):
    # 15 s: long enough for the one worker to import Locust and connect on a busy machine.
    lab = start_lab(spawn, tmp_path, "--remote-workers", "2", "--workers-timeout", "15")
    start_worker(spawn, printed_command(lab), "worker-1")
    started = time.monotonic()
    code = lab.wait(timeout=90)
    output = lab.log()
    assert code == 1, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "1 of 2 remote Locust workers connected within 15 s" in errors[0], output
    assert "--master-bind" in errors[0] and "firewall" in errors[0]
    assert time.monotonic() - started < 60, output
    assert "Traceback" not in output
    assert_all_gone(lab_pids(run_dir_of(lab)))


@pytest.mark.timeout(180)
def test_the_last_remote_worker_lost_mid_run_stops_the_run_with_a_partial_verdict(spawn, tmp_path):
    # Its machine dies: no goodbye. Locust's master marks it missing after three missed heartbeats
    # and, as it was the last one, stops its test at once (so the count never shows a running test
    # short of workers: the master's own log line says it). With more workers it would run on with
    # fewer users than each step asks for; test_lost_worker_* below check that judgement.
    out = tmp_path / "reports"
    lab = spawn([*LOADLAB, *SHORT, "--out", str(out), "--remote-workers", "1", "--", "--step-users", "5",
                 "--max-users", "50"], name="loadlab", env=ENV)
    worker = start_worker(spawn, printed_command(lab), "worker-1")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # until the load runs: a part to judge
        history = next(out.glob("*/locust_stats_history.csv"), None)
        if history is not None and any(r.get("User Count") not in (None, "", "0")
                                       for r in csv.DictReader(history.open(newline=""))):
            break
        assert lab.proc.poll() is None, lab.log()
        time.sleep(0.3)
    os.kill(worker.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    code = lab.wait(timeout=90)
    output = lab.log()
    assert code == 1, output
    assert "error: a Locust worker was lost during the test: Locust's master says: Worker " in output
    assert time.monotonic() - killed_at < 45, output
    verdict = json.loads((run_dir_of(lab) / "verdict.json").read_text())
    assert verdict["complete"] is False
    assert verdict["incomplete_reason"].startswith("a Locust worker was lost during the test")
    assert verdict["summary"][0].startswith("PARTIAL verdict"), verdict["summary"]
    assert_all_gone(lab_pids(run_dir_of(lab)))


LOST = re.compile(r"a Locust worker was lost during the test: Locust's master "
                  r"(counts 1 of 2 workers|says: Worker \S+ failed to send heartbeat)")


@pytest.mark.timeout(180)
def test_one_of_two_remote_workers_lost_mid_run_stops_the_run_with_a_partial_verdict(spawn, tmp_path):
    # The master runs on with the other worker (unlike the last one's loss above): only the lab's
    # watch stops the run, from the master's worker count (1 of 2 while its test runs) or its
    # "missing" log line, whichever it reads first. Nothing here is timed against a truth: not serial.
    out = tmp_path / "reports"
    lab = start_lab(spawn, tmp_path, "--remote-workers", "2", "--workers-timeout", "60")
    command = printed_command(lab)
    workers = [start_worker(spawn, command, f"worker-{i}") for i in (1, 2)]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the second step runs: the first is whole, a part to judge
        history = next(out.glob("*/locust_stats_history.csv"), None)
        users = {r.get("User Count") for r in csv.DictReader(history.open(newline=""))} if history else set()
        if "10" in users:
            break
        assert lab.proc.poll() is None, lab.log()
        time.sleep(0.3)
    else:
        pytest.fail(f"the hunt never reached its second step (10 users):\n{lab.log()}")
    os.kill(workers[0].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    code = lab.wait(timeout=90)
    output = lab.log()
    assert code == 1, output
    assert "2 of 2 remote workers connected" in output, output
    assert time.monotonic() - killed_at < 45, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and LOST.search(errors[0]), output
    verdict = json.loads((run_dir_of(lab) / "verdict.json").read_text())
    assert verdict["complete"] is False, output
    assert LOST.match(verdict["incomplete_reason"]), verdict["incomplete_reason"]
    assert verdict["summary"][0].startswith("PARTIAL verdict"), verdict["summary"]
    # No capacity as if measured: the part that ran (5 and 10 users, a cheap hash) met the SLO, so the
    # verdict gives a lower bound ("at least ..."), never "capacity: N req/s".
    assert verdict["breaking_point_reached"] is False, verdict["summary"]
    assert not any(line.startswith("capacity: ") for line in verdict["summary"]), verdict["summary"]
    assert verdict["summary"][1].startswith("breaking point not reached") and "(at least " in verdict["summary"][1]
    assert all(s["users"] <= 10 for s in verdict["steps"]), verdict["steps"]
    assert "Traceback" not in output
    assert workers[1].wait(timeout=30) == 0, workers[1].log()  # the survivor: told to quit by the master
    assert_all_gone(lab_pids(run_dir_of(lab)))


# --- `loadlab up --remote-workers`: the web UI's lab waits for its load machines the same way ---

UP = ["up", "login-step", "--free-ports", "--prometheus", "off", "--target-workers", "1", "--hash-profile", "lab"]


def start_up(spawn, tmp_path: Path, *args: str) -> ManagedProcess:
    return spawn([*LOADLAB, *UP, "--out", str(tmp_path / "reports"), *args], name="loadlab-up", env=ENV)


@pytest.mark.timeout(120)
def test_up_without_its_remote_worker_stops_naming_0_of_1(spawn, tmp_path):
    lab = start_up(spawn, tmp_path, "--remote-workers", "1", "--workers-timeout", "3")
    command = printed_command(lab)
    code = lab.wait(timeout=90)
    output = lab.log()
    assert code == 1, output
    assert " --worker --master-host 127.0.0.1 --master-port " in command
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: 0 of 1 remote Locust workers connected within 3 s: "
                                                     "check that each load machine runs"), output
    assert "--master-bind" in errors[0] and "firewall" in errors[0]
    assert "locust UI" not in output  # its URL is printed only once the workers are there
    assert "Traceback" not in output
    assert_all_gone(lab_pids(run_dir_of(lab)))


@pytest.mark.timeout(150)
def test_up_with_its_remote_worker_serves_the_ui_and_stops_on_ctrl_c_leaving_nothing(spawn, tmp_path):
    lab = start_up(spawn, tmp_path, "--remote-workers", "1", "--workers-timeout", "60")
    worker = start_worker(spawn, printed_command(lab), "worker-1")
    deadline = time.monotonic() + 90
    while not (ui := re.search(r"^locust UI\s+(http://127\.0\.0\.1:\d+)", lab.log(), re.M)):
        assert lab.proc.poll() is None, lab.log()
        assert time.monotonic() < deadline, f"no web UI URL in 90 s:\n{lab.log()}"
        time.sleep(0.3)
    output = lab.log()
    assert "workers    1 of 1 remote workers connected\n" in output, output
    url = ui.group(1)
    for page in (url, f"{url}/lab"):
        with urllib.request.urlopen(page, timeout=10) as response:
            assert response.status == 200, page
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:  # the master counts the worker
        assert re.search(r"^locust_workers 1(\.0)?$", response.read().decode(), re.M)
    os.kill(lab.pid, signal.SIGINT)  # Ctrl-C
    code = lab.wait(timeout=90)
    output = lab.log()
    assert code == 130, output
    assert "stopped every component this run started" in output and "Traceback" not in output, output
    assert worker.wait(timeout=30) == 0, worker.log()  # told to quit by the master as it stopped
    assert_all_gone(lab_pids(run_dir_of(lab)))


def test_lost_worker_is_judged_by_the_count_while_the_test_runs_and_by_the_masters_log():
    from loadlab.fleet import MasterCount, lost_worker

    assert lost_worker(MasterCount(workers=2, running=True), 2) is None
    assert lost_worker(MasterCount(workers=1, running=False), 2) is None  # the test ended: workers quit
    assert "counts 1 of 2 workers" in (lost_worker(MasterCount(workers=1, running=True), 2) or "")
    said = "Worker w1 failed to send heartbeat, setting state to missing."
    assert said in (lost_worker(MasterCount(workers=0, running=False), 1, said) or "")


def test_the_masters_missing_line_is_read_once_complete(tmp_path):
    from loadlab.fleet import MissingLog

    log = tmp_path / "locust.log"
    log.write_text("[2026-12-01 22:58:40,000] vm/INFO/locust.runners: Shape test updating to 10 users\n")
    watch = MissingLog(log)
    assert watch.check() is None
    with log.open("a") as fh:
        fh.write("[2026-12-01 22:58:45,722] vm/INFO/locust.runners: Worker vm_50 failed to send heartbeat, "
                 "setting state to")  # not yet a whole line
    assert watch.check() is None
    with log.open("a") as fh:
        fh.write(" missing.\n")
    assert watch.check() == "Worker vm_50 failed to send heartbeat, setting state to missing"


def test_master_bind_that_is_not_this_machine_is_one_line(tmp_path):
    proc = subprocess.run([*LOADLAB, *SHORT, "--out", str(tmp_path), "--remote-workers", "1",
                           "--master-bind", "192.0.2.1"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **ENV})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("loadlab run: error: --master-bind 192.0.2.1 (192.0.2.1) is not an address of "
                                  "this machine"), proc.stderr
    assert not any(tmp_path.iterdir())  # nothing started, no run directory


# --- the verdict judges each load machine (no processes: the steps of the operational-law model) ---

LOAD_MACHINES = ("http://10.0.0.7:9256/metrics", "http://10.0.0.8:9256/metrics")


def _fleet_steps(busy_machine_cpu: float) -> list:
    """Steps whose generator fleet has 3 usable cores and uses 1.2 in all (40 %): one machine at
    `busy_machine_cpu` of its 1 core, the other and the master nearly idle."""
    steps = model_steps(list(range(4, 48, 4)), target_cpu_cores=0.5, target_cores_available=2.0,
                        generator_cpu_cores=1.2, generator_cores_available=3.0)
    for step in steps:
        step.generator_machines = [
            {"instance": generators.MASTER, "cpu_cores": 0.05, "cores_available": 1.0},
            {"instance": LOAD_MACHINES[0], "cpu_cores": busy_machine_cpu, "cores_available": 1.0},
            {"instance": LOAD_MACHINES[1], "cpu_cores": 0.2, "cores_available": 1.0}]
    return steps


def test_one_saturated_load_machine_invalidates_the_measurement_and_is_named():
    verdict = analyze_steps(_fleet_steps(busy_machine_cpu=0.97), DEFAULT_THRESHOLDS).to_dict()
    assert verdict["limiting_resource"] == "generator_cpu"
    assert verdict["measurement_valid"] is False
    assert LOAD_MACHINES[0] in verdict["limiting_resource_basis"]
    assert LOAD_MACHINES[1] not in verdict["limiting_resource_basis"]
    assert verdict["signals"][0]["signal"] == "generator_cpu"


def test_a_fleet_with_spare_cpu_on_every_machine_stays_valid():
    verdict = analyze_steps(_fleet_steps(busy_machine_cpu=0.5), DEFAULT_THRESHOLDS).to_dict()
    assert verdict["measurement_valid"] is True
    assert verdict["limiting_resource"] == "concurrency"


def test_remote_workers_without_generator_sidecars_never_claim_spare_generator_cpu():
    steps = model_steps(list(range(4, 48, 4)), target_cpu_cores=0.3, target_cores_available=2.0,
                        generator_cpu_cores=0.1, generator_cores_available=1.0)  # the master's alone
    notes = generators.apply(steps, Samples(), {"remote_workers": 2})
    verdict = analyze_steps(steps, DEFAULT_THRESHOLDS).to_dict()
    assert all(s["generator_cpu_cores"] is None for s in verdict["steps"])
    assert "generator's CPU was not sampled" in verdict["limiting_resource_basis"]
    assert "--generator-sidecar" in notes[0]


def test_a_load_machine_unknown_at_a_step_before_the_knee_is_no_spare_generator_cpu():
    steps = _fleet_steps(busy_machine_cpu=0.5)
    steps[1].generator_machines[2]["cpu_cores"] = None  # its sidecar went silent during the 8-user hold
    steps[1].generator_cpu_cores = steps[1].generator_cores_available = None  # as generators.apply sums it
    verdict = analyze_steps(steps, DEFAULT_THRESHOLDS)
    assert verdict.limiting_resource == "concurrency", verdict.limiting_resource_basis
    assert "the generator had CPU to spare" not in verdict.limiting_resource_basis
    assert "the generator's CPU is unknown at 8 users, so a generator limit is not ruled out" \
        in verdict.limiting_resource_basis


def test_the_printed_worker_command_carries_the_suite_variables_and_no_secret():
    from loadlab.fleet import worker_command, worker_env

    env = worker_env({"LOGIN_USERS": "10", "LOCUST_STEP_USERS": "5", "LOCUST_WEB_PASSWORD": "s3cret",
                      "LAB_ADMIN_TOKEN": "t0ken", "HOME": "/root"}, {"SLO_P95_MS": "300.0"})
    line = worker_command(["-f", "/co/locust_tests/scenarios/login_test.py", "--host", "http://10.0.0.5:8000"],
                          env, "10.0.0.9", 5557, "/co")
    assert line == ("PYTHONPATH=/co LOGIN_USERS=10 LOCUST_STEP_USERS=5 SLO_P95_MS=300.0 locust -f "
                    "/co/locust_tests/scenarios/login_test.py --host http://10.0.0.5:8000 --worker "
                    "--master-host 10.0.0.9 --master-port 5557")


def test_a_load_machine_without_samples_for_a_step_is_named_not_judged_idle():
    steps = _fleet_steps(busy_machine_cpu=0.3)
    steps[-1].generator_machines[2]["cpu_cores"] = None  # its sidecar went silent during the last hold
    notes = generators.busiest(steps), *generators.unknown(steps)
    assert notes[1] == (f"note: no generator CPU from {LOAD_MACHINES[1]} during the steps at {steps[-1].users} users: "
                        f"a saturated load generator there is not ruled out")


@pytest.mark.parametrize("args, message", [
    (["--generator-sidecar", "http://127.0.0.1:9"],
     "loadlab run: error: --generator-sidecar reads a sidecar on a load machine of --remote-workers: pass "
     "--remote-workers N"),
    (["--remote-workers", "1", "--generator-sidecar", "http://127.0.0.1:9"],
     "loadlab run: error: --generator-sidecar http://127.0.0.1:9/metrics does not answer"),
    (["--remote-workers", "1", "--generator-sidecar", "not-a-url"],
     "loadlab run: error: --generator-sidecar 'not-a-url' is not a URL"),
], ids=["without-remote-workers", "not-answering", "not-a-url"])
def test_a_bad_generator_sidecar_is_one_line_before_anything_starts(tmp_path, args, message):
    proc = subprocess.run([*LOADLAB, *SHORT, "--out", str(tmp_path / "reports"), *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **ENV})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "reports").exists()  # nothing started, no run directory


# --- what the console says about the load machines (no processes: a Lab whose sampler is a stub) ---


class _Changes:
    """The sampler's `changes()`, as given."""

    def __init__(self, *changes: tuple) -> None:
        self.pending = list(changes)

    def changes(self) -> list[tuple]:
        out, self.pending = self.pending, []
        return out


def test_a_load_machines_sidecar_going_silent_is_said_with_its_source_and_since_when():
    out = io.StringIO()
    lab = Lab(LabOptions("login-step", remote_workers=2, generator_sidecars=list(LOAD_MACHINES)), out)
    since = time.time() - 5  # silent for longer than a slow scrape
    lab.sampler = _Changes(("generator_sidecar_2", False, since, "URLError: refused", None))  # type: ignore[assignment]
    lab.report_remote_sources(tty=False)
    said = out.getvalue()
    assert said.startswith(f"generator_sidecar_2 {LOAD_MACHINES[1]} stopped answering at "
                           f"{time.strftime('%H:%M:%S', time.localtime(since))} (URLError: refused)"), said
    assert "no CPU from that load machine, so a generator limit there is not ruled out" in said
    lab.sampler = _Changes(("generator_sidecar_2", True, since + 7, "", since))  # type: ignore[assignment]
    lab.report_remote_sources(tty=False)
    assert f"generator_sidecar_2 {LOAD_MACHINES[1]} answers again at" in out.getvalue()


@pytest.mark.parametrize("bind, noted", [("127.0.0.1", True), ("0.0.0.0", False)])
def test_a_loopback_master_is_noted_before_waiting_for_remote_workers(monkeypatch, bind, noted):
    out = io.StringIO()
    lab = Lab(LabOptions("login-step", remote_workers=1, master_bind=bind), out)
    lab.ports = {"master": 5557, "exporter": 9646}
    lab._locust_master = types.SimpleNamespace(poll=lambda: None)  # type: ignore[assignment]
    monkeypatch.setattr(fleet, "wait_for_workers", lambda *args: None)
    lab.wait_for_remote_workers()
    lines = out.getvalue().splitlines()
    note = ("workers    note: Locust's master listens on loopback only (--master-bind 127.0.0.1): workers on other "
            "machines cannot reach it; pass --master-bind <this machine's address> (no authentication there: see README)")
    assert (note in lines) is noted, lines
    assert lines[-1].startswith("workers    waiting up to")  # the note comes first
