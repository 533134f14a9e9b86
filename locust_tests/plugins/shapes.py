"""Named load presets and the step hunt, chosen with `--scenario NAME`.

    from locust_tests.plugins import shapes
    shapes.use_presets("login")   # this locustfile offers login's presets (and "step")

Options (each also an env var, or a key in locust.conf):
    --scenario NAME     LOCUST_SCENARIO     a preset of this locustfile, or "step"
    --time-scale F      LOCUST_TIME_SCALE   multiply durations and step holds by F (e.g. 0.05)
    --hunt KIND         LOCUST_HUNT         adaptive (default) or fixed; --step-users chooses fixed
    --start-users N     LOCUST_START_USERS  adaptive hunt: the first step's users (default 10)
    --step-users N      LOCUST_STEP_USERS   fixed hunt: users added per step (default 10)
    --step-time T       LOCUST_STEP_TIME    hold per step, e.g. 150s or 2m30s (default 150s)
    --max-users N       LOCUST_MAX_USERS    the most users a step may run (default 1000)
    --no-stop-on-break  LOCUST_NO_STOP_ON_BREAK=true   run on after the break, up to --max-users (or --max-rate)

"rate-step" is the open model's rate hunt (steps of arrival rate, `arrivals.py`), which shares
--step-time, --time-scale and --no-stop-on-break; its own options are in arrivals.py.

Locust's own --stop-timeout defaults to STOP_TIMEOUT_S (10 s) in the suite instead of 0, in
every run, with or without --scenario: when a run ends or a step goes down, each user finishes
the request it is in, so every request the target served is counted. Pass --stop-timeout 0 for
Locust's immediate stop.

Without --scenario (the stop timeout aside) nothing changes: no shape is active and -u/-r/-t behave as in plain Locust.
That is why the shape classes here are marked `abstract`: Locust activates any concrete
LoadTestShape it finds in a locustfile, so these are only activated by `--scenario`, at init, by
setting `environment.shape_class` on the master (the one process that runs shapes). A locustfile
that defines a concrete LoadTestShape of its own keeps it: `--scenario` is then not applied, and
a warning says so.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

from locust import LoadTestShape, events
from locust.env import Environment
from locust.util.timespan import parse_timespan

from loadlab.contract.scenarios import DEFAULT_START_USERS, FIXED, HUNTS, RATE_STEP, STOP_TIMEOUT_S
from loadlab.contract.thresholds import Thresholds

from .adaptive import AdaptiveHunt, AdaptivePlan, Move, bad_breach, hunt_kind
from .arrivals import RateStepShape, build_rate_step_shape, describe
from .huntshape import HuntShape
from .presets import (
    DEFAULT_MAX_USERS,
    DEFAULT_STEP_TIME_S,
    DEFAULT_STEP_USERS,
    KINDS,
    STEP,
    Preset,
    Snapshot,
    StepHunt,
    StepPlan,
    StepResult,
    Tick,
)
from .roles import is_coordinator
from .stagger import stagger_starts

logger = logging.getLogger(__name__)

_offered: dict[str, Preset] = {}
# How the log says that a locustfile's own LoadTestShape runs instead of --scenario (the lab quotes it).
OWN_SHAPE = "the locustfile defines its own LoadTestShape"


def use_presets(kind: str) -> None:
    """Offer the presets of `kind` ("registration" or "login") to --scenario in this run."""
    if kind not in KINDS:
        raise ValueError(f"unknown scenario kind {kind!r}: one of {', '.join(KINDS)}")
    _offered.update(KINDS[kind])


def scenario_names() -> list[str]:
    return [*_offered, STEP, RATE_STEP]


class PresetShape(LoadTestShape):
    """Constant users for the preset's (time-scaled) duration, then stop."""

    abstract = True  # activated by --scenario only (see the module docstring)

    def __init__(self, preset: Preset, time_scale: float = 1.0) -> None:
        super().__init__()
        self.preset = preset
        self.time_scale = time_scale

    def tick(self) -> Tick:
        return self.preset.tick(self.get_run_time(), self.time_scale)


