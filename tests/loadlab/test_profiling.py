"""`--profile`: the hot spot the verdict names, against servers whose hot spot is known.

Real runs (`loadlab run login-step --profile`, real py-spy on real gunicorn workers): a server
burning its service time in `ground_truth_cpu_hotspot`, one sleeping it in
`ground_truth_wait_hotspot`, one whose threads queue on a semaphore, the bundled target with its default (scrypt) password hash, a target
py-spy cannot read; the report with its flame graph in headless Chromium. Then the classification
itself on stacks made up for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from loadlab import profiling, stacks
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS
from loadlab.steps import StepSummary
from loadlab.verdict import Verdict
from tests.helpers import PYTHON, free_port, require_binary, wait_for_http
from tests.loadlab.conftest import assert_all_gone, run_loadlab, step_table

THINK = {"MIN_WAIT_TIME": "400", "MAX_WAIT_TIME": "600", "LOGIN_USERS": "20"}
# Holds of ~3.5 s (5 s steps): 50 samples/s collects what the default 20 collects in a 9 s hold.
PROFILE = ["--profile", "--profile-rate", "50"]
GROUND_TRUTH = "tests/loadlab/ground_truth_app.py"


def profiled_hunt(tmp_path, target: list[str], locust: list[str], env: dict[str, str], timeout: float = 200):
    run = run_loadlab(["run", "login-step", *target, "--prometheus", "off", *PROFILE, "--", *locust],
                      tmp_path / "reports", env=env, timeout=timeout)
    assert run.returncode == 0, run.output
    assert_all_gone(run.started_pids())  # py-spy's processes included
    verdict = run.verdict()
    print("\n" + step_table(verdict) + "\n" + json.dumps(verdict["hotspots"], indent=1))
    return run, verdict


def top(verdict: dict, kind: str) -> dict:
    found = [h for h in verdict["hotspots"] if h["kind"] == kind]
    assert found, f"no {kind} hot spot:\n{step_table(verdict)}\n{verdict['profiles']}"
    return found[0]


def gt_target(gt) -> list[str]:
    return ["--host", gt.url, "--target-pid", str(gt.pid), "--target-workers", str(gt.workers)]


@pytest.mark.serial  # a profiled hunt that must reach its break: run alone
@pytest.mark.timeout(260)
def test_cpu_burning_server_hot_spot_is_its_burning_function(ground_truth, tmp_path):
    # N* = 11 users and p95 passes 500 ms near 16; 20 leaves room to confirm the knee on a busy host
    # (a CI run capped at 14 saw throughput still creeping up at its last step: no knee, no break).
    gt = ground_truth(workers=1, service_ms=50, mode="burn")
    run, verdict = profiled_hunt(tmp_path, gt_target(gt),
                                 ["--step-users", "2", "--step-time", "5s", "--max-users", "20"], THINK)
    assert verdict["breaking_point_reached"], step_table(verdict)
    profiles = verdict["profiles"]
    assert profiles["status"] == "ok" and profiles["at"] in ("knee", "break"), profiles
    hot = top(verdict, "cpu")
    assert hot["function"] == "ground_truth_cpu_hotspot" and hot["file"] == GROUND_TRUTH, hot
    assert hot["share"] >= 0.5, hot
    assert hot["under"].startswith("create_app.<locals>.login (tests/loadlab/ground_truth_app.py:"), hot
    assert verdict["summary"].count(profiles["why"]) == 1 and "ground_truth_cpu_hotspot" in profiles["why"]
    # The files a user opens: per-step collapsed stacks, and the flame graph of that step.
    d = run.run_dir
    assert (d / profiles["flame_graph"]).read_text().lstrip().startswith("<?xml")
    for step in profiles["steps"]:
        assert (d / step["files"]["cpu"]).is_file() and (d / step["files"]["wait"]).is_file()
    assert ':"' not in "".join(p.read_text() for p in (d / "profiles" / "chunks").glob("*.txt"))  # no command lines


@pytest.mark.serial  # a profiled hunt that must reach its break: run alone
@pytest.mark.timeout(260)
def test_sleeping_server_hot_spot_is_the_wait(ground_truth, tmp_path):
    gt = ground_truth(workers=4, service_ms=100, mode="sleep")
    _, verdict = profiled_hunt(tmp_path, gt_target(gt),
                               ["--step-users", "6", "--step-time", "5s", "--max-users", "36"], THINK)
    assert verdict["breaking_point_reached"], step_table(verdict)
    hot = top(verdict, "wait")
    assert hot["function"] == "ground_truth_wait_hotspot" and hot["file"] == GROUND_TRUTH, hot
    assert hot["share"] >= 0.5, hot  # of the time inside requests (100 ms of ~103 ms)
    # Waiting is what the headline names: the verdict found a concurrency limit, not a CPU one.
    assert "waiting in ground_truth_wait_hotspot" in verdict["profiles"]["why"], verdict["profiles"]
    # A worker waiting for its next connection is idle, not a hot spot.
    assert not [h for h in verdict["hotspots"] if h["kind"] == "wait" and "gunicorn/" in h["file"]], verdict["hotspots"]


@pytest.mark.serial  # a profiled hunt that must reach its break: run alone
@pytest.mark.timeout(260)
def test_lock_contention_hot_spot_is_the_semaphore(ground_truth, tmp_path):
    # gthread workers whose threads queue on one semaphore per process, held while burning S of CPU.
    gt = ground_truth(workers=1, service_ms=30, mode="lock")
    _, verdict = profiled_hunt(tmp_path, gt_target(gt),
                               ["--step-users", "3", "--step-time", "5s", "--max-users", "24"], THINK)
    assert verdict["breaking_point_reached"], step_table(verdict)
    hot = top(verdict, "wait")
    # `with one_at_a_time:` -> Semaphore.acquire -> Condition.wait, where the C lock is taken.
    assert (hot["function"], hot["file"]) == ("Condition.wait", "threading.py"), hot
    assert hot["under"].startswith("create_app.<locals>.login (tests/loadlab/ground_truth_app.py:"), hot
    assert top(verdict, "cpu")["function"] == "ground_truth_cpu_hotspot"  # what the holder does


@pytest.fixture(scope="module")
def bundled_run(tmp_path_factory):
    """The bundled target, 2 workers, default hash profile (scrypt N=2^14, ~50 ms a hash), profiled."""
    out = tmp_path_factory.mktemp("profiled")
    env = {"LOGIN_USERS": "10", "MIN_WAIT_TIME": "200", "MAX_WAIT_TIME": "400"}
    return run_loadlab(["run", "login-step", "--target-workers", "2", "--prometheus", "off", *PROFILE, "--",
                        "--step-users", "4", "--step-time", "5s", "--max-users", "28"], out, env=env, timeout=200)


@pytest.mark.serial  # a profiled hunt that must reach its break: run alone
@pytest.mark.timeout(260)
def test_bundled_target_hot_spot_is_the_password_hash(bundled_run):
    assert bundled_run.returncode == 0, bundled_run.output
    assert_all_gone(bundled_run.started_pids())
    verdict = bundled_run.verdict()
    print("\n" + step_table(verdict) + "\n" + json.dumps(verdict["hotspots"], indent=1))
    assert verdict["breaking_point_reached"], step_table(verdict)
    hot = top(verdict, "cpu")
    # werkzeug's _hash_internal is the Python line that calls hashlib.scrypt (C, so it is the leaf).
    assert hot["file"] == "werkzeug/security.py" and hot["function"] == "_hash_internal", hot
    # Under the app's own login code: since the hardening, the hash runs in PasswordChecks.verify
    # (one check per method in use), called by login; the nearest app frame is that one.
    assert "(target_app/auth.py:" in hot["under"], hot
    assert hot["share"] >= 0.5, hot


@pytest.mark.serial  # reads the serial test's bundled_run: one run, not two
@pytest.mark.timeout(120)
def test_report_with_flame_graph_renders_in_headless_chromium(bundled_run, tmp_path):
    chromium = require_binary("chromium")
    assert bundled_run.returncode == 0, bundled_run.output
    report = bundled_run.run_dir / "report.html"
    html = report.read_text()
    assert "<svg" in html and "http://" not in html.split('id="profiles"', 1)[1].split("<svg", 1)[0]
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=90)
    dom = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The flame graph drew (the report's own check gives it class "drawn"), with the hash in it.
    assert 'class="flame drawn"' in dom and 'class="flame empty"' not in dom, dom[:3000]
    assert "_hash_internal" in dom and 'id="hotspots"' in dom and 'id="profile-diff"' in dom
    # Every chart decoded: the five on one time axis and the throughput-against-users curve.
    assert dom.count('class="chart decoded"') == html.count('<img class="chart"') == 6 and 'class="chart broken"' not in dom
    assert not [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line], proc.stderr


@pytest.mark.timeout(200)
def test_a_target_py_spy_cannot_read_leaves_the_run_going_and_says_profiles_are_missing(ground_truth, spawn, tmp_path):
    gt = ground_truth(workers=2, service_ms=20, mode="sleep")
    not_python = spawn(["sleep", "300"], name="not-python")
    run = run_loadlab(["run", "login-step", "--host", gt.url, "--target-pid", str(not_python.pid), "--prometheus", "off",
                       "--profile", "--", "--step-users", "2", "--step-time", "3s", "--max-users", "4"],
                      tmp_path / "reports", env=THINK, timeout=150)
    assert run.returncode == 0, run.output
    said = [line for line in run.output.splitlines() if line.startswith("profiler")]
    assert len(said) == 1 and f"py-spy cannot sample pid {not_python.pid}" in said[0], run.output
    verdict = run.verdict()
    assert verdict["steps"] and verdict["hotspots"] == []
    assert verdict["profiles"]["status"] == "missing" and "py-spy cannot sample" in verdict["profiles"]["reason"]
    assert any(line.startswith("profiles missing: py-spy cannot sample") for line in verdict["summary"])
    assert not (run.run_dir / "profiles").exists()


def remote_sidecar(spawn, pid: int, *flags: str) -> str:
    """A sidecar beside the server, as on the API's machine: the lab gets its URL, never the PID."""
    port = free_port()
    car = spawn([PYTHON, "-m", "monitoring.sidecar", "--port", str(port), "--group-pid", f"target={pid}", *flags],
                name="remote-sidecar")
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for_http(url, proc=car)
    return url


