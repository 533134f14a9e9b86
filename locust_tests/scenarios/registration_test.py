"""Registration load: every simulated user signs up fresh, unique accounts.

The request and the statuses that count as success are the suite's settings
(REGISTRATION_ENDPOINT, REGISTRATION_BODY, REGISTRATION_OK_STATUS in locust_tests/config/test_config.py).

    locust -f locust_tests/scenarios/registration_test.py --users 50 --spawn-rate 10 --run-time 5m
    locust -f locust_tests/scenarios/registration_test.py --headless --scenario normal   # heavy, spike, step, rate-step
    locust -f locust_tests/scenarios/registration_test.py --headless --arrival-rate 10 --run-time 1m   # open model
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, installed or not

from faker import Faker  # noqa: E402
from locust import FastHttpUser, between, task  # noqa: E402

from locust_tests.config import test_config as cfg  # noqa: E402
from locust_tests.plugins import arrivals, cleanup, exporter, labtab, preflight, runid, shapes, webauth  # noqa: E402,F401 (listeners)
from locust_tests.plugins.checks import expect_registered  # noqa: E402
from locust_tests.plugins.testdata import registration_user, request_fields  # noqa: E402

shapes.use_presets("registration")
preflight.probe_with(preflight.registration_probe())  # register one user before any load
cleanup.remove_after_test(runid.users_prefix)  # this run's users, when LAB_ADMIN_TOKEN is set


class RegisteringUser(FastHttpUser):
    host = cfg.HOST
    wait_time = between(cfg.MIN_WAIT_TIME / 1000, cfg.MAX_WAIT_TIME / 1000)
    fake = Faker()

    @task
    def register(self):
        user = registration_user(runid.next_username(self.environment), self.fake)
        body = cfg.REGISTRATION_BODY.render(request_fields(user))  # REGISTRATION_BODY's placeholders
        with self.client.post(cfg.REGISTRATION_ENDPOINT, json=body, catch_response=True) as response:
            expect_registered(response, cfg.REGISTRATION_OK_STATUS)
