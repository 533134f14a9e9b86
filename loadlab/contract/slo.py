"""The one SLO judge: does a step (or any window of requests) breach the SLO?

The live step hunt in Locust, the verdict and the report all call `judge`, with the same p95
estimate (`histograms.histogram_quantile` over `LATENCY_BUCKETS_SECONDS`) and the same rule for
a window in which nothing completed: that is a breach of both signals, exactly as the alert
rules treat it (LoadTestErrorRatioHigh fires, LoadTestLatencySLOBreached sees p95 = +Inf).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .thresholds import Thresholds

LATENCY_P95 = "latency_p95"
ERROR_RATIO = "error_ratio"
NOTHING_COMPLETED = "no request completed"


@dataclass(frozen=True)
class SloJudgement:
    reasons: tuple[str, ...]  # the SLO signals breached: LATENCY_P95, ERROR_RATIO (empty: SLO met)
    detail: str  # the same in words, with the figures ("" when met)

    @property
    def breached(self) -> bool:
        return bool(self.reasons)


def judge(requests: int, failures: int, p95_ms: float | None, th: Thresholds) -> SloJudgement:
    """Judge one window: `requests` completed (failures included), `failures` of them failed, and
    their p95 in ms (None when unknown)."""
    if requests <= 0:
        return SloJudgement((LATENCY_P95, ERROR_RATIO), NOTHING_COMPLETED)
    reasons, details = [], []
    if p95_ms is not None and p95_ms > th.latency_p95_ms:
        reasons.append(LATENCY_P95)
        details.append(f"p95 {p95_ms:.0f} ms > {th.latency_p95_ms:g} ms")
    ratio = failures / requests
    if ratio > th.error_ratio:
        reasons.append(ERROR_RATIO)
        details.append(f"error ratio {ratio:.1%} > {th.error_ratio:.1%}")
    return SloJudgement(tuple(reasons), "; ".join(details))


def refuted(reasons: Sequence[str], users: int, met_at: Iterable[int]) -> bool:
    """Is a breach at `users` contradicted by the run? Yes when it breached on latency alone and a
    step with more users met the SLO (`met_at`: the users of the steps that met it): a closed loop's
    latency only grows with users, so that was a hiccup (a busy host, a warming target), not where
    the API breaks. Failures and silence are findings and never refuted."""
    return tuple(reasons) == (LATENCY_P95,) and any(u > users for u in met_at)
