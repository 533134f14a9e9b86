"""Open-model load: requests arrive at a scheduled rate, whatever the API does.

    locust -f locust_tests/scenarios/login_test.py --headless --arrival-rate 30 --run-time 1m
    locust -f locust_tests/scenarios/login_test.py --headless --scenario rate-step --step-rate 5 --max-rate 100

Options (each also an env var, or a key in locust.conf):
    --arrival-rate R      LOCUST_ARRIVAL_RATE     R arrivals per second, constant, for --run-time (or until stopped)
    --start-rate R        LOCUST_START_RATE       the adaptive rate hunt (the default): its first step (default 5)
    --step-rate R         LOCUST_STEP_RATE        the fixed rate hunt (= --scenario rate-step --hunt fixed): +R arrivals/s per step
    --max-rate M          LOCUST_MAX_RATE         the rate hunt's last step (default 500)
    --arrivals KIND       LOCUST_ARRIVALS         poisson (default: independent visitors) or uniform (evenly spaced)
    --max-concurrency C   LOCUST_MAX_CONCURRENCY  requests in flight at most, over all load processes (default 100)
    --arrival-timeout S   LOCUST_ARRIVAL_TIMEOUT  an arrival still waiting for a free slot after S seconds is dropped
The rate hunt shares --hunt, --step-time, --time-scale and --no-stop-on-break with the user hunt (shapes.py):
adaptive by default (x2 while sustained, refine to 4 %, confirm; rateadaptive.py), fixed with
--hunt fixed or --step-rate.

How it runs. Locust spawns C users, the *request slots*, which its own dispatch splits over the
load processes. Each slot runs a copy of the locustfile's User class (same name, same client,
same on_start) whose only task is: take the next arrival, then run one of the class's own tasks.
One scheduler greenlet per load process issues that process's share of the rate at scheduled
times into a queue. An arrival that finds every slot of its process busy waits in the queue and
counts as *late*; one that waited longer than --arrival-timeout is *dropped*, and arrivals still
waiting when the test ends are dropped too: every arrival is counted, none silently lost.

Requests go through the scenario's own client, so Locust's stats, CSV and HTML stay exactly as
Locust measures them (from when a request was sent). The latency from the arrival's *scheduled*
start (corrected for coordinated omission) is recorded beside them in `openmodel.OpenStats`, which
a worker ships to the master with Locust's own stats report; the master's exporter serves the
totals (`collector.py`). The master splits the rate over its workers in proportion to their slots.

Without --arrival-rate, --step-rate or --scenario rate-step nothing here is active.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from inspect import isclass
from typing import Any

import gevent
from gevent.event import Event
from gevent.queue import Queue
from locust import LoadTestShape, constant, events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from locust.user.task import LOCUST_STATE_RUNNING, LOCUST_STATE_WAITING
from locust.util.timespan import parse_timespan

from loadlab.contract.openmodel import DROPPED_TEST_ENDED, DROPPED_WAITED_TOO_LONG
from loadlab.contract.scenarios import DEFAULT_START_RATE, FIXED, RATE_STEP
from loadlab.contract.thresholds import Thresholds

from .huntshape import HuntShape
from .openmodel import (
    ARRIVALS,
    DEFAULT_ARRIVAL_TIMEOUT_S,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RATE,
    DEFAULT_STEP_RATE,
    ArrivalClock,
    OpenStats,
    RateHunt,
    RatePlan,
    RateSnapshot,
    RateStepResult,
    shares,
)
from .rateadaptive import AdaptiveRateHunt, RateAdaptivePlan, RateMove, bad_breach, rate_hunt_kind
from .roles import is_coordinator

logger = logging.getLogger(__name__)

MESSAGE = "loadlab_arrival_rate"  # master -> worker: this worker's share of the rate
REPORT_KEY = "loadlab_open_model"  # worker -> master: in Locust's own stats report
# Spawn every slot within a second, but never faster than Locust is comfortable with.
MAX_SPAWN_RATE = 100.0
# How long the end of a shape waits for the arrivals in flight to complete and be reported.
WIND_DOWN_S = 10.0
# A scheduler that wakes up late issues every arrival it owes at once (each with its own
# scheduled time); it yields to the users every this many arrivals of such a burst.
BURST = 50

clock = time.perf_counter  # scheduled times, lateness: one monotonic clock


def open_mode(options: Any) -> bool:
    """Whether these options ask for an open-model (arrival-rate) run."""
    return options is not None and bool(getattr(options, "arrival_rate", 0) or getattr(options, "step_rate", 0)
                                        or getattr(options, "start_rate", None)
                                        or getattr(options, "scenario", "") == RATE_STEP)


class OpenLoad:
    """The open model in one Locust process (the coordinator's side, the load side, or both when
    standalone). `collector.py` reads `active`, `offered` and `stats` of the coordinator's."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.active = False  # the current (or last) test was an open-model one
        self.stats = OpenStats()
        # Coordinator: the rate the shape asks for, and the rate offered since spawning completed.
        self.target = 0.0
        self.offered = 0.0
        self.spawned = False
        self._sent: tuple | None = None
        # Load process: this process's share of the rate, its queue and the slots waiting on it.
        self.share = 0.0
        self.phase = 0.0
        self._changed = False
        self._wakeup = Event()
        self.queue: Queue | None = None
        self.idle = 0
        self.timeout = DEFAULT_ARRIVAL_TIMEOUT_S
        self.scheduler: gevent.Greenlet | None = None
        self.lateness: dict[Any, float] = {}  # running slot greenlet -> how late its arrival started
        self.counted = {"scheduled": 0, "late": 0, "dropped": 0}  # this test, this process (for its log line)
        self._wind_down_at: float | None = None
        self.expected = 0.0  # arrivals the offered shares promised so far (rate x time), this process
        self._share_since = clock()
        self.reported_idle: dict[str, bool] = {}  # master: worker -> its last report said it was done

    # ------------------------------------------------------------ coordinator

    def offer(self, rate: float) -> None:
        """The total arrival rate the shape wants now; offered once every slot has spawned."""
        self.target = rate
        if self.spawned:
            self._apply()

    def _apply(self) -> None:
        rate = self.target
        runner = self.environment.runner
        if isinstance(runner, MasterRunner):
            workers = sorted(runner.clients.ready + runner.clients.spawning + runner.clients.running,
                             key=lambda node: runner.get_worker_index(node.id))
            slots = [node.user_count for node in workers]
            key = (rate, tuple(node.id for node in workers), tuple(slots))
            if key != self._sent:
                split = shares(rate, slots)
                for node, (share, phase) in zip(workers, split):
                    runner.send_message(MESSAGE, {"rate": share, "phase": phase}, client_id=node.id)
                if rate:
                    logger.info("open model: offering %g arrivals/s over %d load processes (%s per s)", rate,
                                len(workers), ", ".join(f"{share:g}" for share, _ in split))
                self._sent = key
        else:
            self.set_share(rate, 0.0)
        self.offered = rate

    def wound_down(self) -> bool:
        """At the end of the shape: stop offering new arrivals, and tell whether every arrival is
        accounted for: none is queued or being served (the queued ones are still served: they did
        arrive), and on a master every worker has reported so since. The shape ends the test only
        then (or after WIND_DOWN_S; what is still queued then is dropped as test_ended), so the
        master's totals do not depend on the final reports Locust waits only half a second for."""
        if self._wind_down_at is None:
            self._wind_down_at = clock()
            self.target = 0.0
            self.reported_idle = {}  # only reports sent after the workers stopped count
            self._apply()
        runner = self.environment.runner
        if isinstance(runner, MasterRunner):
            ids = [node.id for node in runner.clients.ready + runner.clients.spawning + runner.clients.running]
            settled = all(self.reported_idle.get(client_id) for client_id in ids)
        else:
            settled = not self.busy()
        if not settled and clock() - self._wind_down_at >= WIND_DOWN_S:
            logger.warning("open model: arrivals still in flight or unreported %g s after the last step; the "
                           "totals may miss them", WIND_DOWN_S)
            return True
        return settled

    def quiet(self) -> bool:
        """No arrival queued or in flight on any load process (a drain may end): a master asks every
        worker's latest report (sent every few seconds), a standalone process itself."""
        runner = self.environment.runner
        if isinstance(runner, MasterRunner):
            ids = [node.id for node in runner.clients.ready + runner.clients.spawning + runner.clients.running]
            return all(self.reported_idle.get(client_id) for client_id in ids)
        return not self.busy()

    # ------------------------------------------------------------ load processes

    def set_share(self, rate: float, phase: float) -> None:
        if (rate, phase) != (self.share, self.phase):
            self._account()
            self.share, self.phase, self._changed = rate, phase, True
            self._wakeup.set()
            if isinstance(self.environment.runner, WorkerRunner):
                logger.info("open model: worker %s offers %g arrivals/s", self.environment.runner.worker_index, rate)

    def _account(self) -> None:
        """Add the arrivals the current share promised since it was set (for the log's comparison)."""
        now = clock()
        self.expected += self.share * (now - self._share_since)
        self._share_since = now

    def busy(self) -> bool:
        """Whether this load process may still schedule, queue or serve an arrival."""
        return self.share > 0 or bool(self.lateness) or (self.queue is not None and not self.queue.empty())

    def begin(self, options: Any) -> None:
        """A test starts on this load process: a fresh queue and scheduler."""
        self.end()
        self.queue = Queue()
        self.idle = 0
        self.lateness.clear()
        self.counted = dict.fromkeys(self.counted, 0)
        self.expected, self._share_since = 0.0, clock()
        self.timeout = float(getattr(options, "arrival_timeout", DEFAULT_ARRIVAL_TIMEOUT_S))
        self.share, self._changed = 0.0, False
        arrival_clock = ArrivalClock(getattr(options, "arrivals", ARRIVALS[0]), random.Random())
        self.scheduler = gevent.spawn(self._schedule, arrival_clock)
        self.scheduler.link_exception(lambda g: logger.error("open model: the arrival scheduler failed: %r",
                                                             g.exception))

    def end(self) -> None:
        """No more arrivals (the test is stopping)."""
        self._account()
        if self.scheduler is not None:
            self.scheduler.kill(block=True)
            self.scheduler = None
        self.share = 0.0

    def drain(self) -> int:
        """Arrivals still waiting when the test has ended: dropped, and counted as such."""
        left = 0
        while self.queue is not None and not self.queue.empty():
            self.queue.get_nowait()
            left += 1
        if left:
            self._drop(DROPPED_TEST_ENDED, left)
        return left

    def _drop(self, reason: str, count: int = 1) -> None:
        self.stats.drop(reason, count)
        self.counted["dropped"] += count

    def _schedule(self, arrival_clock: ArrivalClock) -> None:
        rate, next_at, burst = 0.0, 0.0, 0
        while True:
            if self._changed:
                self._changed = False
                rate = self.share
                if rate > 0:
                    next_at = arrival_clock.first(clock(), rate, self.phase)
            if rate <= 0:
                self._wakeup.wait()
                self._wakeup.clear()
                continue
            delay = next_at - clock()
            if delay > 0:
                burst = 0
                self._wakeup.wait(timeout=delay)
                self._wakeup.clear()
                continue
            self._issue(next_at)
            next_at = arrival_clock.after(next_at, rate)
            burst += 1
            if burst % BURST == 0:
                gevent.sleep(0)

    def _issue(self, scheduled: float) -> None:
        queue = self.queue
        assert queue is not None
        self.stats.scheduled += 1
        self.counted["scheduled"] += 1
        now = clock()
        while not queue.empty() and now - queue.peek_nowait() > self.timeout:
            queue.get_nowait()
            self._drop(DROPPED_WAITED_TOO_LONG)
        if self.idle - queue.qsize() <= 0:  # every slot of this process is busy: this arrival waits
            self.stats.late += 1
            self.counted["late"] += 1
        queue.put(scheduled)

    def take(self, user: Any) -> float:
        """The next arrival for a slot (blocks). While it waits the slot is in Locust's waiting state,
        so stopping the test stops it at once; arrivals that waited too long are dropped here."""
        queue = self.queue
        if queue is None:
            raise RuntimeError("open model: a request slot ran before its test started")
        user._state = LOCUST_STATE_WAITING
        self.idle += 1
        try:
            while True:
                scheduled = queue.get()
                if clock() - scheduled > self.timeout:
                    self._drop(DROPPED_WAITED_TOO_LONG)
                    continue
                return scheduled
        finally:
            self.idle -= 1
            user._state = LOCUST_STATE_RUNNING


