"""CI gates (`--gate EXPR`, `--junit FILE`) on `loadlab analyze`, on synthetic runs with known figures."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET

import pytest

from loadlab import rundir
from loadlab.gates import GateError, check, parse
from tests.helpers import REPO_ROOT
from tests.loadlab.conftest import LOADLAB
from tests.loadlab.synthetic_runs import Truth, write_run


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LOADLAB, "analyze", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    # Knee ~96 users, capacity ~46 req/s, break at 110 users, p95 ~215 ms at light load.
    return write_run(tmp_path_factory.mktemp("gates") / "run", Truth(), seed=21)


def test_expressions_are_read_or_refused_with_what_is_accepted():
    gate = parse("p95_ms@50users<=300")
    assert (gate.figure, gate.users, gate.op, gate.threshold) == ("p95_ms", 50, "<=", 300.0)
    assert parse(" capacity_rps >= 40 ").threshold == 40.0 and parse("knee.users>80").op == ">"
    for bad in ("capacity>=40", "capacity_rps=>40", "p95_ms@fiftyusers<=3", "rps@10users", "cpu@10users<1"):
        with pytest.raises(GateError, match="--gate"):
            parse(bad)


def test_gates_pass_fail_and_land_in_verdict_json_and_junit(run, tmp_path):
    junit = tmp_path / "gates.xml"
    done = analyze(str(run), "--gate", "capacity_rps>=40", "--gate", "knee.users>=80", "--gate",
                   "p95_ms@50users<=300", "--gate", "error_ratio<=0.01", "--junit", str(junit))
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    gates = json.loads((run / rundir.VERDICT).read_text())["gates"]
    assert [g["passed"] for g in gates] == [True, True, True, True]
    assert gates[0]["ci"][0] <= gates[0]["value"] <= gates[0]["ci"][1]
    assert "gate capacity_rps>=40: passed (" in done.stdout

    done = analyze(str(run), "--gate", "capacity_rps>=60", "--gate", "p95_ms@120users<=500", "--junit", str(junit))
    assert done.returncode == 4, done.stdout + done.stderr
    assert "gate capacity_rps>=60: FAILED" in done.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "2"


def test_a_gate_on_a_figure_the_run_did_not_measure_fails_and_says_so(run):
    done = analyze(str(run), "--no-write", "--gate", "p95_ms@55users<=300", "--gate", "rps@10users>=1")
    assert done.returncode == 4
    assert "FAILED: not measured: no step held 55 users (steps: 10, 20" in done.stdout
    assert "gate rps@10users>=1: passed" in done.stdout


def test_a_run_capped_below_its_knee_knows_its_capacity_only_as_a_lower_bound(tmp_path):
    capped = write_run(tmp_path / "capped", Truth(users=(20, 30, 40, 50)), seed=4)
    verdict, _ = rundir.analyze(capped, write=False)
    assert not verdict.breaking_point_reached and verdict.capacity_rps is not None
    low = check(parse(f"capacity_rps>={verdict.capacity_rps * 0.5:g}"), verdict)
    assert low.passed and "lower bound" in low.detail
    for expr in (f"capacity_rps>={verdict.capacity_rps * 2:g}", "capacity_rps<=1000"):
        result = check(parse(expr), verdict)
        assert not result.passed and result.detail.startswith("not measured: only a lower bound"), result.line()
    knee = check(parse("knee.users>=40"), verdict)  # no knee up to 50 users: the knee is beyond 50
    assert knee.passed
    result = check(parse("break.rps>=1"), verdict)
    assert not result.passed and "no break" in result.detail and "not reached up to 50 users" in result.detail


def test_a_bad_gate_is_a_usage_error_before_anything_runs(run):
    done = analyze(str(run), "--no-write", "--gate", "capacity>=40")
    assert done.returncode == 2 and "unknown figure 'capacity'" in done.stderr
    done = subprocess.run([*LOADLAB, "run", "login-step", "--gate", "p95_ms@<=3"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "--gate" in done.stderr and "run directory" not in done.stdout
    # A --baseline that is not a run is refused before anything starts, too.
    done = subprocess.run([*LOADLAB, "run", "login-step", "--baseline", str(run.parent / "missing"), "--out",
                           str(run.parent / "reports")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--baseline" in done.stderr and not (run.parent / "reports").exists()
