"""Serving a Flask app: under gunicorn with N sync workers (`serve`), or Flask's dev server (`serve_dev`).

`serve` takes any app factory, so the same launcher (port check, Prometheus multiprocess
directory, gunicorn) serves the target API and any other Flask app built for the lab. Gunicorn
runs in this process (gunicorn.app.base.BaseApplication): the process tree is this Python
process as arbiter plus forked workers, all with the caller's command line, and SIGTERM to the
arbiter stops them all.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication


class ServeError(RuntimeError):
    """The server cannot start; the message is one line naming the problem and the fix."""


def default_workers() -> int:
    """One sync worker per CPU this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_port(host: str, port: int) -> None:
    """Raise ServeError if host:port cannot be bound, before anything forks or waits."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Like gunicorn: a port whose old connections linger in TIME_WAIT is free to use.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except socket.gaierror:
            raise ServeError(f"cannot resolve host {host!r}: pass an IP address such as 127.0.0.1 with --host") from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServeError(f"port {port} on {host} is already in use: stop the process listening there "
                                 f"or choose another port with --port") from None
            if exc.errno == errno.EACCES:
                raise ServeError(f"permission denied binding port {port} on {host}: "
                                 f"choose a port above 1023 with --port") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ServeError(f"cannot bind {host}:{port}: {host} is not an address of this machine; "
                                 f"use --host 127.0.0.1") from None
            raise ServeError(f"cannot bind {host}:{port}: {exc.strerror}") from None


def memory_tmp_dir() -> str | None:
    """/dev/shm if it is a usable directory, else None (the system temp dir).

    Prometheus multiprocess files are mmapped and written on every request, and gunicorn touches
    its worker heartbeat files constantly; on a disk filesystem each write can fault and dirty
    the page for writeback, on tmpfs it is plain memory."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


def enable_multiprocess_metrics(directory: str) -> None:
    """Make prometheus_client in this process and its future children write to `directory`."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    # prometheus_client picks its value class when first imported; if something imported it
    # before the variable was set, pick again so metrics created from now on are file-backed
    # (metrics.py reads values.ValueClass at creation time for this reason).
    if "prometheus_client.values" in sys.modules:
        from prometheus_client import values
        values.ValueClass = values.get_value_class()


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
    gunicorn_options: Mapping[str, Any] | None = None,
) -> None:
    """Serve the app built by `app_factory()` under gunicorn with `workers` sync workers until
    SIGTERM/SIGINT. Raises ServeError (one line) if host:port cannot be bound.

    With `metrics`, a fresh PROMETHEUS_MULTIPROC_DIR is created (and removed at exit) before any
    worker starts, and dead workers are marked with mark_process_dead, so an app instrumented
    with target_app.instrumentation.instrument reports all workers' totals on every /metrics.
    `gunicorn_options` override gunicorn settings (e.g. {"timeout": 60}).
    """
    check_port(host, port)
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    options: dict[str, Any] = {
        "bind": bind,
        "workers": workers or default_workers(),
        "worker_class": "sync",  # the lab's endpoints are CPU-bound (password hashing)
        "proc_name": "target_app",
        "graceful_timeout": 10,
        "accesslog": None,  # access logs would cost throughput under load; metrics count requests
        "errorlog": "-",
        "loglevel": "info",
        # gunicorn 27 opens a control socket at one fixed per-user path; two servers on one
        # machine (tests, side-by-side benchmarks) would fight over it.
        "control_socket_disable": True,
    }
    if memory_tmp_dir():
        options["worker_tmp_dir"] = memory_tmp_dir()
    multiproc_dir: str | None = None
    if metrics:
        multiproc_dir = tempfile.mkdtemp(prefix="target_app-prometheus-", dir=memory_tmp_dir())
        enable_multiprocess_metrics(multiproc_dir)

        def child_exit(server: Any, worker: Any) -> None:
            from prometheus_client import multiprocess
            multiprocess.mark_process_dead(worker.pid, multiproc_dir)

        options["child_exit"] = child_exit
    options.update(gunicorn_options or {})

    arbiter_pid = os.getpid()
    try:
        _Gunicorn(app_factory, options).run()
    finally:
        # Workers leave through this frame too (they are forks of it); only the arbiter cleans up.
        if multiproc_dir and os.getpid() == arbiter_pid:
            shutil.rmtree(multiproc_dir, ignore_errors=True)


def serve_dev(app_factory: Callable[[], Flask], host: str = "127.0.0.1", port: int = 5000) -> None:
    """Serve with Flask's single-process development server (threaded, no reloader)."""
    check_port(host, port)
    app_factory().run(host=host, port=port, threaded=True, use_reloader=False)
