"""What every hunting LoadTestShape shares: the user hunt's (`shapes.StepShape`) and the rate
hunt's (`arrivals.RateStepShape`). The exporter reads `current_step` and `hunt_phase` from any shape
that has them."""

from __future__ import annotations

import dataclasses
from typing import Any

from locust import LoadTestShape


class HuntShape(LoadTestShape):
    """A shape driven by a hunt (a dataclass with `current_step`, `phase` and per-run fields)."""

    abstract = True
    hunt: Any

    @property
    def current_step(self) -> int:
        """1-based index of the running step (exported as the gauge locust_step)."""
        return int(self.hunt.current_step)

    @property
    def hunt_phase(self) -> str:
        """fixed | grow | refine | confirm | drain | done (exported as locust_hunt_phase)."""
        return str(self.hunt.phase)

    def reset_time(self) -> None:
        super().reset_time()
        # A new test (e.g. Start pressed again in the web UI) hunts from the first step again:
        # replace() keeps the settings and gives the init=False per-run fields fresh defaults.
        self.hunt = dataclasses.replace(self.hunt)
