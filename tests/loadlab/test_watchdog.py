"""The watchdog kills what `loadlab` started when `loadlab` dies, grandchildren included, and touches
nothing when `loadlab` ended normally. Real processes that ignore SIGTERM, so only its SIGKILL ends them."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from tests.helpers import REPO_ROOT

# A "component" that ignores SIGTERM and forks a child that does too, then prints the child's PID.
STUBBORN = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)']); "
            "print(child.pid, flush=True); time.sleep(120)")


@pytest.fixture
def stubborn_tree():
    """(component, its child) as psutil processes; both killed by PID at the end, pass or fail."""
    proc = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    child = psutil.Process(int(proc.stdout.readline()))
    root = psutil.Process(proc.pid)
    yield root, child
    for p in (child, root):
        try:
            p.kill()
        except psutil.Error:
            pass
    proc.wait(timeout=10)


def _watchdog(*pids: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "loadlab.watchdog", "--grace", "1"], cwd=REPO_ROOT,
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    proc.stdin.write("".join(f"{pid}\n" for pid in pids))
    proc.stdin.flush()
    time.sleep(1.5)  # it notes the tree every 0.5 s
    return proc


def test_when_loadlab_dies_its_components_and_their_children_are_killed(stubborn_tree):
    root, child = stubborn_tree
    watchdog = _watchdog(root.pid)
    assert watchdog.stdin is not None
    watchdog.stdin.close()  # the pipe closes without "done": what loadlab's death looks like
    assert watchdog.wait(timeout=15) == 0
    gone, alive = psutil.wait_procs([child], timeout=5)
    assert not alive and not child.is_running()
    assert root.wait(timeout=5) == -9  # (root is our child: reap it) SIGKILL, though it ignored SIGTERM
    assert "exited without stopping its components: 2 processes still running" in watchdog.stderr.read()


def test_after_done_the_watchdog_touches_nothing(stubborn_tree):
    root, child = stubborn_tree
    watchdog = _watchdog(root.pid)
    assert watchdog.stdin is not None
    watchdog.stdin.write("done\n")
    watchdog.stdin.close()
    assert watchdog.wait(timeout=5) == 0
    time.sleep(1.5)  # longer than its grace
    assert root.is_running() and child.is_running()