@pytest.mark.serial  # a profiled hunt that must reach its break: run alone
@pytest.mark.timeout(260)
def test_a_remote_servers_hot_spot_comes_from_the_sidecar_beside_it(ground_truth, spawn, tmp_path):
    # The CPU-burning server of the first proof, profiled by its sidecar's /profile (--allow-profiling):
    # no --target-pid, so no local py-spy.
    gt = ground_truth(workers=1, service_ms=50, mode="burn")
    sidecar = remote_sidecar(spawn, gt.pid, "--allow-profiling")
    # 6 s steps: each recording ends ~1 s before the step is expected to, and a 5 s step's holds ~2 s:
    # too few samples for the knee on a busy host.
    run, verdict = profiled_hunt(tmp_path, ["--host", gt.url, "--target-sidecar", sidecar, "--target-workers", "1"],
                                 ["--step-users", "2", "--step-time", "6s", "--max-users", "20"], THINK)
    assert "profiler   py-spy by the sidecar at http://127.0.0.1:" in run.output, run.output
    assert run.meta()["profiling"]["sidecar"] == sidecar.replace("/metrics", "/profile")
    assert verdict["breaking_point_reached"], step_table(verdict)
    assert verdict["profiles"]["status"] == "ok", verdict["profiles"]
    hot = top(verdict, "cpu")
    assert hot["function"] == "ground_truth_cpu_hotspot" and hot["file"] == GROUND_TRUTH, hot
    assert hot["share"] >= 0.5, hot
    chunks = profiling.load_chunks(run.run_dir / "profiles")
    assert all(c["sidecar"] == run.meta()["profiling"]["sidecar"] for c in chunks), chunks
    # The steps profiled from the sidecar's recordings of their holds: the knee's, and all but a couple
    # (a recording goes to the step it overlaps most; in 5 s steps one may straddle two, and the one
    # under way when the hunt stops runs past the last step's end).
    profiled = [p["users"] for p in verdict["profiles"]["steps"]]
    assert verdict["profiles"]["step_users"] in profiled, (verdict["profiles"], step_table(verdict))
    assert len(profiled) >= len(verdict["steps"]) - 2, (verdict["profiles"], step_table(verdict))


