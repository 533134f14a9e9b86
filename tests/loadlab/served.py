"""The truth of one run against a sleeping ground-truth server, from what the server itself measured.

X = W/S assumes a worker is held exactly S per login. On a busy host it is held longer: after its
sleep the worker waits for a core to run Flask and answer (measured on this shared 2-core box:
101-102 ms for S = 100 ms when quiet, more under load), so the server's real capacity is the
utilization law on its pool of W workers, all busy on the plateau: X = W / D, with D the mean
time the server spent per login, from its own request-duration histogram (`_sum` / `_count`,
scraped by the lab into samples.jsonl), independent of Locust's counts. That histogram times Flask's
part of a login only; a sync worker is held from accepting the connection to closing it (parsing,
writing, closing), and the ground-truth server's worker reports that whole time
(`app_ground_truth_held_seconds`; the lab's sampler keeps `app_*` metrics), which D is then. The knee
in users is where the light-load line meets that plateau: N* = X (R0 + Z), with R0 the light-load response
Locust measured (the steps well below the knee) and Z the think time the test set.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from loadlab.history import Samples, read_samples, scrape_value

DURATION = "http_request_duration_seconds"
HELD = "app_ground_truth_held_seconds"  # tests/loadlab/ground_truth_app.py: accept to close, per login
LOGIN = {"endpoint": "/client_login"}


@dataclass(frozen=True)
class ServedTruth:
    service_s: float  # D: the server's mean time a worker is held per login over the capacity's steps
    light_response_s: float  # R0: Locust's mean response at light load
    capacity_rps: float  # X = W / D
    knee_users: float  # N* = X (R0 + Z)
    basis: str
    handler_s: float | None = None  # Flask's part of D (the request histogram), when D is the held time

    def __str__(self) -> str:
        handler = f" (Flask's part {self.handler_s * 1000:.1f} ms)" if self.handler_s else ""
        return (f"server-side D = {self.service_s * 1000:.1f} ms{handler}, R0 = {self.light_response_s * 1000:.0f} ms: "
                f"truth X = {self.capacity_rps:.1f} req/s, N* = {self.knee_users:.1f} users ({self.basis})")


def served_seconds(samples: Samples, start: float, end: float, source: str = "target",
                   metric: str = DURATION) -> tuple[float, float]:
    """(seconds the server spent on logins, logins it served) between two times, from the target's scrapes
    (`source`: one machine's of a fleet, e.g. target_metrics_2; `metric`: the request histogram, or HELD)."""
    inside = [sc for sc in samples.scrapes(source) if start <= sc.t <= end]
    if len(inside) < 2:
        return 0.0, 0.0
    first, last = inside[0], inside[-1]
    match = LOGIN if metric == DURATION else None
    values = [scrape_value(sc, f"{metric}_{kind}", match) for sc in (first, last) for kind in ("sum", "count")]
    if any(v is None for v in values):
        return 0.0, 0.0
    s0, c0, s1, c1 = (v or 0.0 for v in values)
    return (s1 - s0, c1 - c0) if c1 > c0 else (0.0, 0.0)


def served_truth(run_dir: Path, verdict: dict, workers: int, think_s: float, nominal_knee: float,
                 light_up_to: float | None = None) -> ServedTruth:
    """The run's truth: D over the holds of the steps the capacity rests on (from the knee up to the
    break, in order of users), else over every hold; R0 over the steps with at most `light_up_to`
    users (default: half the nominal knee)."""
    samples = read_samples(run_dir / "samples.jsonl")
    steps = sorted(verdict["steps"], key=lambda s: (s["users"], s["start"]))
    knee = verdict["knee"]["users"] if verdict.get("knee") else None
    brk = verdict["break"]["users"] if verdict.get("break") else None
    plateau = [s for s in steps if knee is not None and s["users"] >= knee and (brk is None or s["users"] < brk)]
    basis = "D over the plateau's holds"
    held = plateau
    if sum(c for _, c in mean_time(samples, plateau, DURATION)) <= 0:
        held, basis = steps, "D over every hold"
    seconds, count = (sum(v) for v in zip(*mean_time(samples, held, DURATION)))
    assert count > 0, f"no server-side login durations in {run_dir / 'samples.jsonl'} (target scrapes)"
    light_up_to = 0.5 * nominal_knee if light_up_to is None else light_up_to
    light = [s["mean_response_ms"] for s in steps if s["users"] <= light_up_to and s["mean_response_ms"]]
    assert light, f"no step at or below {light_up_to:.0f} users to measure the light-load response"
    d, r0 = seconds / count, statistics.median(light) / 1000.0
    handler = None
    held_seconds, held_count = (sum(v) for v in zip(*mean_time(samples, held, HELD)))
    if held_count > 0:  # the worker's whole time per login (a ground-truth server that reports it)
        handler, d, basis = d, held_seconds / held_count, basis + ", accept to close"
    x = workers / d
    return ServedTruth(d, r0, x, x * (r0 + think_s), basis, handler)


def mean_time(samples: Samples, steps: list[dict], metric: str) -> list[tuple[float, float]]:
    """`served_seconds` over each step's hold."""
    return [served_seconds(samples, s["hold_start"], s["end"], metric=metric) for s in steps] or [(0.0, 0.0)]



# The truth of a fleet behind a round-robin balancer (tests/loadlab/test_fleet.py, test_scale_out.py):
# each of its machines gets an equal share of the requests, so the fleet saturates when its slower
# machine does, at that many times its capacity: X = machines / D_slow, with D_slow the time the slower
# machine's one worker spent per login, from its own histogram over the holds the capacity rests on
# (the knee and up). Held to 15 %: D is measured inside the app; the worker's time to accept, parse
# and answer each request (a few milliseconds of 120 ms on a busy host), and the moments it idles
# between requests while the balancer's next one is on its way, are not in it.
FLEET_TOLERANCE = 0.15


def fleet_truth(samples: Samples, verdict: dict, slow_source: str, machines: int = 2) -> float | None:
    """X = machines / D_slow (req/s) over the steps from the verdict's knee up; None without a knee or
    without the slower machine's login durations there. `slow_source`: its --target-metrics' source
    in samples.jsonl (e.g. target_metrics_2)."""
    knee = verdict["knee"]["users"] if verdict.get("knee") else None
    if knee is None:
        return None
    served = [served_seconds(samples, s["hold_start"], s["end"], source=slow_source)
              for s in verdict["steps"] if s["users"] >= knee]
    seconds, count = sum(t for t, _ in served), sum(c for _, c in served)
    return machines / (seconds / count) if count > 0 and seconds > 0 else None
