"""prometheus_client's multiprocess directory for a pre-fork server (gunicorn): make it, enable it,
serve its merged totals, clean it up.

With several worker processes, each worker counts its own requests; prometheus_client's multiprocess
mode has every process write its values to files in PROMETHEUS_MULTIPROC_DIR, and a scrape merges
the files of all processes. The directory must exist before the workers fork, must not hold the
files of an earlier run, and dead workers' live gauges must be removed (`mark_process_dead`).

`loadlab.gunicorn_conf` (your own gunicorn) and `target_app.server` (the bundled target's launcher)
both use these helpers. Importing this module has no side effect and imports no prometheus_client.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
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