def test_a_sidecar_that_does_not_profile_is_said_before_the_run(spawn):
    # Asked without ?seconds, a sidecar started with --allow-profiling answers 400, one without 403.
    idle = spawn(["sleep", "300"], name="server")
    off = remote_sidecar(spawn, idle.pid)
    with pytest.raises(stacks.ProfilerUnavailable, match=r"answered 403: profiling is off: start the sidecar with "
                                                          r"--allow-profiling"):
        profiling.check_remote(profiling.profile_url(off))
    profiling.check_remote(profiling.profile_url(remote_sidecar(spawn, idle.pid, "--allow-profiling")))
    with pytest.raises(stacks.ProfilerUnavailable, match="does not answer"):
        profiling.check_remote(f"http://127.0.0.1:{free_port()}/profile")


def test_remote_recordings_start_after_the_transient_and_end_before_the_step_does(tmp_path):
    p = profiling.RemoteStepProfiler(tmp_path, "http://127.0.0.1:1/profile", "target", lambda: None, 0.3, poll_s=0.5,
                                     lag_s=1.0)
    p.overhead_s = 0.3  # the sidecar's last answer came 0.3 s after its recording's length
    steps = profiling.StepTracker()
    assert steps.update(10.0, 100.0) and not steps.update(10.0, 101.0)
    assert p.chunk_seconds(steps, 100.5) is None  # in the first step's transient (1 s, its length unknown)
    assert p.chunk_seconds(steps, 101.0) == 1.0
    assert p.chunk_seconds(steps, 105.0) == 2.0  # half as long as the hold so far
    assert p.chunk_seconds(steps, 200.0) == profiling.MAX_REMOTE_CHUNK_S
    assert steps.update(20.0, 110.0) and steps.last_step_s == 10.0
    assert p.chunk_seconds(steps, 112.0) is None  # transient: 3 s of a 10 s step
    # Ending before the step is expected to: less the sampler's lag, a poll and the sidecar's lateness.
    assert p.chunk_seconds(steps, 113.0) == pytest.approx(5.2)
    assert p.chunk_seconds(steps, 117.0) == pytest.approx(1.2)
    assert p.chunk_seconds(steps, 117.5) is None  # too little left
    assert steps.update(30.0, 120.0) and steps.last_step_s == 10.0 and steps.update(40.0, 220.0)
    assert p.chunk_seconds(steps, 250.0) == profiling.MAX_REMOTE_CHUNK_S  # a long hold: several recordings


