"""Serving a Flask app: under gunicorn with N gevent workers (`serve`), or Flask's dev server (`serve_dev`).

`serve` takes any app factory, so the same launcher (port check, Prometheus multiprocess
directory, gunicorn) serves the target API and any other Flask app built for the lab. Gunicorn
runs in this process (gunicorn.app.base.BaseApplication): the process tree is this Python
process as arbiter plus forked workers, all with the caller's command line, and SIGTERM to the
arbiter stops them all.

The multiprocess metrics are loadlab.multiproc.GunicornHooks, the hooks `gunicorn -c
python:loadlab.gunicorn_conf` installs for your own app: the bundled target runs the same code.
With `metrics_port`, the arbiter itself also serves the merged metrics of all workers on a port
of its own. The workers' /metrics on the API port waits in the same accept queue as the load, so
under overload a scrape there times out exactly when it matters; the arbiter does no request work,
so its port answers at once.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from loadlab.contract.cores import usable_cores
from loadlab.multiproc import (
    MULTIPROC_PREFIX,  # noqa: F401  (re-exported: tests find a server's directory by it)
    GunicornHooks,
    make_multiproc_dir,  # noqa: F401  (re-exported for the tests)
    memory_tmp_dir,
)


class ServeError(RuntimeError):
    """The server cannot start; the message is one line naming the problem and the fix."""


def check_port(host: str, port: int, flag: str = "--port") -> None:
    """Raise ServeError if host:port cannot be bound, before anything forks or waits. `flag` is
    the option the message tells the user to change."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Like gunicorn: a port whose old connections linger in TIME_WAIT is free to use.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except socket.gaierror:
            raise ServeError(f"cannot resolve host {host!r}: pass an IP address such as 127.0.0.1 with --host") from None
        except OSError as exc:
            raise bind_error(host, port, flag, exc) from None


def check_listen(host: str, port: int, metrics_port: int = 0, metrics: bool = True) -> None:
    """Raise ServeError (one line) unless the server can listen as asked: a metrics port needs
    the metrics, differs from the API port, and both ports can be bound on host."""
    if metrics_port and not metrics:
        raise ServeError("--metrics-port needs the metrics: drop --no-metrics (TARGET_APP_NO_METRICS) "
                         "or --metrics-port (TARGET_APP_METRICS_PORT)")
    if metrics_port and metrics_port == port:
        raise ServeError(f"--metrics-port and --port are both {port}: choose another --metrics-port")
    check_port(host, port)
    if metrics_port:
        check_port(host, metrics_port, "--metrics-port")


def bind_error(host: str, port: int, flag: str, exc: OSError) -> ServeError:
    """The one-line ServeError for an OSError from binding host:port."""
    if exc.errno == errno.EADDRINUSE:
        return ServeError(f"port {port} on {host} is already in use: stop the process listening there "
                          f"or choose another port with {flag}")
    if exc.errno == errno.EACCES:
        return ServeError(f"permission denied binding port {port} on {host}: choose a port above 1023 with {flag}")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ServeError(f"cannot bind {host}:{port}: {host} is not an address of this machine; "
                          f"use --host 127.0.0.1")
    return ServeError(f"cannot bind {host}:{port}: {exc.strerror}")


class _Gunicorn(BaseApplication):
    def __init__(self, app_factory: Callable[[], Flask], options: Mapping[str, Any]) -> None:
        self.app_factory = app_factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key == "control_socket_disable" and key not in self.cfg.settings:
                continue  # older gunicorn has no control socket to disable
            self.cfg.set(key, value)

    def load(self) -> Flask:
        # Called in each worker after the fork (preload_app is off), so every worker builds its
        # own app: its own metric files, no database connection crossing a fork.
        return self.app_factory()


def serve(
    app_factory: Callable[[], Flask],
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int | None = None,
    *,
    metrics: bool = True,
    metrics_port: int = 0,
    gunicorn_options: Mapping[str, Any] | None = None,
) -> None:
    """Serve the app built by `app_factory()` under gunicorn with `workers` gevent workers (see
    target_app.worker) until SIGTERM/SIGINT. Raises ServeError (one line) if host:port (or
    host:metrics_port) cannot be bound.

    With `metrics`, the hooks of `gunicorn -c python:loadlab.gunicorn_conf` (GunicornHooks): a fresh
    PROMETHEUS_MULTIPROC_DIR before any worker starts (removed at exit; one left by a killed server
    is removed at the next start), dead workers marked with mark_process_dead, so an app
    instrumented with loadlab.instrument.instrument reports all workers' totals on every /metrics.
    A non-zero `metrics_port` (needs `metrics`) makes the arbiter serve the same totals at
    http://host:metrics_port/metrics, which does not queue behind the load.
    `gunicorn_options` override gunicorn settings (e.g. {"timeout": 60}); overriding the
    when_ready, post_fork, child_exit or on_exit hooks turns off what they do here.
    """
    check_listen(host, port, metrics_port, metrics)
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    options: dict[str, Any] = {
        "bind": bind,
        "workers": workers or usable_cores(),
        # gevent with a deadline on request headers, so slow clients cannot stop the API; still one
        # core per worker process at most, and one request per connection (see worker.py).
        "worker_class": "target_app.worker.HeaderTimeoutGeventWorker",
        "keepalive": 0,
        "proc_name": "target_app",
        "graceful_timeout": 10,
        "accesslog": None,  # access logs would cost throughput under load; metrics count requests
        "errorlog": "-",
        "loglevel": "info",
        # gunicorn 27 opens a control socket at one fixed per-user path; two servers on one
        # machine (tests, side-by-side benchmarks) would fight over it.
        "control_socket_disable": True,
    }
    tmp_dir = memory_tmp_dir()
    if tmp_dir:
        options["worker_tmp_dir"] = tmp_dir
    hooks: GunicornHooks | None = None
    if metrics:
        hooks = GunicornHooks(None, host, metrics_port,
                              lambda exc: str(bind_error(host, metrics_port, "--metrics-port", exc)))
        options.update(hooks.hooks())
    options.update(gunicorn_options or {})

    arbiter_pid = os.getpid()
    try:
        _Gunicorn(app_factory, options).run()
    except SystemExit:
        if hooks and hooks.failure and os.getpid() == arbiter_pid:
            raise ServeError(hooks.failure) from None  # the metrics port was taken after check_listen
        raise
    finally:
        if hooks:
            hooks.cleanup()  # workers leave through this frame too; cleanup acts in the arbiter only


def serve_dev(app_factory: Callable[[], Flask], host: str = "127.0.0.1", port: int = 5000, *,
              metrics_port: int = 0) -> None:
    """Serve with Flask's single-process development server (threaded, no reloader). A non-zero
    `metrics_port` also serves prometheus_client's default registry (which `instrument(app)`
    uses unless given another) on a port of its own, as `serve` does."""
    check_listen(host, port, metrics_port)
    if metrics_port:
        from prometheus_client import start_http_server
        try:
            start_http_server(metrics_port, addr=host)
        except OSError as exc:
            raise bind_error(host, metrics_port, "--metrics-port", exc) from None
    app_factory().run(host=host, port=port, threaded=True, use_reloader=False)
