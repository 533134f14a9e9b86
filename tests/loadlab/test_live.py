"""The live view (`loadlab.live`): the steps finished so far, judged by the final verdict's own code,
read incrementally from a run directory that is still being written."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

from loadlab import rundir
from loadlab.contract.live import LIVE_FILE, LIVE_PANEL_FILE, SERIES
from loadlab.history import HistoryRow, read_stats_history
from loadlab.live import LiveView, RunSoFar, Tail, downsample, running_step_start
from tests.loadlab.synthetic import write_history

T0 = 1_700_000_000
WORKERS = 2


def stair(levels: list[int], seconds: int = 10) -> list[tuple[int, float, float, float]]:
    """Per-second rows of a closed loop against 2 workers of 50 ms (capacity 40 req/s, knee ~22 users)."""
    rows = []
    for users in levels:
        rps = min(users / 0.55, 40.0)
        p95 = max(50.0, (users / rps - 0.5) * 1000)
        rows += [(users, 5.0 if s < 2 else rps, 0.0, p95) for s in range(seconds)]
    return rows


def sidecar_lines(seconds: int, cpu_per_s: float = 1.9) -> list[str]:
    """samples.jsonl lines of a sidecar measuring a target using `cpu_per_s` cores and an idle Locust."""
    lines = []
    for i in range(seconds):
        samples = [
            ["namedprocess_namegroup_cpu_seconds_total", {"groupname": "target", "mode": "user"}, cpu_per_s * i],
            ["namedprocess_namegroup_cpu_seconds_total", {"groupname": "locust", "mode": "user"}, 0.1 * i],
            ["namedprocess_namegroup_memory_bytes", {"groupname": "target", "memtype": "resident"}, 80e6 + i],
            ["namedprocess_namegroup_num_procs", {"groupname": "target"}, WORKERS + 1.0],
            ["namedprocess_namegroup_num_procs", {"groupname": "locust"}, 1.0],
        ]
        lines.append(json.dumps({"t": T0 + i + 0.5, "source": "sidecar", "ok": True, "samples": samples}))
    return lines


def run_dir(tmp_path: Path, seconds: list[tuple[int, float, float, float]], sidecar: bool = True) -> Path:
    d = tmp_path / "run"
    d.mkdir(parents=True, exist_ok=True)
    write_history(d / "locust_stats_history.csv", seconds, t0=T0)
    (d / "run.json").write_text(json.dumps({"scenario": "login-step", "target_workers": WORKERS, "host_cores": 2,
                                            "generator_processes": 1}))
    if sidecar:
        (d / "samples.jsonl").write_text("\n".join(sidecar_lines(len(seconds))) + "\n")
    return d


LEVELS = list(range(4, 48, 4))  # 11 steps, knee near 22 users


def test_a_finished_run_gets_exactly_the_final_verdict_and_its_report(tmp_path):
    d = run_dir(tmp_path, stair(LEVELS) + [(0, 0.0, 0.0, 0.0)] * 3)
    view = LiveView(d, {}).update()
    final, _ = rundir.analyze(d, write=False)
    assert view["state"] == "stopped" and view["current"] is None
    assert view["summary"] == final.summary()
    assert view["verdict"]["steps"] == final.to_dict()["steps"] and len(view["steps"]) == len(LEVELS)
    assert any(line.startswith("knee: ~") for line in view["summary"]), view["summary"]
    assert view["knee"]["users"] == final.knee.users
    # The test has stopped: the lab wrote its report, and the view links it.
    assert view["report"] == "report.html" and (d / "report.html").is_file()
    assert json.loads((d / LIVE_FILE).read_text())["summary"] == final.summary()
    # ...and drew the tab's panel from it, so Locust's process only serves the file.
    panel = (d / LIVE_PANEL_FILE).read_text()
    assert 'id="live-verdict"' in panel and f"<li>{html.escape(final.summary()[0])}</li>" in panel
    assert 'href="lab/report"' in panel


def test_the_running_step_is_left_out_and_the_finished_ones_match_the_final_verdict(tmp_path):
    levels = LEVELS[:6]
    running = stair(levels)[:-4]  # the 6th step has held for 6 of its 10 s
    view = LiveView(run_dir(tmp_path, running), {}).update()
    finished, _ = rundir.analyze(run_dir(tmp_path / "done", stair(levels)), write=False)
    assert view["state"] == "running"
    assert view["current"]["step"] == 6 and view["current"]["users"] == levels[-1]
    assert [s["users"] for s in view["steps"]] == levels[:5]
    # Each finished step is judged on the rows the final verdict judges it on. The confidence
    # intervals are the final analysis' (and a stopped test's view's): not computed while it runs.
    no_ci = [{k: v for k, v in step.items() if not k.endswith("_ci")} for step in finished.to_dict()["steps"][:5]]
    assert [{k: v for k, v in step.items() if not k.endswith("_ci")} for step in view["verdict"]["steps"]] == no_ci
    assert all(step["rps_ci"] is None for step in view["verdict"]["steps"])
    assert view["report"] is None


def test_steps_appear_as_the_files_grow_and_a_torn_last_line_waits(tmp_path):
    seconds = stair([4, 8, 12])
    d = run_dir(tmp_path, seconds[:12])
    live = LiveView(d, {})
    first = live.update()
    assert [s["users"] for s in first["steps"]] == [4]
    # Locust flushes its CSV in chunks: a row cut short must not be read as a counter drop.
    full = tmp_path / "full.csv"
    write_history(full, seconds, t0=T0)
    lines = full.read_text().splitlines(keepends=True)
    kept = len((d / "locust_stats_history.csv").read_text().splitlines())
    cut = next(i for i in range(kept + 10, len(lines)) if ",Aggregated," in lines[i])
    fields = lines[cut].split(",")
    at = len(",".join(fields[:17])) + 2  # inside "Total Request Count", the counter
    assert int(fields[17]) >= 10
    with open(d / "locust_stats_history.csv", "a") as fh:
        fh.write("".join(lines[kept:cut]) + lines[cut][:at])
    torn = live.update()
    # Neither the live reader (complete lines only) nor the final one (torn rows skipped) reads the
    # torn counter as a drop.
    for rows in (live.so_far.rows, read_stats_history(d / "locust_stats_history.csv").rows):
        counts = [r.requests for r in rows]
        assert counts == sorted(counts), "a torn row was read as a counter drop"
    with open(d / "locust_stats_history.csv", "a") as fh:
        fh.write(lines[cut][at:] + "".join(lines[cut + 1:]))
    done = live.update()
    assert [s["users"] for s in torn["steps"]] == [4]
    assert [s["users"] for s in done["steps"]] == [4, 8]  # the 12-user step is still running
    assert len(live.so_far.rows) == len(seconds)


def test_every_series_is_drawn_on_one_time_axis_with_the_cores_available(tmp_path):
    view = LiveView(run_dir(tmp_path, stair(LEVELS[:4])), {}).update()
    assert set(view["series"]) == set(SERIES)
    for key, points in view["series"].items():
        assert points, key
        assert all(view["t0"] <= t <= view["t1"] for t, _ in points), key
    assert view["missing"] == {}
    assert view["cores_available"] == {"target": 2.0, "generator": 1.0}
    cpu = [v for _, v in view["series"]["target_cpu_cores"]]
    assert cpu and max(cpu) == pytest.approx(1.9, abs=0.01)


def test_missing_sources_are_named_with_the_reason(tmp_path):
    d = run_dir(tmp_path, stair([4, 8]), sidecar=False)
    url = "http://127.0.0.1:9/metrics"
    (d / "samples.jsonl").write_text(json.dumps({"t": T0 + 5, "source": "sidecar", "ok": False,
                                                 "error": "URLError: connection refused"}) + "\n")
    view = LiveView(d, {"sidecar": url}).update()
    for key in ("target_cpu_cores", "target_memory_bytes", "generator_cpu_cores"):
        assert view["series"][key] == []
        assert url in view["missing"][key] and "connection refused" in view["missing"][key]
    assert any("sidecar" in n and "connection refused" in n for n in view["notes"])


def test_a_target_the_sidecar_cannot_see_says_how_to_fix_it(tmp_path):
    d = run_dir(tmp_path, stair([4, 8]))
    lines = [json.loads(line) for line in (d / "samples.jsonl").read_text().splitlines()]
    for rec in lines:  # an API of your own (--host) without --target-pid: no target group
        rec["samples"] = [s for s in rec["samples"] if s[1].get("groupname") != "target"]
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    view = LiveView(d, {}).update()
    assert "--target-pid" in view["missing"]["target_cpu_cores"]
    assert view["series"]["generator_cpu_cores"]


def test_before_any_test_the_view_says_so(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    view = LiveView(d, {}).update()
    assert view["state"] == "ready" and view["steps"] == []
    assert "Locust has written no stats history yet" in view["missing"]["users"]


def test_a_test_still_starting_its_users_is_running_not_ready(tmp_path):
    # The login scenario seeds its accounts before any user starts: Locust runs, no user yet.
    d = run_dir(tmp_path, [(0, 0.0, 0.0, 0.0)] * 5, sidecar=False)
    locust = [["locust_running", {}, 1.0], ["locust_users", {}, 0.0]]
    (d / "samples.jsonl").write_text(json.dumps({"t": T0 + 4, "source": "locust", "ok": True, "samples": locust}) + "\n")
    live = LiveView(d, {})
    assert live.update()["state"] == "running"
    assert "The test is starting" in (d / LIVE_PANEL_FILE).read_text()
    locust[0][2] = 0.0  # it stopped without a user ever running: the final verdict's words
    with open(d / "samples.jsonl", "a") as fh:
        fh.write(json.dumps({"t": T0 + 5, "source": "locust", "ok": True, "samples": locust}) + "\n")
    assert live.update()["state"] == "stopped"
    assert "no steps found" in (d / LIVE_PANEL_FILE).read_text()


def test_running_step_start_and_downsample():
    rows = [HistoryRow(t=T0 + i, users=u, requests=i, failures=0, p50_ms=None, p95_ms=None)
            for i, u in enumerate([0, 5, 5, 5, 10, 10])]
    assert running_step_start(rows) == 4
    assert running_step_start(rows[:1]) is None
    assert running_step_start(rows + [HistoryRow(T0 + 9, 0, 9, 0, None, None)]) is None
    points = [(float(t), float(t % 7)) for t in range(5000)]
    thin = downsample(points, 0.0, 4999.0, n=100)
    assert len(thin) <= 100 and thin[0][0] >= 0 and thin[-1][0] <= 4999
    assert sum(v for _, v in thin) / len(thin) == pytest.approx(3.0, abs=0.1)  # averaged, not picked


def test_tail_returns_only_complete_lines(tmp_path):
    path = tmp_path / "f"
    tail = Tail(path)
    assert tail.lines() == []
    path.write_text("a\nb")
    assert tail.lines() == ["a"]
    with open(path, "a") as fh:
        fh.write("c\n")
    assert tail.lines() == ["bc"]
    assert RunSoFar(tmp_path).rows == []


def test_a_failing_analysis_is_said_in_the_tab_and_the_lab_keeps_going(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "locust_stats_history.csv").write_text("not,a,locust,history\n1,2,3,4\n")
    LiveView(d, {}).tick()
    view = json.loads((d / LIVE_FILE).read_text())
    assert "the live analysis failed (ValueError" in view["notes"][0] and "not a Locust stats history" in view["notes"][0]