# ------------------------------------------------------------------ classification on made-up stacks

APP = "/srv/app/shop/views.py"
LIB = "/venv/lib/python3.11/site-packages"
STD = "/usr/lib/python3.11"
WORKER = (f"<module> ({APP}:1)", f"SyncWorker.run ({LIB}/gunicorn/workers/sync.py:125)")
REQUEST = (*WORKER, f"SyncWorker.handle_request ({LIB}/gunicorn/workers/sync.py:180)",
           f"Flask.wsgi_app ({LIB}/flask/app.py:1511)", f"checkout ({APP}:40)")


def made_up(cpu: dict[tuple[str, ...], int], idle: dict[tuple[str, ...], int]) -> profiling.StepProfile:
    """A step whose `cpu` stacks ran and whose `idle` stacks waited (so `all` = cpu + idle)."""
    p = profiling.StepProfile(index=0, users=10)
    p.cpu.update(cpu)
    p.all.update(cpu)
    p.all.update(idle)
    return p


def test_cpu_share_is_self_time_of_all_on_cpu_samples_and_names_the_app_frame():
    hash_stack = (*REQUEST, f"check_password_hash ({LIB}/werkzeug/security.py:120)",
                  f"_hash_internal ({LIB}/werkzeug/security.py:60)")
    p = made_up({hash_stack: 870, (*REQUEST, f"render ({APP}:55)"): 100, WORKER: 30}, {WORKER: 500})
    cpu = profiling.cpu_hotspots(p)
    assert [(h.function, h.file, h.share) for h in cpu[:2]] == [("_hash_internal", "werkzeug/security.py", 0.87),
                                                                ("render", "shop/views.py", 0.1)]
    assert cpu[0].under == "checkout (shop/views.py:40)" and cpu[0].line == 60
    assert profiling.wait_hotspots(p) == []  # the idle worker loop is not a wait inside a request


