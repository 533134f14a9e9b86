"""gunicorn configuration for an app instrumented with `loadlab.instrument`: exact totals of all workers.

    gunicorn -c python:loadlab.gunicorn_conf -w 2 -b 127.0.0.1:8000 myapi:app

Each gunicorn worker is a process of its own; without this, /metrics reports the counts of
whichever worker answered the scrape. This module:

- creates a fresh PROMETHEUS_MULTIPROC_DIR when gunicorn reads its configuration, before anything
  forks or loads the app (also with --preload), in /dev/shm when it is writable; the directories
  that killed servers left there are removed. A PROMETHEUS_MULTIPROC_DIR you set yourself is used
  as it is, and kept at exit (empty it before each start, as prometheus-client asks);
- calls prometheus-client's `mark_process_dead` whenever a worker exits (`child_exit`);
- removes the directory it created when the arbiter exits (`on_exit`);
- with LOADLAB_METRICS_PORT=PORT, serves the merged metrics from the arbiter at
  http://LOADLAB_METRICS_BIND:PORT/metrics (bind 127.0.0.1 unless LOADLAB_METRICS_BIND says
  otherwise). The arbiter handles no requests, so that port answers while every worker is busy,
  where a scrape of the API port waits in the queue behind the load.

Your own settings still apply: command-line flags (-w, -b, --timeout, ...) and GUNICORN_CMD_ARGS
beat a config file. gunicorn reads one config file; if you have your own, start it with
`from loadlab.gunicorn_conf import *` and keep its hooks, or call ours from yours.

Settings and hooks only: module-level names that are gunicorn setting names are read as settings,
so the state here is underscore-prefixed. Imports the standard library, gunicorn's own modules and
prometheus-client (lazily), nothing of Locust, gevent, matplotlib or Faker.
"""

from __future__ import annotations

import atexit
import errno
import os
import shutil
from typing import Any

from loadlab import multiproc

METRICS_PORT_ENV = "LOADLAB_METRICS_PORT"
METRICS_BIND_ENV = "LOADLAB_METRICS_BIND"
DEFAULT_METRICS_BIND = "127.0.0.1"


def _metrics_port(environ: Any = os.environ) -> int:
    """LOADLAB_METRICS_PORT as a port number, 0 when unset; a bad value stops gunicorn with one line."""
    raw = str(environ.get(METRICS_PORT_ENV, "")).strip()
    if not raw:
        return 0
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SystemExit(f"{METRICS_PORT_ENV}={raw!r} is not a port number: set it to a free port (1-65535) "
                         "or unset it")
    return int(raw)


_port = _metrics_port()
_bind = os.environ.get(METRICS_BIND_ENV, "").strip() or DEFAULT_METRICS_BIND
_owner = os.getpid()  # the arbiter: gunicorn reads this module there, once, before forking
_created: str | None = None
if not os.environ.get(multiproc.ENV):
    _created = multiproc.make_multiproc_dir(multiproc.memory_tmp_dir())
    multiproc.enable_multiprocess_metrics(_created)
_directory = os.environ[multiproc.ENV]
_metrics_server: list[Any] = []


def _remove_created() -> None:
    # Workers are forks of the arbiter and run its atexit handlers too: only the owner removes.
    if _created and os.getpid() == _owner:
        shutil.rmtree(_created, ignore_errors=True)


atexit.register(_remove_created)  # also when gunicorn stops before on_exit (a bad flag, a taken port)

# gunicorn's worker heartbeat files on tmpfs too (its docs' advice); -w/--worker-tmp-dir still win.
worker_tmp_dir = multiproc.memory_tmp_dir()


def when_ready(server: Any) -> None:
    """In the arbiter, after its listeners are bound and before any worker forks: the metrics port."""
    if not _port:
        return
    try:
        httpd = multiproc.serve_merged_metrics(_bind, _port)
    except OSError as exc:
        why = ("is already in use: stop the process listening there or choose another"
               if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror}): choose another")
        server.halt(f"{METRICS_PORT_ENV}: port {_port} on {_bind} {why} {METRICS_PORT_ENV}", exit_status=2)
        return
    _metrics_server.append(httpd)
    server.log.info("Serving the metrics of all workers at http://%s:%s/metrics", _bind, _port)


def post_fork(server: Any, worker: Any) -> None:
    """In each new worker: close its copy of the metrics port, so only the arbiter holds it (a dead
    arbiter then means a refused scrape, not a hung one)."""
    for httpd in _metrics_server:
        httpd.socket.close()


def child_exit(server: Any, worker: Any) -> None:
    """In the arbiter, when a worker has exited: drop its live gauges; its counts stay in the totals."""
    multiproc.mark_process_dead(worker.pid, _directory)


def on_exit(server: Any) -> None:
    """In the arbiter, as gunicorn stops: remove the directory this module created."""
    _remove_created()
