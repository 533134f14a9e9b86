"""Synthetic runs with known answers: a closed-loop model of a W-worker server.

X(N) = min(N / (S + Z), W / S); above the knee the response time is N / X - Z.
"""

from __future__ import annotations

import csv
from pathlib import Path

from loadlab.steps import StepSummary


def model_step(index: int, users: int, workers: int, service_s: float, think_s: float, *, step_s: float = 10.0,
               t0: float = 1_700_000_000.0, **fields) -> StepSummary:
    capacity = workers / service_s
    rps = min(users / (service_s + think_s), capacity)
    response = max(service_s, users / rps - think_s)
    requests = int(rps * step_s * 0.7)
    start = t0 + index * step_s
    return StepSummary(index=index, users=users, start=start, hold_start=start + 0.3 * step_s,
                       end=start + step_s, rps=rps, rps_median=rps, requests=requests, failures=0, error_ratio=0.0,
                       p50_ms=response * 1000, p95_ms=response * 1000 * 1.05, p95_source="model",
                       mean_response_ms=response * 1000, **fields)


def model_steps(users: list[int], workers: int = 2, service_s: float = 0.05, think_s: float = 0.5,
                **fields) -> list[StepSummary]:
    return [model_step(i, u, workers, service_s, think_s, **fields) for i, u in enumerate(users)]


HEADER = ["Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", "50%", "66%", "75%", "80%",
          "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%", "Total Request Count", "Total Failure Count",
          "Total Median Response Time", "Total Average Response Time", "Total Min Response Time",
          "Total Max Response Time", "Total Average Content Size"]


def write_history(path: Path, seconds: list[tuple[int, float, float, float]], t0: int = 1_700_000_000,
                  full_history: bool = True) -> None:
    """Write a Locust-format stats history: one (users, rps, fail_per_s, p95_ms) tuple per second."""
    total = failures = 0.0
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        for i, (users, rps, fail, p95) in enumerate(seconds):
            total += rps
            failures += fail
            base = [t0 + i, users]
            pct = [round(p95 / 2), 0, 0, 0, 0, round(p95), 0, 0, 0, 0, 0]
            tail = [int(total), int(failures), 10, 10.0, 1, 100, 20.0]
            if full_history:
                writer.writerow(base + ["POST", "/client_login", f"{rps:2f}", f"{fail:2f}"] + pct + tail)
            writer.writerow(base + ["", "Aggregated", f"{rps:2f}", f"{fail:2f}"] + pct + tail)
