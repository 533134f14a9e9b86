"""The one place where SLO and saturation thresholds live.

Alert rules, recording rules and dashboards are generated from these values
(`python -m monitoring.generate`), the Locust suite reads the SLO from here, and
the breaking-point analysis judges steps against the same numbers, so a threshold
changed here changes all of them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Thresholds:
    # SLO: a step or a moment breaches when p95 latency exceeds this. 500 ms is a
    # common interactive-API objective and sits on a histogram bucket boundary, so
    # histogram_quantile interpolation stays accurate around it.
    latency_p95_seconds: float = 0.5
    # SLO: failed requests / all requests. 1% is a typical availability budget for a lab.
    error_ratio: float = 0.01
    # A component is CPU-saturated at this fraction of the cores available to it:
    # min(host cores, its busy processes), because one Python process (a gunicorn
    # sync worker, a Locust process) can never use more than one core.
    cpu_saturation_fraction: float = 0.9
    # The target's resident memory above which TargetMemoryHigh fires. 1 GiB is far
    # above the bundled target's normal footprint, so crossing it means a leak or a
    # runaway worker count, not ordinary load.
    target_memory_limit_bytes: int = 1024**3
    # The knee: throughput per user has fallen below this fraction of its best value
    # of the run while users kept rising. 0.7 ignores noise but catches a plateau.
    plateau_fraction: float = 0.7
    # Marginal throughput per added user below this fraction of the initial
    # per-user throughput means adding users stopped adding throughput (the knee).
    marginal_gain_fraction: float = 0.25
    # Prometheus scrape interval for load tests: short, so a minute-long run has
    # enough points; rate windows are always at least 4 intervals.
    scrape_interval_seconds: int = 2
    # The throughput per user behind LoadTestThroughputPlateau is averaged over this
    # window (10 scrapes): it is a ratio of two noisy rates, and a shorter window lets
    # a light run with a handful of users "fall" 30% by chance, while a one-minute
    # time-scaled run still shows its knee.
    plateau_window_seconds: int = 20
    # "Users still rising" for the plateau alert: users now above their minimum of this
    # window. Two minutes spans a step hold of the step hunt, so a knee found in the
    # middle of a hold still counts.
    users_rising_window_seconds: int = 120
    # "Best of the run" for the plateau alert is the best throughput per user within
    # this lookback: PromQL cannot see where a run started. 15 min covers every
    # time-scaled run; a longer run compares against its last 15 minutes, which a knee
    # still satisfies because throughput per user only falls after the knee.
    plateau_lookback_seconds: int = 900
    # `for:` durations of the alerts, in seconds. Short enough to fire inside a
    # time-scaled run, long enough that one slow scrape does not page anybody.
    alert_for_seconds: dict[str, int] = field(
        default_factory=lambda: {
            "TargetDown": 10,
            "LoadTestErrorRatioHigh": 10,
            "LoadTestLatencySLOBreached": 10,
            "LoadTestThroughputPlateau": 10,
            "TargetCPUSaturated": 10,
            "TargetMemoryHigh": 30,
            "LoadGeneratorSaturated": 10,
            # Not a breaking-point alert: the sidecar being gone would silence the CPU
            # and memory alerts, so its absence is an alert of its own.
            "LoadLabSidecarDown": 10,
        }
    )

    @property
    def latency_p95_ms(self) -> float:
        return self.latency_p95_seconds * 1000.0

    @property
    def rate_window_seconds(self) -> int:
        return 4 * self.scrape_interval_seconds


DEFAULT_THRESHOLDS = Thresholds()