# This process's OpenLoad. Locust's request and report events do not name their environment, and
# a Locust process has one; the collector finds it on the environment instead (`open_model`).
_model: OpenLoad | None = None


def open_load(environment: Environment) -> OpenLoad:
    """This process's OpenLoad (created on first use), kept on the environment for the collector."""
    global _model
    model = getattr(environment, "open_model", None)
    if model is None:
        model = OpenLoad(environment)
        environment.open_model = model  # type: ignore[attr-defined]
    _model = model
    return model


# ---------------------------------------------------------------- request slots


def slot_class(user_class: type) -> type:
    """A User class with `user_class`'s name, client and on_start whose one task serves arrivals."""
    if getattr(user_class, "_open_model_slot_of", None) is not None:
        return user_class
    tasks = list(user_class.tasks)  # type: ignore[attr-defined]
    nested = sorted({t.__name__ for t in tasks if isclass(t)})
    if not tasks or nested:
        raise ValueError(f"open model: {user_class.__name__} must have function tasks"
                         + (f" (it has the TaskSet {', '.join(nested)})" if nested else ""))

    def serve_arrival(user: Any) -> None:
        model = open_load(user.environment)
        scheduled = model.take(user)
        task = random.choice(tasks)
        current = gevent.getcurrent()
        model.lateness[current] = clock() - scheduled
        try:
            task(user)
        finally:
            model.lateness.pop(current, None)

    namespace = {"wait_time": constant(0), "__module__": user_class.__module__, "_open_model_slot_of": user_class,
                 "__doc__": f"Open-model request slot running {user_class.__name__}'s tasks."}
    slot = type(user_class)(user_class.__name__, (user_class,), namespace)
    slot.tasks = [serve_arrival]  # type: ignore[attr-defined]
    return slot


