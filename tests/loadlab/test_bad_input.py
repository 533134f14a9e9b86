"""Bad input to the CLI and to `loadlab analyze`: one clear line and exit 2, never a traceback, and
never a verdict that silently differs from the run's data."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from loadlab import cli
from loadlab.contract import exits
from loadlab.contract.exits import EXIT_USAGE
from tests.helpers import REPO_ROOT
from tests.loadlab.conftest import LOADLAB, run_loadlab
from tests.loadlab.synthetic import write_history

# ------------------------------------------------------------------ flags


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "1e999"])
def test_a_time_scale_that_is_not_a_finite_positive_number_is_refused(value, capsys):
    with pytest.raises(SystemExit) as done:
        cli.build_parser().parse_args(["run", "login-step", f"--time-scale={value}"])
    assert done.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--time-scale" in err and "finite number above 0" in err


def _is_too_long() -> str:
    return "x" * 300  # longer than any file name may be (255 bytes): mkdir fails even for root


@pytest.mark.parametrize("case", ["a file", "under a file", "cannot be created"])
def test_run_out_that_cannot_hold_run_directories_is_one_line_before_anything_starts(case, tmp_path):
    (tmp_path / "plain").write_text("not a directory")
    out = {"a file": tmp_path / "plain", "under a file": tmp_path / "plain" / "reports",
           "cannot be created": tmp_path / _is_too_long() / "reports"}[case]
    done = subprocess.run([*LOADLAB, "run", "login-step", "--prometheus", "off", "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_USAGE, done.stdout + done.stderr
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stdout + done.stderr
    expected = {"a file": "is a file, not a directory", "under a file": f"lies under {tmp_path / 'plain'}, which is a file",
                "cannot be created": "cannot be created (File name too long)"}[case]
    assert f"--out {out}" in done.stderr and expected in done.stderr


@pytest.mark.parametrize("case", ["a directory", "under a file", "cannot be created"])
def test_data_out_that_cannot_be_written_is_one_line(case, tmp_path):
    (tmp_path / "plain").write_text("not a directory")
    out = {"a directory": tmp_path, "under a file": tmp_path / "plain" / "users.json",
           "cannot be created": tmp_path / _is_too_long() / "users.json"}[case]
    done = subprocess.run([*LOADLAB, "data", "--count", "3", "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_USAGE, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    expected = {"a directory": "is a directory", "under a file": f"lies under {tmp_path / 'plain'}, which is a file",
                "cannot be created": "cannot be written (File name too long)"}[case]
    assert expected in done.stderr


def test_data_out_is_relative_to_where_loadlab_runs(tmp_path):
    done = subprocess.run([*LOADLAB, "data", "--count", "2", "--out", "users.json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "users.json").is_file() and not (REPO_ROOT / "users.json").exists()


def test_the_same_port_for_two_components_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as sock:  # a free port, so only the clash can be the problem
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = run_loadlab(["run", "login-step", "--prometheus", "off", "--target-port", str(port),
                       "--sidecar-port", str(port)], tmp_path / "reports", timeout=60)
    assert run.returncode == EXIT_USAGE, run.output
    assert f"--target-port and --sidecar-port are both {port}" in run.output
    assert run.run_dir is None and not (tmp_path / "reports").exists()


@pytest.mark.parametrize(("scenario", "name", "value"), [
    ("login-step", "LOGIN_OK_STATUS", "abc"),
    ("registration-step", "REGISTRATION_BODY", '{"username": {username}}'),
    ("login-step", "REGISTRATION_EXISTS_STATUS", "taken"),
])
def test_a_bad_contract_setting_is_refused_before_anything_starts(scenario, name, value, tmp_path):
    # Without the lab's own check the target and the sidecar start, then Locust stops on the setting
    # and the lab says only "Locust stopped before any load (code 1)", 10 s later.
    from locust_tests.config.api_contract import settings_problem

    done = subprocess.run([*LOADLAB, "run", scenario, "--prometheus", "off", "--out", str(tmp_path / "reports")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, name: value})
    assert done.returncode == EXIT_USAGE, done.stdout + done.stderr
    assert done.stdout == "" and done.stderr == f"loadlab run: error: {settings_problem({name: value})}\n"
    assert f"environment variable {name}=" in done.stderr
    assert not (tmp_path / "reports").exists()  # no run directory: nothing was started


# ------------------------------------------------------------------ damaged input to `loadlab analyze`

# 19 steps of 10 s, 10 to 190 users, all within the SLO: "the SLO held up to 190 users".
LEVELS = list(range(10, 200, 10))


def make_history(path: Path) -> None:
    seconds = [(users, users / 0.55, 0.0, 100.0) for users in LEVELS for _ in range(10)]
    write_history(path, seconds)


def analyze(path: Path, capsys, *flags: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["analyze", str(path), "--no-write", *flags])
    out = capsys.readouterr()
    return code, out.out, out.err


def damage_line(path: Path, line_no: int, old: bytes, new: bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    assert old in lines[line_no - 1]
    lines[line_no - 1] = lines[line_no - 1].replace(old, new, 1)
    path.write_bytes(b"\n".join(lines))


@pytest.fixture
def run_dir(tmp_path) -> Path:
    make_history(tmp_path / "locust_stats_history.csv")
    return tmp_path


def test_an_undamaged_history_holds_up_to_190_users(run_dir, capsys):
    code, out, _ = analyze(run_dir, capsys)
    assert code == 0 and "held up to 190 users" in out


def test_an_unterminated_quote_after_row_100_is_refused_with_its_line(run_dir, capsys):
    csv_path = run_dir / "locust_stats_history.csv"
    damage_line(csv_path, 150, b",/client_login,", b',"/client_login,')  # a per-name row, after row 100
    code, out, err = analyze(run_dir, capsys)
    assert code == EXIT_USAGE and out == ""
    assert f"{csv_path} line 150: not a CSV row" in err and "--lenient" in err
    # --lenient skips that row alone: the verdict is the undamaged one, and says what it skipped.
    code, out, err = analyze(run_dir, capsys, "--lenient", "--json")
    verdict = json.loads(out)
    assert code == 0 and verdict["skipped_rows"] == 1
    assert "held up to 190 users" in verdict["summary"][0]
    assert any("--lenient skipped 1 unreadable rows" in line and "line 150" in line for line in verdict["summary"])
    assert "warning: --lenient skipped 1 unreadable rows" in err and "line 150" in err


def test_a_non_utf8_byte_names_the_file_and_line(run_dir, capsys):
    csv_path = run_dir / "locust_stats_history.csv"
    damage_line(csv_path, 40, b"/client_login", b"/client_\xfflogin")
    code, _, err = analyze(run_dir, capsys)
    assert code == EXIT_USAGE
    assert f"{csv_path} line 40: not UTF-8 text (byte 0xff" in err


def test_an_aggregated_row_with_a_count_that_is_no_number_is_refused(run_dir, capsys):
    csv_path = run_dir / "locust_stats_history.csv"
    lines = csv_path.read_text().splitlines()
    row = lines[60].split(",")  # an Aggregated row (even lines after the header)
    assert row[3] == "Aggregated"
    row[1] = "many"
    lines[60] = ",".join(row)
    csv_path.write_text("\n".join(lines) + "\n")
    code, _, err = analyze(run_dir, capsys)
    assert code == EXIT_USAGE and f"{csv_path} line 61: an Aggregated row with a value that is not a number" in err


def _samples(path: Path, lines: list[str], end: str = "\n") -> None:
    path.write_text("\n".join(lines) + end)


def _scrape(t: float) -> str:
    return json.dumps({"t": t, "source": "sidecar", "ok": True, "samples": [["node_load1", {}, 0.5]]})


@pytest.mark.parametrize("bad", ["[1, 2]", "42", '"text"', '{"t": "soon", "source": "sidecar", "ok": true}',
                                 '{"t": 1, "source": "sidecar", "ok": true, "samples": [["x", {}, "NaN?"]]}'])
def test_a_samples_line_that_is_json_but_not_a_scrape_record_is_refused_with_its_line(run_dir, capsys, bad):
    _samples(run_dir / "samples.jsonl", [_scrape(1.0), _scrape(2.0), bad, _scrape(3.0)])
    code, _, err = analyze(run_dir, capsys)
    assert code == EXIT_USAGE and f"{run_dir / 'samples.jsonl'} line 3:" in err and "Traceback" not in err
    code, out, err = analyze(run_dir, capsys, "--lenient", "--json")
    assert code == 0 and json.loads(out)["skipped_rows"] == 1


def test_only_a_torn_last_samples_line_is_tolerated_and_the_verdict_says_so(run_dir, capsys):
    samples = run_dir / "samples.jsonl"
    _samples(samples, [_scrape(1.0), _scrape(2.0), '{"t": 3.0, "source": "sid'], end="")  # killed mid-write
    code, out, _ = analyze(run_dir, capsys)
    assert code == 0 and f"note: {samples} line 3 was torn" in out
    _samples(samples, [_scrape(1.0), '{"t": 2.0, "source": "sid', _scrape(3.0)])  # torn, then more: damage
    code, _, err = analyze(run_dir, capsys)
    assert code == EXIT_USAGE and f"{samples} line 2: not valid JSON" in err


def test_a_damaged_run_json_is_refused_because_it_holds_the_thresholds(run_dir, capsys):
    (run_dir / "run.json").write_text('{"scenario": "login-step", "thresholds": {"latency_p95_ms": 50')
    code, _, err = analyze(run_dir, capsys)
    assert code == EXIT_USAGE and f"{run_dir / 'run.json'} line 1: not valid JSON" in err


def test_a_damaged_failures_csv_is_refused(run_dir, capsys):
    (run_dir / "locust_failures.csv").write_text(
        'Method,Name,Error,Occurrences,First Seen,Last Seen\nPOST,/client_login,"login: HTTP 401,3,x,y\n')
    code, _, err = analyze(run_dir, capsys)
    assert code == EXIT_USAGE and f"{run_dir / 'locust_failures.csv'} line 2: not a CSV row" in err


# ------------------------------------------------------------------ the exit codes, as README lists them

def test_readme_lists_every_exit_code():
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("**Failures.**"): readme.index("**An API that fails functionally.**")]
    assert "**Exit codes**" in section
    codes = {value for name, value in vars(exits).items() if name.startswith("EXIT_")}
    assert codes == {0, 1, 2, 3, 4, 130}
    for code in codes:
        assert re.search(rf"`{code}`", section), f"exit code {code} missing from README's failure section"
