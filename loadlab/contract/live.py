"""The live view's file: what the lab runner writes while a test runs and Locust's web UI shows.

The lab (`loadlab up`) analyses its run directory every few seconds with the same code as the
final verdict (`loadlab.live`) and writes `live.json` there, atomically. It tells Locust where
with the environment variable `LOADLAB_RUN_DIR`. The Locust suite's Lab tab
(`locust_tests.plugins.labtab`) serves it, and the panel the lab drew from it (`live.html`, with the
suite's Locust-free `labview`), so drawing costs the load generator nothing; without the variable
(plain `locust -f ...`) the tab draws what Locust itself knows. Both sides build the same *view*, a
JSON object with these keys (all times are Unix seconds):

    schema          SCHEMA
    source          "lab" (written by the lab runner) or "locust" (Locust's own stats only)
    generated_at    when the view was computed
    state           "ready" (no test yet), "running" or "stopped"
    current         {"step": n, "users": u, "since": t} while a step runs, else null
    steps           the finished steps as the SLO judge saw them: step, users, start, rps, p95_ms,
                    error_ratio, target_cpu_cores, target_cores_available, generator_cpu_cores,
                    generator_cores_available, slo_met, slo_detail
    summary         the verdict's lines, exactly as the final verdict prints them
    knee, break     {"time": t, "users": u} once known, else null (chart markers)
    series          {key: [[t, value], ...]} for the keys of SERIES (a key may be missing)
    cores_available {"target": c, "generator": c} (null when unknown)
    missing         {key of SERIES: why it has no points} and
    notes           [lines about sources that are down or absent]
    slo             {"latency_p95_ms": ..., "error_ratio": ...}
    report          "report.html" once the lab wrote one for the finished test, else null
    verdict         (lab only) verdict.json of the finished steps
"""

from __future__ import annotations

LIVE_FILE = "live.json"
LIVE_PANEL_FILE = "live.html"  # the same view drawn (the tab's panel), so Locust's process only serves it
RUN_DIR_ENV = "LOADLAB_RUN_DIR"
SCHEMA = 1

# How often the lab recomputes the view, and how often the tab fetches it (seconds).
REFRESH_S = 3.0
# A view older than this means the lab's analysis stopped (the runner was killed, say).
STALE_AFTER_S = 30.0

# The charted series: key -> (label, unit). One time axis for all of them.
SERIES: dict[str, tuple[str, str]] = {
    "users": ("users", "users"),
    "rps": ("throughput", "req/s"),
    "p95_ms": ("p95 latency (Locust, ~10 s window)", "ms"),
    "target_cpu_cores": ("target CPU", "cores"),
    "target_memory_bytes": ("target resident memory", "bytes"),
    "generator_cpu_cores": ("load generator (Locust) CPU", "cores"),
}
