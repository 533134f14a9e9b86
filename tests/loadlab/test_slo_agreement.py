"""The SLO a user sets is the SLO every part applies: the live hunt, the verdict, the report
and the Prometheus rules started with the run."""

from __future__ import annotations

import json
import re

import pytest

from loadlab.cli import main
from tests.loadlab.conftest import assert_all_gone, run_loadlab, step_table
from tests.loadlab.synthetic import write_history

# Steps of 10 s at 10..50 users whose p95 is known: 100, 200, 350, 600 and 900 ms.
P95_BY_USERS = {10: 100.0, 20: 200.0, 30: 350.0, 40: 600.0, 50: 900.0}


@pytest.fixture
def history(tmp_path):
    prefix = tmp_path / "run"
    seconds = [(users, users / 0.6, 0.0, p95) for users, p95 in P95_BY_USERS.items() for _ in range(10)]
    write_history(tmp_path / "run_stats_history.csv", seconds)
    return prefix


def analyzed_break(capsys, *args: str) -> float | None:
    assert main(["analyze", *args, "--json", "--no-write"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    return verdict["break"]["users"] if verdict["break"] else None, verdict["thresholds"]["latency_p95_ms"]


@pytest.mark.parametrize(("flags", "expected"), [
    ((), (40, 500.0)),
    (("--slo-p95-ms", "300"), (30, 300.0)),
    (("--slo-p95-ms", "150"), (20, 150.0)),
    (("--slo-p95-ms", "700"), (50, 700.0)),
    (("--slo-p95-ms", "1000"), (None, 1000.0)),
])
def test_analyze_moves_the_break_exactly_with_the_slo(history, capsys, flags, expected):
    assert analyzed_break(capsys, str(history), *flags) == expected


def test_the_slo_variable_and_a_recorded_run_are_honoured_and_a_flag_beats_both(history, capsys, monkeypatch):
    monkeypatch.setenv("SLO_P95_MS", "300")
    assert analyzed_break(capsys, str(history)) == (30, 300.0)
    assert analyzed_break(capsys, str(history), "--slo-p95-ms", "700") == (50, 700.0)
    # A run directory is judged by the thresholds its own run recorded, not by today's variables.
    (history.parent / "run.json").write_text(json.dumps({"thresholds": {"latency_p95_ms": 150}}))
    assert analyzed_break(capsys, str(history)) == (20, 150.0)
    assert analyzed_break(capsys, str(history), "--slo-p95-ms", "1000") == (None, 1000.0)


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-5", "fast"])
def test_a_bad_slo_flag_is_one_clear_error(history, capsys, value):
    code = None
    try:
        code = main(["analyze", str(history), "--slo-p95-ms", value, "--no-write"])
    except SystemExit as exc:  # argparse refuses what is not a number at all
        code = exc.code
    assert code == 2
    assert "--slo-p95-ms" in capsys.readouterr().err


@pytest.mark.serial  # a real hunt's break on measured p95: run alone
@pytest.mark.timeout(240)
def test_a_run_with_its_own_slo_breaks_where_its_hunt_stopped(ground_truth, tmp_path):
    # W=2, S=100 ms, Z=0.5 s: 20 req/s, knee N* = 12 users. Past the knee the response time grows
    # by N/X: ~0.4 s at 18 users, ~0.7 s at 24. A 300 ms SLO, below the default 500 ms, breaks at
    # 18 users; the verdict must find the break where the hunt (judging the same SLO live) stopped.
    gt = ground_truth(workers=2, service_ms=100, mode="sleep")
    run = run_loadlab(["run", "login-step", "--host", gt.url, "--target-pid", str(gt.pid), "--target-workers", "2",
                       "--prometheus", "on", "--", "--step-users", "6", "--step-time", "10s", "--max-users", "48"],
                      tmp_path / "reports", env={"MIN_WAIT_TIME": "400", "MAX_WAIT_TIME": "600", "LOGIN_USERS": "20",
                                                 "SLO_P95_MS": "300"}, timeout=200)
    assert run.returncode == 0, run.output
    assert_all_gone(run.started_pids())
    verdict = run.verdict()
    log = (run.run_dir / "logs" / "locust.log").read_text()
    stopped = re.search(r"the SLO broke at step \d+ \((\d+) users\)", log)
    assert stopped, log[-3000:]
    detail = step_table(verdict) + f"\nhunt: {stopped.group(0)}"
    print("\n" + detail)
    assert verdict["thresholds"]["latency_p95_ms"] == 300.0
    assert run.meta()["thresholds"]["latency_p95_ms"] == 300.0
    assert verdict["break"] is not None, detail
    assert verdict["break"]["users"] == int(stopped.group(1)), detail
    # The live alerts ran on rules generated for the run's SLO, not the committed 500 ms ones.
    alerts = (run.run_dir / "prometheus" / "rules" / "alerts.yml").read_text()
    assert "> 0.3" in alerts and "> 0.5" not in alerts
