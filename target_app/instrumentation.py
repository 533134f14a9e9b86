"""Moved to `loadlab.instrument` (the public instrumentation library); kept so old imports work."""

from loadlab.instrument import UNMATCHED, HttpMetrics, instrument, shared_metrics

__all__ = ["UNMATCHED", "HttpMetrics", "instrument", "shared_metrics"]
