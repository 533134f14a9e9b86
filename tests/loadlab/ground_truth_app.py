"""A server whose breaking point is known in advance, to check the analysis against.

W gunicorn sync workers, each serving one request at a time with a fixed service time S,
either sleeping (a concurrency limit: CPU stays idle) or burning CPU (a CPU limit). By the
operational laws its capacity is X = W / S, and a closed-loop generator with think time Z
reaches it at N* = W (S + Z) / S users.

It has the target API's two endpoints, so the Locust suite runs against it unchanged:
`POST /client_login` costs S; `POST /client_registeration` (the suite's seeding) answers at
once so that seeding does not eat the test's time. `/healthz` and `/metrics` as usual.

    python -m tests.loadlab.ground_truth_app --port P --workers W --service-ms S --mode sleep|burn|lock
    python -m tests.loadlab.ground_truth_app --port P --workers W --service-ms S --mode stall --stall-s 1 --period-s 5

The service time is spent in `ground_truth_wait_hotspot` (sleep) or `ground_truth_cpu_hotspot` (burn).
`lock`: gthread workers with `LOCK_THREADS` threads each, whose requests take one semaphore per
process and burn S of CPU holding it: still one request at a time per worker (X = W/S), but the
others wait on the semaphore, a lock-contention hot spot. `stall`: every request arriving during a
stall (the first `--stall-s` of every `--period-s`) waits for it to end, then sleeps S.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import threading
import time
from typing import Any

from flask import Flask, jsonify, request
from gunicorn.workers.sync import SyncWorker

from loadlab.instrument import instrument
from target_app.server import serve

# The service time is spent in functions with names a profile cannot mistake for anything else:
# `loadlab run --profile` must name them as the hot spot (tests/loadlab/test_profiling.py).


def ground_truth_cpu_hotspot(seconds: float) -> None:
    """Burn `seconds` of this thread's CPU time: the demand is fixed even when the CPU is shared."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


busy_for = ground_truth_cpu_hotspot  # its name before profiling needed a distinctive one


def ground_truth_wait_hotspot(seconds: float) -> None:
    """Wait `seconds` off the CPU (a stand-in for a pool, a lock or a slow backend)."""
    time.sleep(seconds)


def stall_then_sleep(service_s: float, stall_s: float, period_s: float) -> None:
    """Wait out the stall this request arrived in (if any), then sleep the service time."""
    into = time.time() % period_s
    if into < stall_s:
        time.sleep(stall_s - into)
    time.sleep(service_s)


LOCK_THREADS = 8
LOGIN = "/client_login"


class HeldSyncWorker(SyncWorker):
    """gunicorn's sync worker that also measures how long it is held per login, from accepting the
    connection to closing it (parsing, Flask, writing the answer): `app_ground_truth_held_seconds`.
    The app's request histogram times Flask's part only; the worker is busy for the whole of it, so
    the utilization law's capacity is W over this time (tests/loadlab/served.py)."""

    _held: Any = None  # the Summary, made in the worker (after the fork, in the multiprocess directory)
    _path: str | None = None

    def accept(self, listener: Any) -> None:
        started = time.perf_counter()
        self._path = None
        try:
            super().accept(listener)  # raises when no connection is waiting: idle, not counted
        finally:
            if self._path == LOGIN:
                self.held().observe(time.perf_counter() - started)

    def handle_request(self, listener: Any, req: Any, client: Any, addr: Any) -> Any:
        self._path = req.path
        return super().handle_request(listener, req, client, addr)

    @classmethod
    def held(cls) -> Any:
        if cls._held is None:
            from prometheus_client import Summary
            # No registry: the multiprocess collector behind /metrics reads every worker's file.
            cls._held = Summary("app_ground_truth_held_seconds", "Seconds a worker was held per login, "
                                "accept to close", registry=None)
        return cls._held


def create_app(service_s: float, mode: str, stall_s: float = 1.0, period_s: float = 5.0) -> Flask:
    app = Flask("ground_truth")
    if mode == "stall":
        def work(seconds: float) -> None:
            stall_then_sleep(seconds, stall_s, period_s)
    else:
        work = ground_truth_wait_hotspot if mode == "sleep" else ground_truth_cpu_hotspot
    ids = itertools.count(1)
    one_at_a_time = threading.Semaphore(1)

    @app.post(LOGIN)
    def login():
        if mode == "lock":
            with one_at_a_time:  # the worker's other threads queue here
                work(service_s)
        else:
            work(service_s)
        body = request.get_json(silent=True) or {}
        if not body.get("password"):
            return jsonify(error="invalid_credentials", message="wrong username or password", field=None), 401
        return jsonify(token="ground-truth-token", expires_in=3600)

    @app.post("/client_registeration")
    def register():
        body = request.get_json(silent=True) or {}
        return jsonify(id=next(ids), username=body.get("username")), 201

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok", database="ok")

    instrument(app)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--service-ms", type=float, required=True)
    parser.add_argument("--mode", choices=("sleep", "burn", "lock", "stall"), required=True)
    parser.add_argument("--stall-s", type=float, default=1.0, help="--mode stall: length of each stall")
    parser.add_argument("--period-s", type=float, default=5.0, help="--mode stall: a stall begins every this often")
    args = parser.parse_args()
    # sync workers: one request at a time per worker is the model (a sleeping request would yield
    # to others in the target's gevent workers).
    options: dict[str, object] = {"timeout": 120, "backlog": 2048,
                                  "worker_class": "tests.loadlab.ground_truth_app.HeldSyncWorker"}
    if args.mode == "lock":
        options.update(worker_class="gthread", threads=LOCK_THREADS)
    serve(functools.partial(create_app, args.service_ms / 1000.0, args.mode, args.stall_s, args.period_s),
          args.host, args.port, args.workers, gunicorn_options=options)


if __name__ == "__main__":
    main()
