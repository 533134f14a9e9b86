"""Prometheus exporter inside Locust: import this module in a locustfile to enable it.

    from locust_tests.plugins import exporter  # noqa: F401

The master (or the single standalone process) serves the metrics of `collector.py`:
- on its own port, `--exporter-port` (env LOCUST_EXPORTER_PORT, default 9646, 0 = off) on
  `--exporter-host` (env LOCUST_EXPORTER_HOST, default 127.0.0.1), in every mode including
  --headless, where Locust has no web UI;
- at `/metrics` on Locust's web UI, when there is one.
Workers (also `--processes` children) never bind: the master's stats already include theirs.

`--exporter-linger SECONDS` (env LOCUST_EXPORTER_LINGER, default 0) keeps the process, and so the
exporter, alive that long after the test has ended, so a scraper gets the final totals of a
--headless run (the same totals Locust writes to its CSV files).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from flask import Response
from locust import events
from locust.env import Environment
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, start_http_server

from loadlab.contract.names import DEFAULT_BIND, DEFAULT_PORTS

from .collector import LocustCollector
from .roles import is_coordinator

DEFAULT_PORT = DEFAULT_PORTS["exporter"]
DEFAULT_HOST = DEFAULT_BIND  # nothing beyond this machine unless asked for

logger = logging.getLogger(__name__)


class Exporter:
    """The collector on its own registry (never prometheus-client's global default registry,
    which would mix in whatever else the process registers), plus where it is served."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = LocustCollector(environment)
        self.registry.register(self.collector)
        self.server: Any = None

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> None:
        """Serve on host:port (raises OSError when the port cannot be bound)."""
        self.server, _thread = start_http_server(port, addr=host, registry=self.registry)

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


def _option(environment: Environment, name: str, default: Any) -> Any:
    return getattr(environment.parsed_options, name, default) if environment.parsed_options else default


@events.init.add_listener
def _on_init(environment: Environment, web_ui: Any = None, **_: Any) -> None:
    global _exporter
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
        logger.info("exporter: Prometheus metrics at http://%s:%s/metrics", host, port)
    if web_ui is not None:
        exporter.add_web_ui_route(web_ui)
    _exporter = exporter


@events.test_start.add_listener
def _on_test_start(**_: Any) -> None:
    # Locust has just cleared its stats, errors included: let new errors take the label slots.
    if _exporter is not None:
        _exporter.collector.errors.reset()


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    linger = _option(environment, "exporter_linger", 0.0)
    if _exporter is not None and _exporter.server is not None and linger > 0:
        logger.info("exporter: serving the final metrics for %g s before exiting (--exporter-linger)", linger)
        time.sleep(linger)  # gevent-patched in Locust: the exporter keeps serving meanwhile
