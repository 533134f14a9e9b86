"""Serving a Flask app: under gunicorn with N gevent workers (`serve`), or Flask's dev server (`serve_dev`).

`serve` takes any app factory, so the same launcher (port check, Prometheus multiprocess
directory, gunicorn) serves the target API and any other Flask app built for the lab. Gunicorn
runs in this process (gunicorn.app.base.BaseApplication): the process tree is this Python
process as arbiter plus forked workers, all with the caller's command line, and SIGTERM to the
arbiter stops them all.

With `metrics_port`, the arbiter itself also serves the merged metrics of all workers on a port
of its own (prometheus_client's `start_http_server` in a daemon thread). The workers' /metrics on
the API port waits in the same accept queue as the load, so under overload a scrape there times
out exactly when it matters; the arbiter does no request work, so its port answers at once.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from loadlab.contract.cores import usable_cores
from loadlab.multiproc import (
    MULTIPROC_PREFIX,  # noqa: F401  (re-exported: tests find a server's directory by it)
    enable_multiprocess_metrics,
    make_multiproc_dir,
    mark_process_dead,
    memory_tmp_dir,
    serve_merged_metrics,
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


def _arbiter_metrics_hooks(host: str, port: int, failures: list[ServeError]) -> dict[str, Callable[..., None]]:
    """gunicorn hooks that serve the multiprocess metrics from the arbiter on host:port.

    `when_ready` runs in the arbiter after its listeners are bound and before any worker is
    forked. A bind failure there (the port was taken after check_port) is put in `failures` and
    halts the arbiter. `post_fork` closes the inherited listening socket in each worker, so only
    the arbiter holds it: if the arbiter dies, scrapes are refused rather than left hanging."""
    metrics_server: list[Any] = []

    def when_ready(arbiter: Any) -> None:
        try:
            httpd = serve_merged_metrics(host, port)  # PROMETHEUS_MULTIPROC_DIR, as the workers' /metrics
        except OSError as exc:
            failures.append(bind_error(host, port, "--metrics-port", exc))
            arbiter.halt(str(failures[-1]), exit_status=2)  # exits; serve() raises the ServeError
            return
        metrics_server.append(httpd)
        arbiter.log.info("Serving metrics of all workers at http://%s:%s/metrics (%s)",
                         f"[{host}]" if ":" in host else host, port, os.getpid())

    def post_fork(arbiter: Any, worker: Any) -> None:
        for httpd in metrics_server:
            httpd.socket.close()  # this process's copy only; the arbiter keeps serving

    return {"when_ready": when_ready, "post_fork": post_fork}


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

    With `metrics`, a fresh PROMETHEUS_MULTIPROC_DIR is created (and removed at exit; one left by a
    killed server is removed at the next start) before any worker starts, and dead workers are
    marked with mark_process_dead, so an app instrumented with
    loadlab.instrument.instrument reports all workers' totals on every /metrics (the same helpers,
    loadlab.multiproc, as `gunicorn -c python:loadlab.gunicorn_conf` for your own app).
    A non-zero `metrics_port` (needs `metrics`) makes the arbiter serve the same totals at
    http://host:metrics_port/metrics, which does not queue behind the load.
    `gunicorn_options` override gunicorn settings (e.g. {"timeout": 60}); overriding the
    child_exit, when_ready or post_fork hooks turns off what they do here.
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
    multiproc_dir: str | None = None
    metrics_port_failures: list[ServeError] = []
    if metrics:
        multiproc_dir = make_multiproc_dir(tmp_dir)
        enable_multiprocess_metrics(multiproc_dir)

        def child_exit(server: Any, worker: Any) -> None:
            mark_process_dead(worker.pid, multiproc_dir)

        options["child_exit"] = child_exit
        if metrics_port:
            options.update(_arbiter_metrics_hooks(host, metrics_port, metrics_port_failures))
    options.update(gunicorn_options or {})

    arbiter_pid = os.getpid()
    try:
        _Gunicorn(app_factory, options).run()
    except SystemExit:
        if metrics_port_failures and os.getpid() == arbiter_pid:
            raise metrics_port_failures[0] from None
        raise
    finally:
        # Workers leave through this frame too (they are forks of it); only the arbiter cleans up.
        if multiproc_dir and os.getpid() == arbiter_pid:
            shutil.rmtree(multiproc_dir, ignore_errors=True)


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
