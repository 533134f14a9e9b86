"""Every benchmark script still starts: README quotes their figures, so a script that no longer runs
(an import of a module since removed, as bench_profiling.py and bench_worker_class.py had) must
fail here rather than when someone tries to reproduce a figure."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import PYTHON, REPO_ROOT

SCRIPTS = sorted((REPO_ROOT / "benchmarks").glob("bench_*.py"))


def test_there_are_benchmarks():
    assert len(SCRIPTS) >= 9, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_starts_and_explains_its_options(script):
    done = subprocess.run([PYTHON, str(script), "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:"), done.stdout[:500]
