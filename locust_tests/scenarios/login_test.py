"""Login load: simulated users log in with test accounts seeded before the load starts.

The request and the answer that counts as a login are the suite's settings (LOGIN_ENDPOINT,
LOGIN_BODY, LOGIN_OK_STATUS, LOGIN_TOKEN_FIELD; seeding: REGISTRATION_*), so another API's
contract needs no code change (locust_tests/config/test_config.py).

    locust -f locust_tests/scenarios/login_test.py --users 500 --spawn-rate 50 --run-time 10m
    locust -f locust_tests/scenarios/login_test.py --headless --scenario baseline   # stress, breaking-point, step, rate-step
    locust -f locust_tests/scenarios/login_test.py --headless --arrival-rate 30 --run-time 1m   # open model
"""

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, installed or not

from locust import FastHttpUser, between, task  # noqa: E402

from locust_tests.config import test_config as cfg  # noqa: E402
from locust_tests.plugins import arrivals, cleanup, exporter, labtab, preflight, seeding, shapes, testdata, webauth  # noqa: E402,F401
from locust_tests.plugins.checks import expect_token  # noqa: E402

ACCOUNTS = testdata.load_users(cfg.TEST_USERS_FILE, limit=cfg.LOGIN_USERS)
shapes.use_presets("login")
preflight.probe_with(preflight.login_probe(ACCOUNTS[0]))  # seed one, log in once: before any load
seeding.seed_before_test(ACCOUNTS)  # once, from the master, before any user starts
cleanup.remove_after_test(testdata.DATA_PREFIX)  # when LAB_ADMIN_TOKEN is set
_accounts = itertools.cycle(ACCOUNTS)


class LoggingInUser(FastHttpUser):
    host = cfg.HOST
    wait_time = between(cfg.MIN_WAIT_TIME / 1000, cfg.MAX_WAIT_TIME / 1000)

    def on_start(self):
        self.credentials = cfg.LOGIN_BODY.render(testdata.request_fields(next(_accounts)))  # LOGIN_BODY

    @task
    def login(self):
        with self.client.post(cfg.LOGIN_ENDPOINT, json=self.credentials, catch_response=True) as response:
            expect_token(response, cfg.LOGIN_OK_STATUS, cfg.LOGIN_TOKEN_FIELD)