# ---------------------------------------------------------------- shapes (coordinator)


class ConstantRateShape(LoadTestShape):
    """`--arrival-rate R`: R arrivals/s for --run-time (or until stopped), served by the slots."""

    abstract = True  # activated by --arrival-rate only
    use_common_options = True  # it reads --run-time

    def __init__(self, rate: float, slots: int, run_time_s: float | None = None) -> None:
        super().__init__()
        self.rate, self.slots, self.run_time_s = rate, slots, run_time_s

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        model = open_load(self.runner.environment)
        if self.run_time_s is not None and self.get_run_time() >= self.run_time_s:
            return None if model.wound_down() else (self.slots, min(float(self.slots), MAX_SPAWN_RATE))
        model.offer(self.rate)
        return self.slots, min(float(self.slots), MAX_SPAWN_RATE)


class RateStepShape(HuntShape):
    """The rate hunt: adaptive (`RateAdaptivePlan`: x2 while sustained, refine, confirm; see
    rateadaptive.py) or fixed (`RatePlan`: equal steps), each step judged by the contract's
    open-model judge (throughput against arrivals, drops, growing latency, the SLO on corrected
    latency); it stops by itself once the break is confirmed."""

    abstract = True  # activated by --scenario rate-step / --step-rate only

    def __init__(self, plan: RatePlan | RateAdaptivePlan, slots: int, thresholds: Thresholds,
                 stop_on_break: bool = True) -> None:
        super().__init__()
        self.slots = slots
        self.hunt: RateHunt | AdaptiveRateHunt
        if isinstance(plan, RateAdaptivePlan):
            self.hunt = AdaptiveRateHunt(plan, thresholds, stop_on_break, on_result=self._log_result,
                                         on_move=self._log_move, quiet=self._quiet, on_drained=self._log_drained)
        else:
            self.hunt = RateHunt(plan, thresholds, stop_on_break, on_result=self._log_result)

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        model = open_load(self.runner.environment)
        ended_before = self.hunt.done
        rate = self.hunt.tick(self.get_run_time(), self._snapshot)
        if rate is None:
            if not ended_before and isinstance(self.hunt, RateHunt):
                self._log_end()
            return None if model.wound_down() else (self.slots, min(float(self.slots), MAX_SPAWN_RATE))
        model.offer(rate)
        return self.slots, min(float(self.slots), MAX_SPAWN_RATE)

    def _quiet(self) -> bool:
        return self.runner is not None and open_load(self.runner.environment).quiet()

    def _snapshot(self) -> RateSnapshot:
        assert self.runner is not None
        total = self.runner.stats.total
        return open_load(self.runner.environment).stats.snapshot(total.num_requests, total.num_failures,
                                                                  total.response_times, total.total_response_time)

    def _log_result(self, result: RateStepResult) -> None:
        verdict = "sustained" if result.sustained else f"NOT SUSTAINED ({result.judgement.detail})"

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f}"

        logger.info("rate step %d: offered %g/s (%.1f arrivals/s scheduled), achieved %.1f req/s, late %d, dropped %d, "
                    "corrected p95 %s ms (uncorrected %s ms) -> %s", result.step, result.rate, result.scheduled_rps,
                    result.achieved_rps, result.late, result.dropped, ms(result.corrected_p95_ms), ms(result.p95_ms),
                    verdict)

    def _log_move(self, result: RateStepResult, move: RateMove) -> None:
        hunt = self.hunt
        assert isinstance(hunt, AdaptiveRateHunt)
        if move.rate is None:
            logger.info("adaptive rate hunt: done after %d steps: %s", len(hunt.results), move.why)
            return
        if move.drain_s > 0 and bad_breach(result, hunt.thresholds):
            logger.warning("adaptive rate hunt: step %d (%g/s) breached badly (%s): backing off to 0 arrivals/s for at "
                           "least %.1f s until the queue drains, then %s at %g/s (no step goes to %g/s again)",
                           result.step, result.rate, result.judgement.detail, move.drain_s, move.phase, move.rate,
                           result.rate)
            return
        logger.info("adaptive rate hunt: %s -> %g/s (%s)", move.phase, move.rate, move.why)

    def _log_drained(self, seconds: float, quiet: bool) -> None:
        logger.info("adaptive rate hunt: %s after %.1f s at 0 arrivals/s", "queue drained (nothing queued or in flight)"
                    if quiet else "drain ended at --arrival-timeout, arrivals still queued or in flight", seconds)

    def _log_end(self) -> None:
        hunt = self.hunt
        assert isinstance(hunt, RateHunt)
        if hunt.break_step is None:
            logger.info("rate hunt: sustained every step up to %g arrivals/s", hunt.plan.max_rate)
        else:
            logger.info("rate hunt: not sustained at step %d (%g arrivals/s); %s", hunt.break_step + 1,
                        hunt.plan.rate(hunt.break_step),
                        "stopping" if hunt.stop_on_break else f"ran on to {hunt.plan.max_rate:g} arrivals/s")


