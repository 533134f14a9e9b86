"""Prometheus exporter inside Locust: import this module in a locustfile to enable it.

    from locust_tests.plugins import exporter  # noqa: F401

The master (or the single standalone process) serves the metrics of `collector.py`:
- on its own port, `--exporter-port` (env LOCUST_EXPORTER_PORT, default 9646, 0 = off) on
  `--exporter-host` (env LOCUST_EXPORTER_HOST, default 127.0.0.1), in every mode including
  --headless, where Locust has no web UI;
- at `/metrics` on Locust's web UI, when there is one.
Workers (also `--processes` children) never bind: the master's stats already include theirs. They
send them every second (`WORKER_REPORT_S`) rather than Locust's 3 s, so the master's per-second
totals, served here and written to its CSV history, are the load of each second.

`--exporter-linger SECONDS` (env LOCUST_EXPORTER_LINGER, default 0) keeps the process, and so the
exporter, alive that long after the test has ended, so a scraper gets the final totals of a
--headless run (the same totals Locust writes to its CSV files).

A scrape of the own port never waits for Locust's gevent loop, which a saturating load keeps busy.
The loop renders the exposition every 0.1-1 s (as often as 0.3 % of its time allows), and at test
start, test stop and quitting (so the final totals are exact), and hands the bytes over a pipe to
a small server process (metrics_server.py), which answers each scrape with the latest ones. A
process rather than a thread: a thread here would still wait for the GIL the busy loop holds.
Only the loop reads Locust's stats (they change without locks). The web UI's /metrics runs in the
loop anyway, so it renders fresh at each request.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gevent
import gevent.lock
import locust.runners
from flask import Response
from locust import events
from locust.env import Environment
from locust.rpc import Message
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from loadlab.contract.names import DEFAULT_BIND, DEFAULT_PORTS

from . import exposition
from .collector import LocustCollector, StatsTime
from .metrics_server import READY, encode_frame
from .roles import is_coordinator

DEFAULT_PORT = DEFAULT_PORTS["exporter"]
DEFAULT_HOST = DEFAULT_BIND  # nothing beyond this machine unless asked for
# How often the loop renders the exposition for the own port, so how old a scrape's values can be
# (plus however late a busy loop gets to it): as often as RENDER_BUDGET of the loop's time allows,
# within these bounds. A few request names render in well under a ms (every 0.1 s); 50 names in
# 2-4 ms (every second; 6-7 ms before the collector kept each name's samples between renders).
REFRESH_MIN_SECONDS = 0.1
REFRESH_MAX_SECONDS = 1.0
RENDER_BUDGET = 0.003
# Locust's workers send their stats every WORKER_REPORT_INTERVAL, 3 s: the master's totals then move
# in 3 s lumps, and a step of a few seconds reads 0 or twice its rate. Each report is one small message.
WORKER_REPORT_S = 1.0
# Locust's master quits 0.5 s after it tells its workers to (locust#1426). A worker sends its final
# report on that message, and on a busy machine it comes later: its last requests were then lost
# from the master's totals, CSV and exporter (seen: 69 requests counted of 79 made). The master
# here waits for each connected worker's goodbye, which a worker sends after its final report.
FINAL_REPORTS_WAIT_S = 10.0

logger = logging.getLogger(__name__)

SERVER_SCRIPT = Path(__file__).with_name("metrics_server.py")
SERVER_START_TIMEOUT_S = 30.0  # an interpreter's start-up, on a box that may be busy


class ServerStartError(RuntimeError):
    """The exporter's server process exited, or did not answer in time, at start."""


