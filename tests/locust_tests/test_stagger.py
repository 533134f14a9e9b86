"""The step hunt's users start spread over one think time, where Locust starts them in lockstep.

Real Locust users on a real local runner, in a subprocess (Locust patches the process with gevent;
see conftest.py)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import PYTHON, REPO_ROOT

# Users' first requests timed to 0.2 s and a stop to 0.5 s in one gevent loop: run alone (make test's
# serial group), where no other test's processes take the CPU from it.
pytestmark = pytest.mark.serial

PROBE = r"""
import json, sys, time
import gevent
from locust import User, constant, task
from locust.env import Environment
from locust_tests.plugins.stagger import stagger_starts

case = json.load(sys.stdin)
first_task, on_start_runs = {}, []

class Visitor(User):
    wait_time = constant(1.0)

    def on_start(self):
        on_start_runs.append(id(self))

    @task
    def visit(self):
        first_task.setdefault(id(self), time.monotonic())

class ReturningVisitor(Visitor):  # inherits the changed on_start: must not pause twice
    pass

changed = stagger_starts([Visitor, ReturningVisitor]) if case["stagger"] else []
changed_again = stagger_starts([Visitor, ReturningVisitor]) if case["stagger"] else []
# stop_timeout as the suite sets it (shapes.STOP_TIMEOUT_S): a running user finishes its task first.
env = Environment(user_classes=[case["class"] == "Visitor" and Visitor or ReturningVisitor], stop_timeout=10)
runner = env.create_local_runner()
started = time.monotonic()
runner.start(case["users"], spawn_rate=case["users"])  # Locust starts them all in one instant
gevent.sleep(case["run_s"])
stopped_at = time.monotonic()
runner.stop()
print(json.dumps({"offsets": sorted(t - started for t in first_task.values()), "on_start_runs": len(on_start_runs),
                  "changed": changed, "changed_again": changed_again, "stop_s": time.monotonic() - stopped_at}))
"""


def first_tasks(stagger: bool, users: int = 20, run_s: float = 1.5, user_class: str = "Visitor") -> dict:
    done = subprocess.run([PYTHON, "-c", PROBE], input=json.dumps({"stagger": stagger, "users": users, "run_s": run_s,
                                                                  "class": user_class}),
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(90)
def test_locust_alone_starts_a_steps_users_in_lockstep():
    # What the stagger is for: without it, every user's first request leaves within a few ms.
    out = first_tasks(stagger=False)
    assert len(out["offsets"]) == 20
    assert out["offsets"][-1] - out["offsets"][0] < 0.2, out


@pytest.mark.timeout(90)
@pytest.mark.parametrize("user_class", ["Visitor", "ReturningVisitor"])
def test_staggered_users_start_spread_over_one_think_time(user_class):
    out = first_tasks(stagger=True, user_class=user_class)
    offsets = out["offsets"]
    assert out["changed"] == ["Visitor"] and out["changed_again"] == [], out  # each on_start changed once
    assert len(offsets) == 20 and out["on_start_runs"] == 20, out  # every user ran its own on_start, then a task
    assert offsets[-1] <= 1.3, out  # within one think time (1 s), never two
    # Spread over it rather than bunched: uniform on [0, 1 s], 20 users (a spread below 0.5 s: p < 1e-4).
    assert offsets[-1] - offsets[0] >= 0.5, out
    assert sum(1 for t in offsets if t < 0.5) not in (0, 20), out


@pytest.mark.timeout(90)
def test_a_user_stopped_during_its_pause_stops_at_once_without_a_request():
    out = first_tasks(stagger=True, users=200, run_s=0.05)
    assert len(out["offsets"]) < 200, out  # most were still pausing when stopped
    assert out["stop_s"] < 0.5, out  # not held until their pause ends (up to 1 s) by the stop timeout
