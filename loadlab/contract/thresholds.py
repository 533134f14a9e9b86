"""The one place where SLO and saturation thresholds live, and how a run chooses its own.

Alert rules, recording rules and dashboards are generated from these values
(`python -m monitoring.generate`), the Locust suite's step hunt and the breaking-point analysis
judge steps against the same numbers (`loadlab.contract.slo`), so a threshold changed here
changes all of them together.

A run's thresholds are chosen once, by `resolve()`: these defaults, then the suite's environment
variables (`SLO_P95_MS`, `SLO_ERROR_RATIO`, `STEP_TRANSIENT_FRACTION`), then the `loadlab` flags
(`--slo-p95-ms`, `--slo-error-ratio`). The lab hands the result to every process it starts as
those same variables (`to_env`) and records it in run.json and verdict.json (`as_dict`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


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
    # The first part of each step is a transient (users still arriving, queues filling) that
    # neither the hunt nor the analysis judges: with 1-3 s think time a closed loop settles
    # within a few cycles; 0.3 of a hold is 45 s of a 150 s step, 4.5 s of a 15 s time-scaled one.
    step_transient_fraction: float = 0.3
    # Marginal throughput per added user below this fraction of the initial
    # per-user throughput means adding users stopped adding throughput (the knee).
    marginal_gain_fraction: float = 0.25
    # Open model (arrival rate): a step is not sustained when the requests it completed fall
    # short of the arrivals it scheduled by more than this fraction. Arrivals and completions are
    # counted over the same window, so Poisson noise cancels out; what is left is the requests
    # in flight at the window's edges, a few percent at most while the API keeps up.
    throughput_shortfall_fraction: float = 0.05
    # Open model: a step is not sustained when its mean corrected latency in the second half of
    # the hold exceeds the first half's by this fraction (and by at least a tenth of the p95 SLO):
    # a queue that keeps growing instead of draining.
    latency_growth_fraction: float = 0.5
    # The adaptive step hunt grows the load geometrically while each step stays "clearly
    # linear": its throughput reaches this fraction of the light-load rate per user times its
    # users (X >= 0.85 g0 N), i.e. response time has grown by less than ~15 % of the cycle R+Z.
    # Step-to-step noise of a time-scaled hold is a few percent, so 0.85 does not stop a light
    # step by chance, and a step past the knee (X/(g0 N) = N*/N) fails it from ~1.15 N* at most.
    linear_fraction: float = 0.85
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
            # One machine of several (its `instance`): an API's fleet, a load machine.
            "TargetInstanceCPUSaturated": 10,
            "LoadGeneratorInstanceSaturated": 10,
            "LoadTestThroughputBelowOffered": 10,
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


class ThresholdError(ValueError):
    """A threshold given by a variable or a flag that is not usable; the message names it."""


# Variable -> (field, low, high, to field units). The variables are the Locust suite's own.
_ENV: dict[str, tuple[str, float, float, float]] = {
    "SLO_P95_MS": ("latency_p95_seconds", 1.0, 3_600_000.0, 1e-3),
    "SLO_ERROR_RATIO": ("error_ratio", 0.0, 1.0, 1.0),
    "STEP_TRANSIENT_FRACTION": ("step_transient_fraction", 0.0, 0.9, 1.0),
}
# The figures a verdict records (and run.json hands to `loadlab analyze`): key -> (field, factor).
_RECORDED: dict[str, tuple[str, float]] = {
    "latency_p95_ms": ("latency_p95_seconds", 1e-3),
    "error_ratio": ("error_ratio", 1.0),
    "cpu_saturation_fraction": ("cpu_saturation_fraction", 1.0),
    "marginal_gain_fraction": ("marginal_gain_fraction", 1.0),
    "plateau_fraction": ("plateau_fraction", 1.0),
    "step_transient_fraction": ("step_transient_fraction", 1.0),
    "throughput_shortfall_fraction": ("throughput_shortfall_fraction", 1.0),
    "latency_growth_fraction": ("latency_growth_fraction", 1.0),
}


def check(name: str, raw: Any, low: float, high: float) -> float:
    """`raw` as a finite number in [low, high], else ThresholdError naming `name`."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        raise ThresholdError(f"{name}={raw!r} is not valid: expected a number between {low:g} and {high:g}")
    return value


def resolve(environ: Mapping[str, str], *, p95_ms: float | None = None, error_ratio: float | None = None,
            base: Thresholds = DEFAULT_THRESHOLDS) -> Thresholds:
    """`base`, then the variables set in `environ`, then the flags given (a flag beats its variable)."""
    changes: dict[str, Any] = {}
    for var, (name, low, high, factor) in _ENV.items():
        raw = environ.get(var, "")
        if raw != "":
            changes[name] = check(f"environment variable {var}", raw, low, high) * factor
    for flag, value, var in (("--slo-p95-ms", p95_ms, "SLO_P95_MS"), ("--slo-error-ratio", error_ratio, "SLO_ERROR_RATIO")):
        if value is not None:
            name, low, high, factor = _ENV[var]
            changes[name] = check(flag, value, low, high) * factor
    return dataclasses.replace(base, **changes)


def to_env(th: Thresholds) -> dict[str, str]:
    """The variables that make the Locust suite (the live hunt) use exactly `th`."""
    return {var: repr(round(getattr(th, name) / factor, 9)) for var, (name, _, _, factor) in _ENV.items()}


def as_dict(th: Thresholds) -> dict[str, float]:
    """The thresholds a verdict was judged against, as verdict.json and run.json record them."""
    return {key: round(getattr(th, name) / factor, 9) for key, (name, factor) in _RECORDED.items()}


def from_dict(recorded: Mapping[str, Any], base: Thresholds = DEFAULT_THRESHOLDS) -> Thresholds:
    """`base` with the figures an `as_dict()` recorded (unknown keys ignored, bad values refused)."""
    changes: dict[str, Any] = {}
    for key, (name, factor) in _RECORDED.items():
        if key in recorded and recorded[key] is not None:
            changes[name] = check(f"thresholds.{key}", recorded[key], 0.0, math.inf) * factor
    return dataclasses.replace(base, **changes)
