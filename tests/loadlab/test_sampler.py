"""The live progress line's p95 and the histogram quantile it shares with the step summaries."""

from __future__ import annotations

import pytest

from loadlab.history import Scrape, quantile_between
from loadlab.sampler import Sampler

HISTOGRAM = "locust_request_duration_seconds"
BOUNDS = ("0.1", "0.5", "1.0", "+Inf")


def locust_scrape(t: float, counts: tuple[float, ...]) -> Scrape:
    """A scrape of Locust's exporter: 10 users and the request histogram's cumulative bucket counts."""
    samples = [("locust_users", {}, 10.0)]
    samples += [(HISTOGRAM + "_bucket", {"name": "/client_login", "le": le}, c) for le, c in zip(BOUNDS, counts)]
    return Scrape(t=t, source="locust", samples=samples)


# 100 fast requests, then Locust resets its stats (a new test started from the web UI) and the
# new test has already counted 120 slower ones: +Inf grew, the lower buckets went down.
BEFORE_RESET = locust_scrape(0.0, (100, 100, 100, 100))
AFTER_RESET = locust_scrape(4.0, (60, 60, 120, 120))
AFTER_RESET_FEWER = locust_scrape(4.0, (5, 5, 10, 10))  # fewer than before, even in +Inf


def progress_p95(first: Scrape, last: Scrape, tmp_path) -> float | None:
    sampler = Sampler(tmp_path / "samples.jsonl", {"locust": "http://127.0.0.1:9/metrics"})
    try:
        sampler.recent["locust"].extend([first, last])
        return sampler.progress(window=5.0)["p95_ms"]
    finally:
        sampler.stop()


def test_progress_p95_comes_from_the_window_s_bucket_deltas(tmp_path):
    # 60 of the window's 120 requests under 0.5 s, the rest under 1 s: p95 interpolates to 0.95 s.
    first, last = locust_scrape(0.0, (10, 10, 10, 10)), locust_scrape(4.0, (70, 70, 130, 130))
    assert progress_p95(first, last, tmp_path) == pytest.approx(950.0)


@pytest.mark.parametrize("after", [AFTER_RESET, AFTER_RESET_FEWER], ids=["more-since-reset", "fewer-since-reset"])
def test_a_stats_reset_inside_the_window_gives_no_p95_rather_than_a_wrong_one(after, tmp_path):
    # Bucket deltas across a reset are negative: a quantile of them (0.99 s here) measures nothing.
    assert quantile_between(0.95, BEFORE_RESET, after, HISTOGRAM) is None
    assert progress_p95(BEFORE_RESET, after, tmp_path) is None


def test_progress_and_the_progress_line_show_the_hunt_phase(tmp_path):
    from loadlab.runner import Lab, LabOptions

    def scrape(t: float, phase: str | None) -> Scrape:
        samples = [("locust_users", {}, 80.0), ("locust_step", {}, 5.0), ("locust_requests_total", {"name": "x"}, t * 10)]
        if phase:
            samples += [("locust_hunt_phase", {"phase": p}, 1.0 if p == phase else 0.0) for p in ("grow", "refine", "drain")]
        return Scrape(t=t, source="locust", samples=samples)

    lab = Lab(LabOptions("login-step"))
    lab.sampler = Sampler(tmp_path / "samples.jsonl", {"locust": "http://127.0.0.1:9/metrics"})
    try:
        lab.sampler.recent["locust"].extend([scrape(0.0, "drain"), scrape(4.0, "refine")])
        assert lab.sampler.progress()["hunt_phase"] == "refine"
        line = lab.progress_line(0.0, [])
        assert "step 5 (refine)  users 80" in line and "10.0 req/s" in line
        lab.sampler.recent["locust"].extend([scrape(5.0, None), scrape(9.0, None)])  # a preset: no hunt
        assert lab.sampler.progress()["hunt_phase"] is None and "step 5  users" in lab.progress_line(0.0, [])
    finally:
        lab.sampler.stop()
