"""The exporter's fast text exposition writes exactly generate_latest's bytes, for real Locust
stats (request names and error texts with quotes, backslashes, newlines and non-ASCII), and falls
back to generate_latest for what it does not handle. Locust runs in a subprocess: importing it
here would monkey-patch pytest's process with gevent."""

from __future__ import annotations

import subprocess

from tests.helpers import PYTHON, REPO_ROOT

COMPARE = r'''
import random
import sys
from types import SimpleNamespace

from locust.stats import RequestStats
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import InfoMetricFamily

from locust_tests.plugins import exposition
from locust_tests.plugins.collector import LocustCollector

NAMES = ["/login", 'quo"te', "back\\slash", "new\nline", "caf\u00e9 \u2603", "/items/{id}", ""]
ERRORS = ['HTTPError("500 Server Error")', "ConnectionRefusedError(111, 'refused')\nat 0x7f00", "\\x00 odd"]


def no_fallback(registry):
    raise AssertionError("the fast path fell back to generate_latest for plain families")


class Info:
    def collect(self):
        yield InfoMetricFamily("locust_build", "Build details.", value={"version": "2.x"})


compared = 0
for seed in range(150):
    rng = random.Random(seed)
    stats = RequestStats()
    for _ in range(rng.randrange(0, 400)):
        method, name = rng.choice(["GET", "POST", None]), rng.choice(NAMES) + str(rng.randrange(5))
        stats.log_request(method, name, rng.choice([rng.randrange(1, 100), rng.randrange(100, 60000)]), 10)
        if rng.random() < 0.2:
            stats.log_error(method, name, rng.choice(ERRORS) + str(rng.randrange(30)))
    runner = SimpleNamespace(stats=stats, user_count=rng.randrange(100), state=rng.choice(["running", "stopped"]),
                             worker_count=0)
    environment = SimpleNamespace(runner=runner, shape_class=SimpleNamespace(current_step=seed % 4))
    for extra in ([], [Info()]):  # the second one takes the fallback
        registry = CollectorRegistry(auto_describe=False)
        registry.register(LocustCollector(environment, error_limit=5))
        for collector in extra:
            registry.register(collector)
        exposition.generate_latest = generate_latest if extra else no_fallback
        fast = exposition.text(registry)
        registry = CollectorRegistry(auto_describe=False)  # fresh error labels, as the first had
        registry.register(LocustCollector(environment, error_limit=5))
        for collector in extra:
            registry.register(collector)
        reference = generate_latest(registry)
        if fast != reference:
            sys.exit(f"seed {seed}, extra {extra}: the fast exposition differs:\n{fast.decode()}\n---\n"
                     f"{reference.decode()}")
        compared += 1

# One collector rendered again and again while Locust's stats change (the exporter's case: its
# kept per-name samples and cached texts must follow every change), across a stats reset.
rng = random.Random(7)
stats = RequestStats()
environment = SimpleNamespace(runner=SimpleNamespace(stats=stats, user_count=3, state="running", worker_count=0),
                              shape_class=None)
registry = CollectorRegistry(auto_describe=False)
registry.register(LocustCollector(environment, error_limit=5))
exposition.generate_latest = no_fallback
for render in range(60):
    if render == 30:
        stats.reset_all()  # a new test: Locust gives every name a new, empty response-time dict
    for _ in range(rng.choice([0, 0, 1, 5, 50])):  # often nothing changed since the last render
        name = rng.choice(NAMES[:4]) + str(rng.randrange(3))
        stats.log_request(rng.choice(["GET", "POST"]), name, rng.randrange(1, 20000), 10)
    reference = CollectorRegistry(auto_describe=False)
    reference.register(LocustCollector(environment, error_limit=5))
    fast, expected = exposition.text(registry), generate_latest(reference)
    if fast != expected:
        sys.exit(f"render {render} of one collector differs:\n{fast.decode()}\n---\n{expected.decode()}")
    compared += 1
print(f"identical {compared}")
'''


def test_fast_exposition_is_generate_latest_byte_for_byte():
    result = subprocess.run([PYTHON, "-c", COMPARE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip() == "identical 360"
