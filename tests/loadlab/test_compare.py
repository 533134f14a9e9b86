"""`loadlab compare` against known truths: synthetic runs 20% apart are judged regressed, runs of the
same truth are judged unchanged (the false-alarm rate is measured), and two real ground-truth servers
with different service times are judged regressed."""

from __future__ import annotations

import json
import subprocess
import threading
import xml.etree.ElementTree as ET

import pytest

from loadlab.compare import IMPROVED, REGRESSED, UNCHANGED, UNKNOWN, compare
from tests.helpers import REPO_ROOT
from tests.loadlab.conftest import LOADLAB, assert_all_gone, run_loadlab, step_table
from tests.loadlab.served import served_truth
from tests.loadlab.synthetic_runs import Truth, side, write_run

SHORT_HUNT = Truth(users=tuple(range(50, 140, 10)))


def loadlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LOADLAB, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_capacities_20_percent_apart_are_judged_regressed(tmp_path):
    base = write_run(tmp_path / "base", Truth(), seed=101)
    new = write_run(tmp_path / "new", Truth().scaled(0.8), seed=202)
    junit = tmp_path / "compare.xml"
    done = loadlab("compare", str(base), str(new), "--junit", str(junit))
    print(done.stdout)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "verdict: REGRESSED" in done.stdout
    assert (new / "compare.html").is_file() and (new / "compare.json").is_file()
    data = json.loads((new / "compare.json").read_text())
    assert data["judgement"] == REGRESSED and data["regressions"]
    rows = {r["figure"]: r for r in data["figures"]}
    # The knee moved from ~96 to ~77 users: the p95 at the loads in between went up, past the noise.
    assert rows["p95_ms@90users"]["judgement"] == REGRESSED
    # A 10 s hold knows its throughput to several percent, so the capacity's own interval is wide; it
    # must still contain the true change.
    low, high = rows["capacity_rps"]["change_ci_pct"]
    assert low <= -20 <= high
    page = (new / "compare.html").read_text()
    assert page.count('<img class="chart"') == 4 and "BASE" in page and "NEW" in page
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and int(suite.get("failures", "0")) == len(data["regressions"])


def test_with_full_length_steps_the_capacity_itself_is_judged_regressed():
    # 150 s steps (the scenario's own length, no --time-scale): a hold knows its throughput to ~2%.
    truth = Truth(step_s=150, users=tuple(range(60, 140, 10)))
    comp = compare(side("BASE", truth, 7, replicates=300), side("NEW", truth.scaled(0.8), 8, replicates=300))
    row = next(r for r in comp.rows if r.figure == "capacity_rps")
    print(f"\ncapacity {row.base} -> {row.new}: {row.change_pct:+.1f}% (95% CI {row.change_ci_pct})")
    assert row.judgement == REGRESSED
    assert row.change_ci_pct is not None and row.change_ci_pct[0] <= -20 <= (row.change_ci_pct[1] or 0)


def test_charts_draw_a_figure_that_sits_on_or_past_the_edge_of_its_own_interval():
    # Seen in CI: p95 247.2 ms (CI 103.5-247.2), the figure a hair above its interval's top once
    # rounded; matplotlib refuses negative error bars, and compare exited 1 without its page.
    from loadlab.compare import _charts

    comp = compare(side("BASE", SHORT_HUNT, 31), side("NEW", SHORT_HUNT, 32))
    step = comp.new.verdict.steps[0]
    step.p95_ms_ci = [step.p95_ms * 0.5, step.p95_ms - 0.05]
    step.rps_ci = [step.rps + 0.05, step.rps * 2]
    titles = [title for title, _ in _charts(comp)]
    assert "Throughput per step (95% CI)" in titles and "p95 per step (95% CI)" in titles, titles


def test_pairs_of_the_same_truth_are_judged_unchanged():
    pairs = 60
    judged = []
    for i in range(pairs):
        comp = compare(side("BASE", SHORT_HUNT, 1000 + i, replicates=200), side("NEW", SHORT_HUNT, 5000 + i, replicates=200))
        judged.append(comp.judgement)
        if comp.judgement != UNCHANGED:
            print(f"\npair {i}: {comp.judgement}: " + ", ".join(
                f"{r.figure} {r.change_pct:+.1f}% {r.change_ci_pct}" for r in comp.rows if r.judgement not in (UNCHANGED, UNKNOWN)))
    false_alarms = sum(j != UNCHANGED for j in judged)
    print(f"\nsame truth, different noise: {pairs - false_alarms}/{pairs} pairs judged unchanged, false-alarm rate "
          f"{false_alarms / pairs:.1%}")
    assert false_alarms / pairs <= 0.05