def _positive(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a positive number (got {value!r})")
    return number


def build_rate_step_shape(options: Any, time_scale: float = 1.0) -> RateStepShape:
    """The rate hunt for these options (ValueError naming the flag when one is unusable)."""
    from locust_tests.config import test_config

    try:
        step_time = float(parse_timespan(str(options.step_time)))
    except ValueError:
        raise ValueError(f"--step-time {options.step_time!r} is not a duration: use e.g. 150, 150s or 2m30s") from None
    max_rate = _positive("--max-rate", options.max_rate)
    plan: RatePlan | RateAdaptivePlan
    if rate_hunt_kind(options) == FIXED:
        step_rate = _positive("--step-rate", options.step_rate) if options.step_rate else DEFAULT_STEP_RATE
        plan = RatePlan(step_rate, step_time * time_scale, max_rate)
    else:
        start = getattr(options, "start_rate", None)
        start_rate = _positive("--start-rate", start) if start is not None else DEFAULT_START_RATE
        plan = RateAdaptivePlan(start_rate, step_time * time_scale, max_rate,
                                _positive("--arrival-timeout", options.arrival_timeout))
    return RateStepShape(plan, slots(options), test_config.THRESHOLDS, not options.no_stop_on_break)


def slots(options: Any) -> int:
    value = getattr(options, "max_concurrency", DEFAULT_MAX_CONCURRENCY)
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"--max-concurrency must be a whole number of requests in flight, at least 1 (got {value!r})")
    return value


