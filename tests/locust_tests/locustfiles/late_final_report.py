"""The registration scenario, with load processes whose final report reaches the master late.

A worker sends its final report once its users have stopped. This one first blocks 1.5 s (the
whole process, as a busy machine can), so the report comes well after the 0.5 s Locust's own
master waits before it quits (locust#1426)."""

import time

from locust import events
from locust.runners import WorkerRunner

from locust_tests.scenarios.registration_test import *  # noqa: F401,F403 (the scenario, its plugins)

LATE_S = 1.5


@events.test_stop.add_listener
def _report_late(environment, **_):
    if isinstance(environment.runner, WorkerRunner):
        time.sleep(LATE_S)  # not gevent.sleep: nothing of this process runs meanwhile