def test_a_run_that_never_reached_its_breaking_point_bounds_the_change_on_one_side():
    # Capped at 80 users, below the knee (~96): its capacity is a lower bound (the truth is higher).
    capped = Truth(users=(40, 50, 60, 70, 80), step_s=30)
    slower = capped.scaled(0.5)  # knee ~48 users, capacity 23 req/s: it does break
    down = next(r for r in compare(side("BASE", capped, 1, 300), side("NEW", slower, 2, 300)).rows
                if r.figure == "capacity_rps")
    assert down.judgement == REGRESSED and down.change_ci_pct is not None and down.change_ci_pct[0] is None
    up = next(r for r in compare(side("BASE", slower, 2, 300), side("NEW", capped, 1, 300)).rows
              if r.figure == "capacity_rps")
    assert up.judgement == IMPROVED and up.change_ci_pct is not None and up.change_ci_pct[1] is None
    # BASE capped, NEW measured higher: by how much is unknown, and not "unchanged" either.
    full = Truth(step_s=30)
    open_ended = next(r for r in compare(side("BASE", capped, 1, 300), side("NEW", full, 3, 300)).rows
                      if r.figure == "capacity_rps")
    assert open_ended.judgement == UNKNOWN and "lower bound" in open_ended.reason


def test_runs_of_different_scenarios_or_slos_are_refused_with_exit_2(tmp_path):
    base = write_run(tmp_path / "base", Truth(), seed=1)
    other = write_run(tmp_path / "other", Truth(), seed=2, scenario="registration-step")
    done = loadlab("compare", str(base), str(other), "--no-write")
    assert done.returncode == 2 and "compare runs of the same scenario" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    strict = write_run(tmp_path / "strict", Truth(), seed=3)
    meta = json.loads((strict / "run.json").read_text())
    (strict / "run.json").write_text(json.dumps({**meta, "thresholds": {"latency_p95_ms": 300}}))
    done = loadlab("compare", str(base), str(strict), "--no-write")
    assert done.returncode == 2 and "different SLOs" in done.stderr, done.stderr
    # Judged by one SLO given on the command line, they compare.
    done = loadlab("compare", str(base), str(strict), "--no-write", "--slo-p95-ms", "500")
    assert done.returncode in (0, 1), done.stderr
    done = loadlab("compare", str(base), str(tmp_path / "nothing-here"))
    assert done.returncode == 2 and "NEW" in done.stderr and "not found" in done.stderr, done.stderr


def test_json_output_is_the_comparison(tmp_path):
    a = write_run(tmp_path / "a", SHORT_HUNT, seed=3)
    b = write_run(tmp_path / "b", SHORT_HUNT, seed=4)
    done = loadlab("compare", str(a), str(b), "--json", "--no-write")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["judgement"] == UNCHANGED and data["min_change_pct"] == 5.0 and data["simultaneous"] is True
    figures = {r["figure"] for r in data["figures"]}
    assert {"capacity_rps", "knee.users", "break.users", "rps@50users", "p95_ms@130users"} <= figures
    assert not (b / "compare.html").exists()


# ----------------------------------------------------------------------------- ground truth

THINK = {"MIN_WAIT_TIME": "400", "MAX_WAIT_TIME": "600", "LOGIN_USERS": "20"}