def check_options(options: Any) -> None:
    """ValueError (one line, naming the flag) for options an open-model run cannot use."""
    if options.arrival_rate and (options.step_rate or options.scenario):
        raise ValueError("--arrival-rate runs a constant rate: leave out --scenario and --step-rate "
                         "(or use --scenario rate-step / --step-rate for the rate hunt)")
    if options.step_rate and options.scenario not in ("", RATE_STEP):
        raise ValueError(f"--step-rate belongs to the rate hunt (--scenario rate-step), not --scenario {options.scenario}")
    if getattr(options, "start_rate", None) is not None and (options.arrival_rate
                                                             or options.scenario not in ("", RATE_STEP)):
        raise ValueError("--start-rate belongs to the adaptive rate hunt (--scenario rate-step), not "
                         + ("--arrival-rate" if options.arrival_rate else f"--scenario {options.scenario}"))
    if options.arrival_rate:
        _positive("--arrival-rate", options.arrival_rate)
    _positive("--arrival-timeout", options.arrival_timeout)
    slots(options)


# ---------------------------------------------------------------- Locust events


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    add = parser.add_argument
    add("--arrival-rate", type=float, default=0.0, env_var="LOCUST_ARRIVAL_RATE", include_in_web_ui=False,
        help="Open model: R requests arrive per second, whatever the API does, for --run-time (default: off)")
    add("--start-rate", type=float, default=None, env_var="LOCUST_START_RATE", include_in_web_ui=False,
        help=f"Adaptive rate hunt (the default of --scenario rate-step): arrivals/s of the first step, doubled while "
             f"sustained (default {DEFAULT_START_RATE:g})")
    add("--step-rate", type=float, default=0.0, env_var="LOCUST_STEP_RATE", include_in_web_ui=False,
        help=f"Fixed rate hunt (= --scenario rate-step --hunt fixed): arrivals/s added per step (default "
             f"{DEFAULT_STEP_RATE:g}); giving it chooses the fixed hunt")
    add("--max-rate", type=float, default=DEFAULT_MAX_RATE, env_var="LOCUST_MAX_RATE", include_in_web_ui=False,
        help=f"Rate hunt: arrivals/s of the last step (default {DEFAULT_MAX_RATE:g})")
    add("--arrivals", choices=ARRIVALS, default=ARRIVALS[0], env_var="LOCUST_ARRIVALS", include_in_web_ui=False,
        help="Open model: poisson (default, independent visitors) or uniform (evenly spaced) arrivals")
    add("--max-concurrency", type=int, default=DEFAULT_MAX_CONCURRENCY, env_var="LOCUST_MAX_CONCURRENCY",
        include_in_web_ui=False,
        help=f"Open model: requests in flight at most, over all load processes (default {DEFAULT_MAX_CONCURRENCY}); "
             "an arrival that finds them all busy waits and counts as late")
    add("--arrival-timeout", type=float, default=DEFAULT_ARRIVAL_TIMEOUT_S, env_var="LOCUST_ARRIVAL_TIMEOUT",
        include_in_web_ui=False,
        help=f"Open model: an arrival still waiting for a free slot after this many seconds is dropped "
             f"(counted in locust_arrivals_dropped_total; default {DEFAULT_ARRIVAL_TIMEOUT_S:g})")