class StepShape(HuntShape):
    """The step hunt, adaptive (`AdaptivePlan`: coarse to fine, see adaptive.py) or fixed
    (`StepPlan`: equal steps): each step held long enough to reach steady state and judged
    against the SLO from Locust's own stats; it stops by itself once the break is confirmed."""

    abstract = True  # activated by --scenario step only

    def __init__(self, plan: StepPlan | AdaptivePlan, thresholds: Thresholds, stop_on_break: bool = True) -> None:
        super().__init__()
        self.hunt: StepHunt | AdaptiveHunt
        if isinstance(plan, AdaptivePlan):
            self.hunt = AdaptiveHunt(plan, thresholds, stop_on_break, on_result=self._log_result, on_move=self._log_move)
        else:
            self.hunt = StepHunt(plan, thresholds, stop_on_break, on_result=self._log_result)

    def tick(self) -> Tick:
        if self._before_any_user():
            # The first step's clock starts with its users: the login scenario seeds its accounts
            # in test_start, after the first tick, and on a busy host that can outlast a short step
            # (which would then be judged, and end the hunt, with nothing completed).
            self.reset_time()
        ended_before = self.hunt.done
        result = self.hunt.tick(self.get_run_time(), self._snapshot)
        if result is None and not ended_before and isinstance(self.hunt, StepHunt):
            self._log_end()
        return result

    def _before_any_user(self) -> bool:
        return (self.runner is not None and not self.hunt.results and not self.hunt.done
                and getattr(self.runner, "user_count", 1) == 0)

    def _snapshot(self) -> Snapshot:
        assert self.runner is not None  # set by Locust (or _on_init) before the first tick
        total = self.runner.stats.total
        return Snapshot(total.num_requests, total.num_failures, dict(total.response_times), total.total_response_time)

    def _log_result(self, result: StepResult) -> None:
        verdict = f"BREACH ({result.reason})" if result.breached else "within SLO"
        p95 = "-" if result.p95_ms is None else f"{result.p95_ms:.0f}"
        logger.info("step %d: %d users, %.1f req/s, p95 %s ms, errors %.2f%% -> %s", result.step, result.users,
                    result.rps, p95, 100 * result.error_ratio, verdict)

    def _log_move(self, result: StepResult, move: Move) -> None:
        hunt = self.hunt
        assert isinstance(hunt, AdaptiveHunt)
        if move.users is None:
            logger.info("adaptive hunt: done after %d steps: %s", len(hunt.results), move.why)
            return
        if move.drain_s > 0 and bad_breach(result, hunt.thresholds):
            logger.warning("adaptive hunt: step %d (%d users) breached badly (%s): backing off to 0 users for %.1f s "
                           "to let the target drain, then %s at %d users", result.step, result.users, result.reason,
                           move.drain_s, move.phase, move.users)
            return
        logger.info("adaptive hunt: %s -> %d users (%s)", move.phase, move.users, move.why)

    def _log_end(self) -> None:
        hunt = self.hunt
        assert isinstance(hunt, StepHunt)
        if hunt.break_step is None:
            logger.info("step hunt: reached %d users without breaching the SLO", hunt.plan.max_users)
        else:
            logger.info("step hunt: the SLO broke at step %d (%d users); %s", hunt.break_step + 1,
                        hunt.plan.users(hunt.break_step),
                        "stopping" if hunt.stop_on_break else f"ran on to {hunt.plan.max_users} users")


