"""A run that did not finish (a component died, Ctrl-C, Locust stopped) is judged only on the part
that ran before the fault, and its verdict says so: `complete: false` and why."""

from __future__ import annotations

import json

from loadlab import rundir
from tests.loadlab.synthetic import write_history

T0 = 1_700_000_000


def _run_dir(tmp_path, meta: dict | None):
    # Three 10 s steps (5, 10, 15 users) from T0 on, as Locust's stats history writes them.
    seconds = [(users, users / 0.55, 0.0, 60.0) for users in (5, 10, 15) for _ in range(10)]
    write_history(tmp_path / "locust_stats_history.csv", seconds, t0=T0)
    if meta is not None:
        (tmp_path / "run.json").write_text(json.dumps(meta))
    return tmp_path


def test_an_interrupted_run_is_judged_up_to_the_fault_and_marked_partial(tmp_path):
    d = _run_dir(tmp_path, {"scenario": "login-step", "incomplete": "interrupted by SIGINT",
                            "incomplete_at": T0 + 19.5})
    verdict, _ = rundir.analyze(d)
    assert [s.users for s in verdict.steps] == [5, 10]  # the 15-user step began after the fault
    data = json.loads((d / "verdict.json").read_text())
    assert data["complete"] is False and data["incomplete_reason"] == "interrupted by SIGINT"
    assert data["summary"][0].startswith("PARTIAL verdict (complete: false): the run did not finish "
                                         "(interrupted by SIGINT)")
    assert data["summary"][0] in (d / "report.html").read_text()


def test_a_finished_run_is_complete(tmp_path):
    d = _run_dir(tmp_path, {"scenario": "login-step"})
    verdict, _ = rundir.analyze(d)
    assert [s.users for s in verdict.steps] == [5, 10, 15]
    data = json.loads((d / "verdict.json").read_text())
    assert data["complete"] is True and data["incomplete_reason"] is None
    assert not any("PARTIAL" in line for line in data["summary"])


def test_a_partial_run_with_no_whole_step_still_says_why(tmp_path):
    d = _run_dir(tmp_path, {"incomplete": "locust worker 2 (pid 123) exited with code -9 (killed by SIGKILL) "
                                          "during the run", "incomplete_at": T0 + 1})
    verdict, _ = rundir.analyze(d)
    assert verdict.steps == [] and verdict.complete is False
    assert "locust worker 2 (pid 123) exited" in verdict.summary()[0]
    assert "no steps found" in verdict.summary()[1]