def _run_time(options: Any) -> float | None:
    value = getattr(options, "run_time", None)
    if not value:
        return None
    return float(parse_timespan(value)) if isinstance(value, str) else float(value)


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        def on_share(environment: Environment, msg: Any, **_: Any) -> None:
            open_load(environment).set_share(float(msg.data["rate"]), float(msg.data["phase"]))

        runner.register_message(MESSAGE, on_share)
        return
    options: Any = environment.parsed_options
    if not is_coordinator(environment) or not open_mode(options):
        return
    open_load(environment)
    try:
        check_options(options)
        for user_class in environment.user_classes:
            slot_class(user_class)  # refuse a User class the slots cannot run, before anything starts
        if options.scenario:  # --scenario rate-step: shapes.py builds it
            return
        if options.arrival_rate:
            shape: LoadTestShape = ConstantRateShape(options.arrival_rate, slots(options), _run_time(options))
        else:
            time_scale = float(getattr(options, "time_scale", 1.0))
            shape = build_rate_step_shape(options, time_scale)
    except ValueError as exc:
        logger.error("%s", exc)
        sys.exit(1)
    shape.runner = runner
    environment.shape_class = shape
    environment.available_shape_classes = {**(environment.available_shape_classes or {}), type(shape).__name__: shape}
    ignored = [flag for flag, value in (("-u", options.num_users), ("-r", options.spawn_rate)) if value]
    if isinstance(shape, RateStepShape):
        ignored += ["-t"] if options.run_time else []
    if ignored:
        logger.warning("an open-model run sets its users (the request slots) itself: %s ignored", ", ".join(ignored))
    describe(shape, options)


