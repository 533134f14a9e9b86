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

outs = []
for case in json.load(sys.stdin):
    # use_presets adds to what the process offers (a locustfile calls it once per process): start
    # each case from a fresh process's offers, so one case's presets never leak into the next.
    shapes._offered.clear()
    shapes.use_presets(case["kind"])
    options = argparse.Namespace(**{"time_scale": case["scale"], "hunt": None, "start_users": None, "step_users": 10,
                                    "step_time": "150s", "max_users": 1000, "no_stop_on_break": True,
                                    **case.get("options", {})})
    try:
        shape = shapes.build_shape(case["name"], options)
    except ValueError as exc:
        outs.append({"error": str(exc)})
        continue
    shape.runner = types.SimpleNamespace(stats=RequestStats())  # Locust's own (empty) stats
    ticks = []
    for t in case["times"]:
        shape.start_time = time.perf_counter() - t  # as if t seconds had passed
        ticks.append(shape.tick())
    outs.append({"class": type(shape).__name__, "hunt": type(getattr(shape, "hunt", None)).__name__,
                 "autopicked": is_shape_class(type(shape)), "ticks": ticks})
print(json.dumps(outs))
"""

PRESETS = [
    ("registration", "normal", 50, 10, 300), ("registration", "heavy", 100, 20, 600),
    ("registration", "spike", 200, 50, 900), ("login", "baseline", 100, 10, 300),
    ("login", "stress", 500, 50, 600), ("login", "breaking-point", 1000, 100, 900),
]
STEP_TIMES = [0, 14, 16, 31, 150 * 0.1 * 99 + 1, 150 * 0.1 * 100 + 1]


def preset_times(seconds: float) -> list[float]:
    # time scale 0.1: the preset runs for a tenth of its duration
    return [0, seconds * 0.1 - 1, seconds * 0.1 + 0.5]


# Every (kind, name, scale, times) a test below probes: one Python process runs them all.
CASES = [
    *[(kind, name, 0.1, preset_times(seconds)) for kind, name, _users, _rate, seconds in PRESETS],
    ("login", "step", 0.1, STEP_TIMES),
    ("login", "baseline", 1, [0]),
    ("login", "step", 1, [0]),
    ("login", "normal", 1, [0]),
]


# The step scenario without --step-users: the adaptive hunt. Locust's stats stay empty in the probe,
# so its first step (10 users for 15 s) completes no request and the hunt stops with nothing to measure.
ADAPTIVE_TIMES = [0.0, 14.0, 16.0]
ADAPTIVE_OPTIONS = [{"step_users": None}, {"step_users": None, "start_users": 25}, {"hunt": "fixed", "step_users": None},
                    {"hunt": "adaptive"}]


def _key(kind: str, name: str, scale: float, times: list[float]) -> tuple:
    return kind, name, float(scale), tuple(float(t) for t in times)


@pytest.fixture(scope="module")
def probe():
    """probe(kind, name, scale, times): the shape --scenario `name` builds and its ticks at `times`
    (or the error building it raises). One PROBE process computes all of CASES."""
    cases = [{"kind": kind, "name": name, "scale": float(scale), "times": [float(t) for t in times]}
             for kind, name, scale, times in CASES]
    cases += [{"kind": "login", "name": "step", "scale": 0.1, "times": ADAPTIVE_TIMES, "options": options}
              for options in ADAPTIVE_OPTIONS]
    result = subprocess.run([PYTHON, "-c", PROBE], input=json.dumps(cases), cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    outs = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(outs) == len(cases), f"PROBE answered {len(outs)} of {len(cases)} cases:\n{result.stderr}"
    by_case = {_key(*case): out for case, out in zip(CASES, outs)}
    by_case.update({(*_key("login", "step", 0.1, ADAPTIVE_TIMES), json.dumps(options, sort_keys=True)): out
                    for options, out in zip(ADAPTIVE_OPTIONS, outs[len(CASES):])})

    def _probe(kind: str, name: str, scale: float, times: list[float], options: dict | None = None) -> dict:
        key = _key(kind, name, scale, times)
        if options is not None:  # the step scenario with these options (ADAPTIVE_OPTIONS)
            key = (*key, json.dumps(options, sort_keys=True))
        if key not in by_case:
            pytest.fail(f"probe{key} is not in CASES: add it there")
        return by_case[key]

    return _probe


@pytest.mark.parametrize(("kind", "name", "users", "rate", "seconds"), PRESETS)
def test_scenario_name_gives_its_preset_shape(probe, kind, name, users, rate, seconds):
    out = probe(kind, name, 0.1, preset_times(seconds))
    assert out["class"] == "PresetShape"
    assert out["ticks"] == [[users, rate], [users, rate], None]


def test_step_scenario_steps_every_time_scaled_hold(probe):
    out = probe("login", "step", 0.1, STEP_TIMES)
    assert out["class"] == "StepShape"
    assert out["ticks"] == [[10, 10], [10, 10], [20, 10], [30, 10], [1000, 10], None]


def test_shapes_are_never_picked_up_without_scenario(probe):
    # Locust activates any concrete LoadTestShape in a locustfile; ours must not be one.
    assert probe("login", "baseline", 1, [0])["autopicked"] is False
    assert probe("login", "step", 1, [0])["autopicked"] is False


def test_a_preset_of_the_other_scenario_is_refused(probe):
    assert probe("login", "normal", 1, [0])["error"] == (
        "unknown --scenario 'normal': this locustfile offers baseline, stress, breaking-point, step, rate-step")


def step_probe(probe, options: dict) -> dict:
    return probe("login", "step", 0.1, ADAPTIVE_TIMES, options=options)


def test_the_step_scenario_hunts_adaptively_unless_step_users_is_given(probe):
    adaptive = step_probe(probe, {"step_users": None})
    assert (adaptive["class"], adaptive["hunt"]) == ("StepShape", "AdaptiveHunt")
    assert adaptive["ticks"] == [[10, 10], [10, 10], None]  # nothing completed at 10 users: nothing to hunt
    assert step_probe(probe, {"step_users": None, "start_users": 25})["ticks"][0] == [25, 25]
    fixed = step_probe(probe, {"hunt": "fixed", "step_users": None})
    assert fixed["hunt"] == "StepHunt" and fixed["ticks"] == [[10, 10], [10, 10], [20, 10]]
    assert probe("login", "step", 0.1, STEP_TIMES)["hunt"] == "StepHunt"  # --step-users 10 given: fixed


def test_adaptive_with_step_users_is_refused_naming_both(probe):
    assert "--step-users" in step_probe(probe, {"hunt": "adaptive"})["error"]  # the probe gives --step-users 10


def test_the_own_shape_line_is_logged_before_the_exporter_serves():
    # The lab reads "defines its own LoadTestShape" from Locust's log once the exporter answers; init
    # listeners run in import order, so the shapes plugin's must come before the exporter's (a CI
    # run lost that race when the exporter's came first).
    probe = ("import locust, locust_tests.loadlab_plugins\n"
             "import json; print(json.dumps([h.__module__.rsplit('.', 1)[-1] for h in locust.events.init._handlers]))")
    out = subprocess.run([PYTHON, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    order = json.loads(out.stdout.strip().splitlines()[-1])
    assert order.index("shapes") < order.index("exporter"), order