def build_shape(name: str, options: Any) -> LoadTestShape:
    """The shape for --scenario `name` (ValueError naming the choices if there is none)."""
    from locust_tests.config import test_config

    time_scale = float(getattr(options, "time_scale", 1.0))
    if not math.isfinite(time_scale) or time_scale <= 0:  # inf would hold the first step forever
        raise ValueError(f"--time-scale must be a finite number above 0 (got {time_scale:g})")
    if name == STEP:
        try:
            step_time = parse_timespan(str(options.step_time))
        except ValueError:
            raise ValueError(f"--step-time {options.step_time!r} is not a duration: use e.g. 150, 150s or 2m30s") from None
        hold = float(step_time) * time_scale
        max_users = int(options.max_users)
        plan: StepPlan | AdaptivePlan
        if hunt_kind(options) == FIXED:
            plan = StepPlan(int(options.step_users or DEFAULT_STEP_USERS), hold, max_users)
        else:
            start = getattr(options, "start_users", None)
            plan = AdaptivePlan(start_users=int(start or DEFAULT_START_USERS), step_time_s=hold, max_users=max_users)
        return StepShape(plan, test_config.THRESHOLDS, not options.no_stop_on_break)
    if name == RATE_STEP:
        return build_rate_step_shape(options, time_scale)
    if name not in _offered:
        raise ValueError(f"unknown --scenario {name!r}: this locustfile offers {', '.join(scenario_names())}")
    return PresetShape(_offered[name], time_scale)


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    # Only the default: --stop-timeout, LOCUST_STOP_TIMEOUT and locust.conf still set it.
    parser.set_defaults(stop_timeout=STOP_TIMEOUT_S)
    add = parser.add_argument
    add("--scenario", default="", env_var="LOCUST_SCENARIO", include_in_web_ui=False,
        help="Run a named preset (registration: normal, heavy, spike; login: baseline, stress, breaking-point; "
             "either: step, or rate-step for the open model's rate hunt). Without it, -u/-r/-t work as usual")
    add("--time-scale", type=float, default=1.0, env_var="LOCUST_TIME_SCALE", include_in_web_ui=False,
        help="Multiply a preset's duration and the step hold by this (e.g. 0.05 for a smoke run)")
    add("--hunt", choices=HUNTS, default=None, env_var="LOCUST_HUNT", include_in_web_ui=False,
        help="Step hunt: adaptive (default: x2 users while linear, then refine around the knee and confirm the "
             "break) or fixed (+--step-users every step); giving --step-users chooses fixed")
    add("--start-users", type=int, default=None, env_var="LOCUST_START_USERS", include_in_web_ui=False,
        help=f"Adaptive step hunt: users of the first step (default {DEFAULT_START_USERS})")
    add("--step-users", type=int, default=None, env_var="LOCUST_STEP_USERS", include_in_web_ui=False,
        help=f"Fixed step hunt: users added per step (default {DEFAULT_STEP_USERS}); giving it chooses --hunt fixed")
    add("--step-time", default=f"{DEFAULT_STEP_TIME_S:g}s", env_var="LOCUST_STEP_TIME", include_in_web_ui=False,
        help=f"Step hunt: hold per step, e.g. 150s, 2m30s (default {DEFAULT_STEP_TIME_S:g}s, before --time-scale)")
    add("--max-users", type=int, default=DEFAULT_MAX_USERS, env_var="LOCUST_MAX_USERS", include_in_web_ui=False,
        help=f"Step hunt: the most users a step may run (default {DEFAULT_MAX_USERS})")
    add("--no-stop-on-break", action="store_true", default=False, env_var="LOCUST_NO_STOP_ON_BREAK",
        include_in_web_ui=False,
        help="Step hunt: keep stepping up to --max-users after the SLO breaks (default: stop once the break is "
             "confirmed; the adaptive hunt never goes past a bad breach)")


@events.init.add_listener
def _stagger_hunt_users(environment: Environment, **_: Any) -> None:
    # In every process that runs users (the workers too): see stagger.py.
    options = environment.parsed_options
    if options is not None and options.scenario == STEP:
        stagger_starts(environment.user_classes)


@events.init.add_listener
def _on_init(environment: Environment, runner: Any = None, **_: Any) -> None:
    options = environment.parsed_options
    if options is None or not options.scenario or not is_coordinator(environment):
        return
    own = environment.shape_class
    if own is not None and not isinstance(own, (PresetShape, StepShape)):
        # A concrete LoadTestShape in the locustfile is the user's choice of load: it wins.
        logger.warning("%s %s: it runs as written, and --scenario %s is not applied (no step hunt)",
                       OWN_SHAPE, type(own).__name__, options.scenario)
        return
    try:
        shape = build_shape(options.scenario, options)
    except ValueError as exc:
        logger.error("%s", exc)
        sys.exit(1)
    shape.runner = environment.runner
    environment.shape_class = shape
    # With --class-picker the web UI can switch between this preset and plain -u/-r ("Default").
    environment.available_shape_classes = {**(environment.available_shape_classes or {}), type(shape).__name__: shape}
    ignored = [flag for flag, value in (("-u", options.num_users), ("-r", options.spawn_rate), ("-t", options.run_time))
               if value]
    if ignored:
        logger.warning("--scenario %s sets users, spawn rate and duration itself: %s ignored", options.scenario,
                       ", ".join(ignored))
    if isinstance(shape, StepShape):
        plan = shape.hunt.plan
        th = shape.hunt.thresholds
        if isinstance(plan, AdaptivePlan):
            logger.info("scenario step (adaptive hunt): from %d users, x%g while linear, then refine around the knee "
                        "and confirm the break; %g s per step, at most %d users, each new user starting within one "
                        "think time; SLO p95 <= %g ms, errors <= %.1f%%",
                        plan.start_users, plan.growth, plan.step_time_s, plan.max_users, th.latency_p95_ms,
                        100 * th.error_ratio)
        else:
            logger.info("scenario step (fixed hunt): +%d users every %g s up to %d users, each new user starting "
                        "within one think time; SLO p95 <= %g ms, "
                        "errors <= %.1f%%", plan.step_users, plan.step_time_s, plan.max_users, th.latency_p95_ms,
                        100 * th.error_ratio)
    elif isinstance(shape, RateStepShape):
        describe(shape, options)
    elif isinstance(shape, PresetShape):
        preset = shape.preset
        logger.info("scenario %s: %d users at %g/s for %g s", preset.name, preset.users, preset.spawn_rate,
                    preset.duration_s * shape.time_scale)
