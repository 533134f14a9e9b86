"""Processes come and go during a run; the sidecar keeps serving and its counters keep rising."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid

import psutil

from tests.helpers import PYTHON

from .conftest import WORKLOAD, group_cpu, value, wait_until


def test_kill_one_member_start_another(sidecar, workload):
    tag = f"churn-{uuid.uuid4().hex[:8]}"
    car = sidecar("--group", f"churn=--tag {tag}")
    members = [workload("idle", "--tag", tag, "--cpu-seconds", "0.3", name=f"m{i}") for i in range(3)]
    wait_until(lambda: car.procs("churn") == 3, 15, "three members")

    seen: list[float] = []

    def check(expected_procs: int) -> None:
        def ok() -> bool:
            samples = car.scrape()
            seen.append(group_cpu(samples, "churn"))
            return value(samples, "namedprocess_namegroup_num_procs", groupname="churn") == expected_procs
        wait_until(ok, 15, f"num_procs == {expected_procs}")

    wait_until(lambda: group_cpu(car.scrape(), "churn") >= 0.8, 15, "the members' CPU to show")
    check(3)
    # SIGKILL without waiting: the member stays a zombie until reaped, and must already not count.
    os.kill(members[0].pid, signal.SIGKILL)
    check(2)
    try:
        assert psutil.Process(members[0].pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass  # the launcher's own poll() reaped it first (seen once in CI): gone entirely, as below
    members[0].proc.wait(5)  # now reaped: the PID is gone entirely
    check(2)
    # Baseline before the newcomer starts: it burns its 0.3 s at once, possibly before the
    # scrape that first counts it, so only a baseline taken now shows its CPU being added.
    before_newcomer = seen[-1]
    workload("idle", "--tag", tag, "--cpu-seconds", "0.3", name="m3")
    check(3)
    wait_until(lambda: group_cpu(car.scrape(), "churn") >= before_newcomer + 0.25, 15, "the new member's CPU")
    seen.append(group_cpu(car.scrape(), "churn"))

    assert seen == sorted(seen), f"cpu_seconds_total went backwards: {seen}"
    assert seen[-1] >= 1.1  # three members' 0.3 s each, plus the newcomer's
    assert car.proc.proc.poll() is None
    assert "Traceback" not in car.proc.log()


def test_fast_churn_never_breaks_a_scrape_and_cpu_never_goes_backwards(sidecar):
    """Short-lived members started and gone between (and during) scrapes, scraped as fast as possible."""
    tag = f"fastchurn-{uuid.uuid4().hex[:8]}"
    car = sidecar("--group", f"fast=--tag {tag}")
    stop = threading.Event()
    started: list[subprocess.Popen] = []

    def churn() -> None:
        # Each member burns a little CPU and exits; a few overlap at any time.
        script = "import sys,time\nt=time.process_time()\nwhile time.process_time()-t<0.05: pass\n"
        deadline = time.monotonic() + 6
        while not stop.is_set() and time.monotonic() < deadline:
            started.append(subprocess.Popen([PYTHON, "-c", script, "--tag", tag]))
            for proc in started:
                proc.poll()
            time.sleep(0.03)

    thread = threading.Thread(target=churn)
    thread.start()
    values: list[float] = []
    procs: list[float] = []
    try:
        while thread.is_alive():
            samples = car.scrape()
            values.append(group_cpu(samples, "fast"))
            procs.append(value(samples, "namedprocess_namegroup_num_procs", groupname="fast"))
    finally:
        stop.set()
        thread.join()
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert len(values) >= 20
    assert values == sorted(values), "cpu_seconds_total went backwards under churn"
    assert max(procs) >= 1 and values[-1] > 0  # the members were really seen
    wait_until(lambda: car.procs("fast") == 0, 10, "the group to empty")
    assert car.proc.proc.poll() is None
    assert "Traceback" not in car.proc.log()


def test_pid_file_follows_a_restarted_process(sidecar, workload, tmp_path):
    pid_file = tmp_path / "target.pid"
    car = sidecar("--pid-file", f"target={pid_file}")
    assert car.procs("target") == 0  # no file yet: still serving
    first = workload("tree", "--children", "2", name="first")
    pid_file.write_text(f"{first.pid}\n")
    wait_until(lambda: car.procs("target") == 3, 15, "the first target and its two children")
    first.stop()
    second = workload("tree", "--children", "1", name="second")
    pid_file.write_text(str(second.pid))
    wait_until(lambda: car.procs("target") == 2, 15, "the restarted target and its child")
    assert "pid file" in car.proc.log()  # the missing file was reported, once


def test_group_pid_counts_a_tree_once_even_when_two_selectors_match(sidecar, workload):
    tag = f"tree-{uuid.uuid4().hex[:8]}"
    root = workload("tree", "--children", "3", "--tag", tag)
    # The root is selected by PID and by regex, its children by regex and as descendants.
    car = sidecar("--group-pid", f"t={root.pid}", "--group", f"t={tag}", "--group", f"u={tag}")
    wait_until(lambda: car.procs("t") == 4, 15, "root + 3 children")
    samples = car.scrape()
    assert value(samples, "namedprocess_namegroup_num_procs", groupname="u") == 4
    assert value(samples, "namedprocess_namegroup_num_threads", groupname="t") == 4


def test_a_process_that_execs_into_a_match_after_fork_is_picked_up(sidecar, spawn, tmp_path):
    tag = f"exec-{uuid.uuid4().hex[:8]}"
    car = sidecar("--group", f"late=--tag {tag}")
    # A shell that is seen first, then exec()s into the member (what a runner's fork+exec looks like).
    go = tmp_path / "go"
    # The tag comes from the environment so the shell's own command line does not match.
    spawn(["sh", "-c", 'while [ ! -e "$GO" ]; do sleep 0.05; done; exec "$PY" "$WL" idle --tag "$TAG"'],
          name="late", env={"GO": str(go), "PY": PYTHON, "WL": WORKLOAD, "TAG": tag})
    time.sleep(0.3)
    assert car.procs("late") == 0  # seen as a plain shell
    go.write_text("")
    wait_until(lambda: car.procs("late") == 1, 10, "the exec'd process to join")