def test_waits_inside_requests_stand_out_of_the_noise_and_idle_workers_do_not_count():
    sem = (*REQUEST, f"Semaphore.acquire ({STD}/threading.py:479)", f"Condition.wait ({STD}/threading.py:327)")
    # Inside requests: 900 samples waiting on the semaphore, 100 on the CPU; idle workers: 5000.
    p = made_up({(*REQUEST, f"parse ({APP}:30)"): 100}, {sem: 900, WORKER: 5000})
    wait = profiling.wait_hotspots(p)
    assert [(h.function, h.file, h.share, h.under) for h in wait] == [
        ("Condition.wait", "threading.py", 0.9, "checkout (shop/views.py:40)")]
    # A function that ran all the time shows up in `all - cpu` only as noise: no wait hot spot.
    noisy = profiling.StepProfile(index=0, users=10)
    busy = (*REQUEST, f"spin ({APP}:12)")
    noisy.cpu[busy], noisy.all[busy] = 980, 1000
    assert profiling.wait_hotspots(noisy) == [] and profiling.cpu_hotspots(noisy)[0].share == 1.0


def test_diff_lists_what_grew_between_the_lightest_step_and_the_knee():
    light = made_up({(*REQUEST, f"parse ({APP}:30)"): 90, (*REQUEST, f"lookup ({APP}:31)"): 10}, {})
    knee = made_up({(*REQUEST, f"parse ({APP}:30)"): 40, (*REQUEST, f"lookup ({APP}:31)"): 60}, {})
    rows = profiling.share_diff(light, knee)
    assert [(r["function"], r["kind"], r["share_light"], r["share_at"], r["change"]) for r in rows] == [
        ("lookup", "cpu", 0.1, 0.6, 0.5), ("parse", "cpu", 0.9, 0.4, -0.5)]


def test_stored_stacks_carry_no_command_line():
    text = 'process 12:"python app.py --token s3cret";process 14:"python app.py --token s3cret";main (app.py:3) 7\n'
    clean = stacks.sanitize(text)
    assert "s3cret" not in clean and clean == "process 12;process 14;main (app.py:3) 7\n"
    assert stacks.parse_collapsed(clean) == Counter({("process 12", "process 14", "main (app.py:3)"): 7})
    assert profiling.clean(("process 12", "main (app.py:3)")) == ("main (app.py:3)",)


def test_profile_flags_are_checked():
    proc = subprocess.run([sys.executable, "-m", "loadlab.cli", "run", "login-step", "--profile-rate", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--profile-rate" in proc.stderr and "must be above 0" in proc.stderr


def _step(index: int, users: int, start: float) -> StepSummary:
    return StepSummary(index=index, users=users, start=start, hold_start=start + 3, end=start + 9, rps=1.0,
                       rps_median=1.0, requests=10, failures=0, error_ratio=0.0, p50_ms=10.0, p95_ms=20.0,
                       p95_source="locust_histogram")


def test_recordings_go_to_the_step_they_overlap_most(tmp_path):
    verdict = Verdict(steps=[_step(0, 5, 1000.0), _step(1, 10, 1010.0)], thresholds=DEFAULT_THRESHOLDS)
    chunks = tmp_path / "chunks"
    chunks.mkdir()
    leaf = {"a": f"light ({APP}:1)", "b": f"heavy ({APP}:2)", "c": f"between ({APP}:3)"}
    index = []
    for name, start, end in (("a", 1003.0, 1009.5), ("b", 1008.0, 1019.0), ("c", 1009.0, 1021.0)):
        for kind in stacks.KINDS:
            (chunks / f"{name}.{kind}.txt").write_text(f"process 7;<module> ({APP}:0);{leaf[name]} 60\n")
        index.append({"name": name, "start": start, "end": end,
                      "files": {kind: [f"chunks/{name}.{kind}.txt"] for kind in stacks.KINDS}})
    # c overlaps step 1 ([1010, 1020]) for 10 of its 12 s; b for 9 of 11 s; a lies in step 0.
    by_step = profiling.step_profiles(verdict, tmp_path, index)
    assert {i: sorted(p.chunks) for i, p in by_step.items()} == {0: ["a"], 1: ["b", "c"]}
    assert by_step[1].cpu == Counter({(f"<module> ({APP}:0)", leaf["b"]): 60, (f"<module> ({APP}:0)", leaf["c"]): 60})
    # A recording less than half inside any step belongs to none.
    stray = [{"name": "a", "start": 1018.0, "end": 1040.0, "files": index[0]["files"]}]
    assert profiling.step_profiles(verdict, tmp_path, stray) == {}