@pytest.mark.serial  # measured capacities of two servers: run alone
@pytest.mark.timeout(300)
def test_ground_truth_servers_with_different_service_times_are_judged_regressed(ground_truth, tmp_path):
    # W=4 sleeping workers: S=100 ms gives X=40 req/s, N*=24 users; S=200 ms gives X=20, N*=14.
    # Both hunts run at once (sleeping servers need no CPU, so they do not disturb each other). The slower
    # one gates on its capacity and compares itself with a synthetic baseline of the same scenario, which
    # exercises `run --gate --baseline --junit`; then `loadlab compare` judges the two real runs.
    fast, slow = ground_truth(4, 100, "sleep"), ground_truth(4, 200, "sleep")
    baseline = write_run(tmp_path / "baseline", Truth(users=(8, 16, 24, 32, 40), capacity_rps=40, think_s=0.5,
                                                      light_response_s=0.1, step_s=10), seed=1)
    hunt = ["--", "--step-users", "8", "--step-time", "12s", "--max-users", "40"]
    runs = {}

    def go(name, gt, extra):
        runs[name] = run_loadlab(["run", "login-step", "--host", gt.url, "--target-pid", str(gt.pid),
                                  "--target-workers", "4", "--prometheus", "off", *extra, *hunt],
                                 tmp_path / name, env=THINK, timeout=240)

    junit = tmp_path / "run.xml"
    threads = [threading.Thread(target=go, args=("fast", fast, [])),
               threading.Thread(target=go, args=("slow", slow, ["--gate", "capacity_rps>=30", "--baseline",
                                                                 str(baseline), "--junit", str(junit)]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, run in runs.items():
        assert run.run_dir is not None, run.output
        assert_all_gone(run.started_pids())
        print(f"\n{name}:\n" + step_table(run.verdict()))
    assert runs["fast"].returncode == 0, runs["fast"].output
    slow_run = runs["slow"]
    assert slow_run.returncode == 4, slow_run.output  # the gate failed (20 req/s < 30) and it regressed
    assert "gate capacity_rps>=30: FAILED" in slow_run.output
    assert (slow_run.run_dir / "compare.html").is_file()
    suites = {s.get("name"): s for s in ET.parse(junit).getroot()}
    assert int(suites["loadlab gates"].get("failures")) == 1 and "loadlab compare" in suites
    gates = slow_run.verdict()["gates"]
    assert gates[0]["passed"] is False and gates[0]["value"] < 30

    # Against the truth. X = W/S leaves out what gunicorn, Flask and the host add to every request
    # (~3 ms on an idle machine, 10 ms and more on a busy one), so the truth of *this* run is the
    # operational law on what the server delivered (tests/loadlab/served.py): X = W/D, with D the time a
    # worker was held per login on the plateau, and N* = X (R0 + Z), with R0 the first step's mean
    # response (W/R0 was the truth before; R0 counts Locust's side too, and a first step at 11 % steal
    # put it 7 ms high, N* below the knee's interval). The knee's interval must hold N*. The capacity's
    # interval covers the sampling noise of the plateau (about 1% wide for a sleeping server, which
    # serves as steadily as a clock); the host's share of each request moves the plateau itself by
    # more than that from one run to the next, which no interval from within a run can cover, so the
    # capacity is held to 10% of W/D and the gap is printed.
    for name, gt in (("fast", fast), ("slow", slow)):
        verdict = runs[name].verdict()
        first = min(s["users"] for s in verdict["steps"])  # R0 from the first step (the slow knee is below 16)
        truth = served_truth(runs[name].run_dir, verdict, gt.workers, 0.5, gt.knee_users(0.5), light_up_to=first)
        x, n_star = truth.capacity_rps, truth.knee_users
        low, high = verdict["knee"]["users_ci"]
        print(f"{name}: W/S = {gt.capacity_rps:g}, {truth}: capacity "
              f"{verdict['capacity_rps']} {verdict['capacity_ci']}; knee {verdict['knee']['users']} ({low}-{high})")
        # A 95% interval misses the truth 1 run in 20 by design (two servers here: 1 in 10); held to
        # the same interval widened by half on each side (~99.7% for a normal estimate), the test
        # fails only when the interval is really wrong, not on the misses it promises.
        knee = verdict["knee"]["users"]
        assert low - 0.5 * (knee - low) <= n_star <= high + 0.5 * (high - knee), name
        if verdict["capacity_is_lower_bound"]:  # the plateau's steps all breached the SLO: a bound, which must hold
            assert verdict["capacity_rps"] <= x * 1.10, name
        else:
            assert verdict["capacity_rps"] == pytest.approx(x, rel=0.10), name

    done = loadlab("compare", str(runs["fast"].run_dir), str(runs["slow"].run_dir))
    print(done.stdout)
    assert done.returncode == 1, done.stdout + done.stderr
    data = json.loads((runs["slow"].run_dir / "compare.json").read_text())
    rows = {r["figure"]: r for r in data["figures"]}
    assert rows["capacity_rps"]["judgement"] == REGRESSED, done.stdout
