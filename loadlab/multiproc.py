"""prometheus_client's multiprocess directory for a pre-fork server (gunicorn): make it, enable it,
serve its merged totals, clean it up.

With several worker processes, each worker counts its own requests; prometheus_client's multiprocess
mode has every process write its values to files in PROMETHEUS_MULTIPROC_DIR, and a scrape merges
the files of all processes. The directory must exist before the workers fork, must not hold the
files of an earlier run, and dead workers' live gauges must be removed (`mark_process_dead`).

`GunicornHooks` is the one implementation of the gunicorn side: `loadlab.gunicorn_conf` (your own
gunicorn) and `target_app.server` (the bundled target's launcher) both install its hooks, so the
bundled target runs exactly the code your server runs. Importing this module has no side effect
and imports no prometheus_client.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROC_PREFIX = "loadlab-prometheus-"
# <prefix><owner pid>-<random>: the owner's PID in the name, so a later start can tell a dead
# server's leftover (SIGKILL skips every cleanup) from a live server's directory.
_MULTIPROC_NAME = re.compile(re.escape(MULTIPROC_PREFIX) + r"(\d+)-[A-Za-z0-9_]+")


def memory_tmp_dir() -> str | None:
    """/dev/shm if it is a usable directory, else None (the system temp dir).

    Prometheus multiprocess files are mmapped and written on every request, and gunicorn touches
    its worker heartbeat files constantly; on a disk filesystem each write can fault and dirty
    the page for writeback, on tmpfs it is plain memory."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: no signal sent, only the existence check
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def make_multiproc_dir(parent: str | None) -> str:
    """A fresh multiprocess directory in `parent` (None: the system temp dir) named after this
    process, after removing the directories that dead servers left there.

    Only directories named by this function whose PID is not running are removed: a live server's
    directory, or one of another naming, is never touched. (A recycled PID keeps a stale directory
    until that process ends too: the safe side.)"""
    parent_dir = parent or tempfile.gettempdir()
    try:
        names = os.listdir(parent_dir)
    except OSError:
        names = []
    for name in names:
        match = _MULTIPROC_NAME.fullmatch(name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(os.path.join(parent_dir, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{MULTIPROC_PREFIX}{os.getpid()}-", dir=parent)


def enable_multiprocess_metrics(directory: str) -> None:
    """Make prometheus_client in this process and its future children write to `directory`."""
    os.environ[ENV] = directory
    # prometheus_client picks its value class when first imported; if something imported it
    # before the variable was set, pick again so metrics created from now on are file-backed
    # (metrics.py reads values.ValueClass at creation time for this reason).
    if "prometheus_client.values" in sys.modules:
        from prometheus_client import values
        values.ValueClass = values.get_value_class()


def mark_process_dead(pid: int, directory: str | None = None) -> None:
    """A worker has exited: drop its live gauges' files (its counters and histograms stay, so the
    totals keep its requests)."""
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(pid, directory)


def serve_merged_metrics(host: str, port: int) -> Any:
    """Serve the merged metrics of every process writing to PROMETHEUS_MULTIPROC_DIR at
    http://host:port/metrics from a daemon thread of this process; returns the HTTP server.
    Raises OSError if host:port cannot be bound."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # reads PROMETHEUS_MULTIPROC_DIR at each scrape
    httpd, _thread = start_http_server(port, addr=host, registry=registry)
    return httpd


class GunicornHooks:
    """The gunicorn hooks that keep the totals of all workers exact, made in the arbiter before
    anything forks (gunicorn reads its configuration there).

    With `directory` None, a fresh multiprocess directory is made now (in /dev/shm when usable,
    after removing those that killed servers left) and `cleanup` removes it; a directory given
    (one you set in PROMETHEUS_MULTIPROC_DIR) is used as it is and kept. Either way it is enabled
    for this process and the workers it forks.

    - when_ready (arbiter, listeners bound, no worker forked yet): with a `metrics_port`, serve the
      merged totals at http://metrics_host:metrics_port/metrics from the arbiter, which handles no
      requests, so that port answers while every worker is busy. A port that cannot be bound
      halts gunicorn with exit 2 and one line, `bind_message(exc)`, also kept in `failure`;
    - post_fork (each worker): close the worker's copy of that port, so only the arbiter holds it
      (a dead arbiter then means a refused scrape, not a hung one);
    - child_exit (arbiter, a worker exited): mark_process_dead, so its live gauges go; its counts
      stay in the totals;
    - on_exit (arbiter, gunicorn stopping): `cleanup`.
    """

    def __init__(self, directory: str | None = None, metrics_host: str = "127.0.0.1", metrics_port: int = 0,
                 bind_message: Callable[[OSError], str] | None = None) -> None:
        self.owner = os.getpid()  # the arbiter: workers are its forks and inherit this object
        self.created = None if directory else make_multiproc_dir(memory_tmp_dir())
        self.directory: str = directory or self.created or ""
        enable_multiprocess_metrics(self.directory)
        self.metrics_host, self.metrics_port = metrics_host, metrics_port
        self.bind_message = bind_message or (lambda exc: f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc.strerror}")
        self.failure: str | None = None
        self._servers: list[Any] = []

    def hooks(self) -> dict[str, Callable[..., None]]:
        """The hooks by their gunicorn setting names."""
        return {"when_ready": self.when_ready, "post_fork": self.post_fork,
                "child_exit": self.child_exit, "on_exit": self.on_exit}

    def when_ready(self, server: Any) -> None:
        if not self.metrics_port:
            return
        try:
            httpd = serve_merged_metrics(self.metrics_host, self.metrics_port)
        except OSError as exc:
            self.failure = self.bind_message(exc)
            server.halt(self.failure, exit_status=2)  # exits the arbiter
            return
        self._servers.append(httpd)
        host = f"[{self.metrics_host}]" if ":" in self.metrics_host else self.metrics_host
        server.log.info("Serving the metrics of all workers at http://%s:%s/metrics", host, self.metrics_port)

    def post_fork(self, server: Any, worker: Any) -> None:
        for httpd in self._servers:
            httpd.socket.close()  # this process's copy only; the arbiter keeps serving

    def child_exit(self, server: Any, worker: Any) -> None:
        mark_process_dead(worker.pid, self.directory)

    def on_exit(self, server: Any) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the directory made here; only in the arbiter (workers run its atexit handlers and
        `finally` blocks too)."""
        if self.created and os.getpid() == self.owner:
            shutil.rmtree(self.created, ignore_errors=True)