class MetricsServer:
    """The process of metrics_server.py, serving the listening socket bound here, and the pipe
    that hands it each rendered exposition."""

    def __init__(self, host: str, port: int) -> None:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
        listening = socket.socket(family, socket.SOCK_STREAM)
        try:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as prometheus-client's server
            listening.bind(address)  # OSError when the port is taken
            listening.listen(64)
            # -I -S: stdlib only, so no site-packages to set up (a third of its start-up CPU)
            self.process = subprocess.Popen([sys.executable, "-I", "-S", str(SERVER_SCRIPT), str(listening.fileno())],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            pass_fds=(listening.fileno(),))
        finally:
            listening.close()  # the server process has its own copy
        assert self.process.stdin is not None and self.process.stdout is not None
        self.pipe = self.process.stdin
        self.ready = self.process.stdout
        self._writing = gevent.lock.Semaphore()  # one frame at a time on the pipe
        self._gone_logged = False

    def send(self, body: bytes) -> None:
        """Hand `body` over; cooperative, so a slow reader stalls only the calling greenlet."""
        with self._writing:
            if self.pipe.closed:  # closed at quit
                return
            try:
                self.pipe.write(encode_frame(body))
                self.pipe.flush()
            except OSError:
                if not self._gone_logged:
                    self._gone_logged = True
                    logger.error("exporter: the metrics server process has exited (code %s): the exporter port "
                                 "no longer answers; the web UI's /metrics still does", self.process.poll())

    def wait_ready(self, timeout: float = SERVER_START_TIMEOUT_S) -> None:
        """Wait until the server process serves the first frame (send it first). Raises
        ServerStartError when it exits or takes longer than `timeout`."""
        answer = b""
        with gevent.Timeout(timeout, False):
            answer = self.ready.read(len(READY))
        self.ready.close()
        if answer != READY:
            self.close()
            raise ServerStartError(f"the metrics server process did not start within {timeout:g} s "
                                   f"(exit code {self.process.poll()})")

    def close(self) -> None:
        """End the server process (the end of its stdin) and reap it, so it never outlives Locust
        and its CPU time counts in Locust's own (the resource usage of a reaped child)."""
        with self._writing:
            try:
                self.pipe.close()
                self.process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()


class Exporter:
    """The collector on its own registry (never prometheus-client's global default registry,
    which would mix in whatever else the process registers), plus where it is served."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.registry = CollectorRegistry(auto_describe=False)
        self.stats_time = StatsTime(environment.runner)
        self.collector = LocustCollector(environment, stats_time=self.stats_time)
        self.registry.register(self.collector)
        self.server: MetricsServer | None = None
        self.renders = 0
        self.render_seconds = 0.0  # CPU time the loop spent rendering for the own port

    def render(self) -> bytes:
        return exposition.text(self.registry)  # generate_latest's bytes, faster

    def refresh(self) -> float:
        """Render the exposition and hand it to the server process; returns the CPU seconds the
        render took. In the loop only: it reads Locust's stats, which the loop changes."""
        if self.server is None:
            return 0.0
        started = time.thread_time()
        try:
            body = self.render()
        except Exception:
            body = b""  # scrapes get 503 until a render works, rather than stale values
            logger.exception("exporter: could not render the metrics")
        took = time.thread_time() - started
        self.renders += 1
        self.render_seconds += took
        self.server.send(body)
        return took

    def _refresh_forever(self) -> None:
        took = 0.0
        while True:
            gevent.sleep(min(REFRESH_MAX_SECONDS, max(REFRESH_MIN_SECONDS, took / RENDER_BUDGET)))
            took = self.refresh()

    def serve(self, host: str, port: int) -> None:
        """Serve on host:port once the server process answers (raises OSError when the port cannot
        be bound, ServerStartError when the server process does not start)."""
        self.server = MetricsServer(host, port)
        self.refresh()
        self.server.wait_ready()
        gevent.spawn(self._refresh_forever)

    def add_web_ui_route(self, web_ui: Any) -> None:
        @web_ui.app.route("/metrics")
        @web_ui.auth_required_if_enabled
        def metrics() -> Response:
            return Response(self.render(), content_type=CONTENT_TYPE_LATEST)


_exporter: Exporter | None = None


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument("--exporter-port", type=int, default=DEFAULT_PORT, env_var="LOCUST_EXPORTER_PORT",
                        include_in_web_ui=False,
                        help=f"Port of the Prometheus exporter on the master/standalone process "
                             f"(default {DEFAULT_PORT}; 0 turns it off; the web UI also serves /metrics)")
    parser.add_argument("--exporter-host", default=DEFAULT_HOST, env_var="LOCUST_EXPORTER_HOST",
                        include_in_web_ui=False,
                        help=f"Address the exporter binds to (default {DEFAULT_HOST}; 0.0.0.0 for all interfaces)")
    parser.add_argument("--exporter-linger", type=float, default=0.0, env_var="LOCUST_EXPORTER_LINGER",
                        include_in_web_ui=False,
                        help="Seconds to keep serving the final metrics after the test ends, before exiting "
                             "(default 0)")


