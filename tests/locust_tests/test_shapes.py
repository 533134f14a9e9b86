"""--scenario NAME picks the right Locust shape, and it ticks the preset's users/rate/duration.

The shapes import Locust, so they are exercised in a subprocess (see conftest.py for why)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import PYTHON, REPO_ROOT

PROBE = r"""
import argparse, json, sys, time, types
from locust.stats import RequestStats
from locust.util.load_locustfile import is_shape_class
from locust_tests.plugins import shapes

kind, name, scale = sys.argv[1], sys.argv[2], float(sys.argv[3])
times = [float(t) for t in sys.argv[4].split(",")]
shapes.use_presets(kind)
options = argparse.Namespace(time_scale=scale, step_users=10, step_time="150s", max_users=1000,
                             no_stop_on_break=True)
try:
    shape = shapes.build_shape(name, options)
except ValueError as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(0)
shape.runner = types.SimpleNamespace(stats=RequestStats())  # Locust's own (empty) stats
ticks = []
for t in times:
    shape.start_time = time.perf_counter() - t  # as if t seconds had passed
    ticks.append(shape.tick())
print(json.dumps({"class": type(shape).__name__, "autopicked": is_shape_class(type(shape)), "ticks": ticks}))
"""


def probe(kind: str, name: str, scale: float, times: list[float]) -> dict:
    result = subprocess.run([PYTHON, "-c", PROBE, kind, name, str(scale), ",".join(map(str, times))],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("kind", "name", "users", "rate", "seconds"), [
    ("registration", "normal", 50, 10, 300), ("registration", "heavy", 100, 20, 600),
    ("registration", "spike", 200, 50, 900), ("login", "baseline", 100, 10, 300),
    ("login", "stress", 500, 50, 600), ("login", "breaking-point", 1000, 100, 900),
])
def test_scenario_name_gives_its_preset_shape(kind, name, users, rate, seconds):
    # time scale 0.1: the preset runs for a tenth of its duration
    out = probe(kind, name, 0.1, [0, seconds * 0.1 - 1, seconds * 0.1 + 0.5])
    assert out["class"] == "PresetShape"
    assert out["ticks"] == [[users, rate], [users, rate], None]


def test_step_scenario_steps_every_time_scaled_hold():
    out = probe("login", "step", 0.1, [0, 14, 16, 31, 150 * 0.1 * 99 + 1, 150 * 0.1 * 100 + 1])
    assert out["class"] == "StepShape"
    assert out["ticks"] == [[10, 10], [10, 10], [20, 10], [30, 10], [1000, 10], None]


def test_shapes_are_never_picked_up_without_scenario():
    # Locust activates any concrete LoadTestShape in a locustfile; ours must not be one.
    assert probe("login", "baseline", 1, [0])["autopicked"] is False
    assert probe("login", "step", 1, [0])["autopicked"] is False


def test_a_preset_of_the_other_scenario_is_refused():
    assert probe("login", "normal", 1, [0])["error"] == (
        "unknown --scenario 'normal': this locustfile offers baseline, stress, breaking-point, step")