def describe(shape: LoadTestShape, options: Any) -> None:
    """One line saying what the open-model shape will do."""
    common = (f"{options.arrivals} arrivals, at most {options.max_concurrency} requests in flight, "
              f"drop after {options.arrival_timeout:g} s waiting")
    if isinstance(shape, ConstantRateShape):
        until = f"for {shape.run_time_s:g} s" if shape.run_time_s else "until stopped"
        logger.info("open model: %g arrivals/s %s; %s", shape.rate, until, common)
    elif isinstance(shape, RateStepShape) and isinstance(shape.hunt, AdaptiveRateHunt):
        aplan, th = shape.hunt.plan, shape.hunt.thresholds
        logger.info("scenario rate-step (adaptive hunt): from %g arrivals/s, x%g while sustained, then refine to %.0f%% "
                    "and confirm the break; %g s per step, at most %g/s; %s; sustained = throughput within %.0f%% of "
                    "arrivals, nothing dropped, latency not growing, corrected p95 <= %g ms, errors <= %.1f%%",
                    aplan.start_rate, aplan.growth, 100 * aplan.bracket, aplan.step_time_s, aplan.max_rate, common,
                    100 * th.throughput_shortfall_fraction, th.latency_p95_ms, 100 * th.error_ratio)
    elif isinstance(shape, RateStepShape) and isinstance(shape.hunt, RateHunt):
        plan, th = shape.hunt.plan, shape.hunt.thresholds
        logger.info("scenario rate-step (fixed hunt): +%g arrivals/s every %g s up to %g/s; %s; sustained = throughput within "
                    "%.0f%% of arrivals, nothing dropped, latency not growing, corrected p95 <= %g ms, errors <= %.1f%%",
                    plan.step_rate, plan.step_time_s, plan.max_rate, common, 100 * th.throughput_shortfall_fraction,
                    th.latency_p95_ms, 100 * th.error_ratio)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    runner = environment.runner
    if not open_mode(options):
        return
    model = open_load(environment)
    model.active = True
    model.stats = OpenStats()
    model.spawned, model.offered, model._sent = False, 0.0, None
    model._wind_down_at, model.reported_idle = None, {}
    if isinstance(runner, MasterRunner):
        return
    # A load process (standalone or worker): its users become request slots before they spawn.
    environment.user_classes = [slot_class(c) for c in environment.user_classes]
    model.begin(options)


@events.spawning_complete.add_listener
def _on_spawning_complete(**_: Any) -> None:
    model = _model  # this event names no environment
    if model is None or not model.active or not is_coordinator(model.environment):
        return
    model.spawned = True
    model._apply()


@events.test_stopping.add_listener
def _on_test_stopping(environment: Environment, **_: Any) -> None:
    model = getattr(environment, "open_model", None)
    if model is None or not model.active:
        return
    model.spawned, model.target, model.offered = False, 0.0, 0.0
    model.end()


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    model = getattr(environment, "open_model", None)
    if model is None or not model.active or isinstance(environment.runner, MasterRunner):
        return
    model.end()
    model.drain()
    who = f"worker {environment.runner.worker_index}" if isinstance(environment.runner, WorkerRunner) else "this process"
    counted = model.counted
    logger.info("open model: %s scheduled %d arrivals (%.1f at the rate it was offered), %d late, %d dropped", who,
                counted["scheduled"], model.expected, counted["late"], counted["dropped"])


@events.request.add_listener
def _on_request(request_type: str, name: str, response_time: float, **_: Any) -> None:
    model = _model
    if model is None or not model.lateness:  # not an open-model run, or no arrival being served
        return
    lateness = model.lateness.get(gevent.getcurrent())  # the request's own slot, if it serves an arrival
    if lateness is not None:
        model.stats.record(request_type or "", name, response_time / 1000.0 + lateness)


@events.report_to_master.add_listener
def _on_report_to_master(client_id: str, data: dict[str, Any], **_: Any) -> None:
    if _model is not None and _model.active:
        data[REPORT_KEY] = {**_model.stats.take(), "idle": not _model.busy()}


@events.worker_report.add_listener
def _on_worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    part = data.get(REPORT_KEY)
    if part and _model is not None and _model.active:
        _model.stats.merge(part)
        _model.reported_idle[client_id] = bool(part.get("idle"))