def _quit_after_final_reports(runner: locust.runners.MasterRunner) -> None:
    """Locust's MasterRunner.quit (2.47), waiting for the workers' final reports, not 0.5 s."""
    if getattr(runner, "_quitting", False):
        return  # the last worker's goodbye calls quit again (headless): the quit below goes on
    runner._quitting = True  # type: ignore[attr-defined]
    runner.stop(send_stop_to_client=False)
    for client in runner.clients.all:
        runner.server.send_to_client(Message("quit", None, client.id))
    deadline = time.monotonic() + FINAL_REPORTS_WAIT_S
    while time.monotonic() < deadline and any(c.state != locust.runners.STATE_MISSING for c in runner.clients.all):
        gevent.sleep(0.05)  # each goodbye removes its worker from runner.clients
    runner.greenlet.kill(block=True)


def _option(environment: Environment, name: str, default: Any) -> Any:
    return getattr(environment.parsed_options, name, default) if environment.parsed_options else default


@events.init.add_listener
def _on_init(environment: Environment, web_ui: Any = None, **_: Any) -> None:
    global _exporter
    if isinstance(environment.runner, locust.runners.WorkerRunner):
        locust.runners.WORKER_REPORT_INTERVAL = WORKER_REPORT_S  # read by its stats_reporter at every report
    if isinstance(environment.runner, locust.runners.MasterRunner):
        runner = environment.runner
        runner.quit = lambda: _quit_after_final_reports(runner)  # type: ignore[method-assign]
    if not is_coordinator(environment):
        return
    exporter = Exporter(environment)
    port = _option(environment, "exporter_port", DEFAULT_PORT)
    host = _option(environment, "exporter_host", DEFAULT_HOST)
    if not 0 <= port <= 65535:
        logger.error("exporter: --exporter-port %s is not a port number: use 1-65535, or 0 to turn it off", port)
        sys.exit(1)
    if port:
        try:
            exporter.serve(host, port)
        except OSError as exc:
            logger.error("exporter: cannot listen on %s:%s (%s). Another process (another Locust?) is using it: "
                         "pick a free port with --exporter-port (env LOCUST_EXPORTER_PORT), or 0 to turn the "
                         "exporter off.", host, port, exc.strerror or exc)
            sys.exit(1)
        except ServerStartError as exc:
            logger.error("exporter: %s. Check Locust's log above for the cause, or turn the exporter off "
                         "with --exporter-port 0.", exc)
            sys.exit(1)
        logger.info("exporter: Prometheus metrics at http://%s:%s/metrics", host, port)
    if web_ui is not None:
        exporter.add_web_ui_route(web_ui)
    _exporter = exporter


@events.worker_report.add_listener
def _on_worker_report(client_id: str, **_: Any) -> None:
    if _exporter is not None:
        _exporter.stats_time.report(client_id)


def _refresh_own_port() -> None:
    if _exporter is not None:
        _exporter.refresh()


@events.test_start.add_listener
def _on_test_start(**_: Any) -> None:
    # Locust has just cleared its stats, errors included: let new errors take the label slots.
    if _exporter is not None:
        _exporter.collector.errors.reset()
    _refresh_own_port()


@events.test_stop.add_listener
def _on_test_stop(**_: Any) -> None:
    _refresh_own_port()  # the final totals now, not at the next periodic render


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    linger = _option(environment, "exporter_linger", 0.0)
    _refresh_own_port()  # and the periodic renders go on while lingering, for late worker reports
    if _exporter is not None and _exporter.server is not None and linger > 0:
        logger.info("exporter: serving the final metrics for %g s before exiting (--exporter-linger)", linger)
        time.sleep(linger)  # gevent-patched in Locust: the exporter keeps serving meanwhile


@events.quit.add_listener
def _on_quit(**_: Any) -> None:
    # After quitting (and its linger): Locust is about to exit.
    if _exporter is not None and _exporter.server is not None:
        _exporter.server.close()
        logger.info("exporter: %d renders took %.3f s of CPU in all (%.2f ms each)", _exporter.renders,
                    _exporter.render_seconds, 1000 * _exporter.render_seconds / max(1, _exporter.renders))
