"""gunicorn configuration for an app instrumented with `loadlab.instrument`: exact totals of all workers.

    gunicorn -c python:loadlab.gunicorn_conf -w 2 -b 127.0.0.1:8000 myapi:app

Each gunicorn worker is a process of its own; without this, /metrics reports the counts of
whichever worker answered the scrape. This module installs loadlab.multiproc.GunicornHooks (the
same hooks the bundled target runs):

- a fresh PROMETHEUS_MULTIPROC_DIR, made when gunicorn reads its configuration, before anything
  forks or loads the app (also with --preload), in /dev/shm when it is writable; the directories
  that killed servers left there are removed. A PROMETHEUS_MULTIPROC_DIR you set yourself is used
  as it is, and kept at exit (empty it before each start, as prometheus-client asks);
- `mark_process_dead` whenever a worker exits (`child_exit`);
- the directory it made removed when the arbiter exits (`on_exit`);
- with LOADLAB_METRICS_PORT=PORT, the merged metrics served from the arbiter at
  http://LOADLAB_METRICS_BIND:PORT/metrics (bind 127.0.0.1 unless LOADLAB_METRICS_BIND says
  otherwise). The arbiter handles no requests, so that port answers while every worker is busy,
  where a scrape of the API port waits in the queue behind the load.

Your own settings still apply. Command-line flags (-w, -b, --timeout, ...) and GUNICORN_CMD_ARGS
beat a config file. gunicorn reads one config file, this one, so your own config file is read
from here: the one LOADLAB_GUNICORN_CONFIG names (a path, or python:MODULE), else ./gunicorn.conf.py
if there is one (the file gunicorn reads when -c is not given). Its settings are taken as they are;
its when_ready, post_fork and child_exit hooks run after ours, its on_exit before ours (which
removes the directory), so defining a hook never turns ours off.

Settings and hooks only: module-level names that are gunicorn setting names are read as settings,
so the state here is underscore-prefixed. Imports the standard library, gunicorn's own modules and
prometheus-client (lazily), nothing of Locust, gevent, matplotlib or Faker.
"""

from __future__ import annotations

import atexit
import errno
import functools
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

from loadlab import multiproc

METRICS_PORT_ENV = "LOADLAB_METRICS_PORT"
METRICS_BIND_ENV = "LOADLAB_METRICS_BIND"
DEFAULT_METRICS_BIND = "127.0.0.1"
USER_CONFIG_ENV = "LOADLAB_GUNICORN_CONFIG"
GUNICORN_DEFAULT_CONFIG = "gunicorn.conf.py"


def _metrics_port(environ: Any = os.environ) -> int:
    """LOADLAB_METRICS_PORT as a port number, 0 when unset; a bad value stops gunicorn with one line."""
    raw = str(environ.get(METRICS_PORT_ENV, "")).strip()
    if not raw:
        return 0
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SystemExit(f"{METRICS_PORT_ENV}={raw!r} is not a port number: set it to a free port (1-65535) "
                         "or unset it")
    return int(raw)


def _bind_message(bind: str, port: int) -> Callable[[OSError], str]:
    def message(exc: OSError) -> str:
        why = ("is already in use: stop the process listening there or choose another"
               if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror}): choose another")
        return f"{METRICS_PORT_ENV}: port {port} on {bind} {why} {METRICS_PORT_ENV}"
    return message


def _user_config(environ: Any = os.environ) -> dict[str, Any]:
    """The names of your own gunicorn config (LOADLAB_GUNICORN_CONFIG, else ./gunicorn.conf.py), read
    as gunicorn reads `-c`; {} when there is none. A name that is not there stops gunicorn with one line."""
    location = str(environ.get(USER_CONFIG_ENV, "")).strip()
    if not location:
        # gunicorn reads ./gunicorn.conf.py when -c is not given: read it here, unless that file is
        # what is importing this module (gunicorn loads it as __config__), which would read it twice.
        if "__config__" in sys.modules or not os.path.isfile(GUNICORN_DEFAULT_CONFIG):
            return {}
        location = GUNICORN_DEFAULT_CONFIG
    if location.startswith("python:"):
        name = location[len("python:"):]
        try:
            return vars(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):  # yours, not one it imports
                raise SystemExit(f"{USER_CONFIG_ENV}={location!r}: no module {exc.name!r} on the path; "
                                 "name your gunicorn config as python:MODULE or a file path") from None
            raise
    path = location.removeprefix("file:")
    if not os.path.isfile(path):
        raise SystemExit(f"{USER_CONFIG_ENV}={location!r}: no such file; name your gunicorn config as a file path "
                         "or python:MODULE")
    spec = importlib.util.spec_from_file_location("__loadlab_user_config__", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return vars(module)


def _both(first: Callable[..., Any], then: Callable[..., Any], theirs: Callable[..., Any]) -> Callable[..., Any]:
    """`first` then `then`, with the signature of `theirs` (gunicorn checks a hook's argument count)."""
    @functools.wraps(theirs)
    def hook(*args: Any) -> None:
        first(*args)
        then(*args)
    return hook


def _merge(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Your config's gunicorn settings over ours, with each of our hooks kept and chained with yours."""
    from gunicorn.config import KNOWN_SETTINGS

    names = {setting.name for setting in KNOWN_SETTINGS}
    merged = dict(ours)
    for name, value in theirs.items():
        if name not in names:
            continue
        mine = ours.get(name)
        if mine is None or value is mine or not callable(value):  # not a hook of ours, or ours re-exported
            merged[name] = value
        elif name == "on_exit":
            merged[name] = _both(value, mine, value)  # yours, then ours: ours removes the directory
        else:
            merged[name] = _both(mine, value, value)
    return merged


_port = _metrics_port()
_bind = os.environ.get(METRICS_BIND_ENV, "").strip() or DEFAULT_METRICS_BIND
_hooks = multiproc.GunicornHooks(os.environ.get(multiproc.ENV) or None, _bind, _port, _bind_message(_bind, _port))
atexit.register(_hooks.cleanup)  # also when gunicorn stops before on_exit (a bad flag, a taken port)

# The settings gunicorn reads from this module: when_ready, post_fork, child_exit and on_exit, and
# gunicorn's worker heartbeat files on tmpfs too (its docs' advice; --worker-tmp-dir still wins).
_ours: dict[str, Any] = {"worker_tmp_dir": multiproc.memory_tmp_dir(), **_hooks.hooks()}
globals().update(_ours)  # first, so a config of yours doing `from loadlab.gunicorn_conf import *` finds them
globals().update(_merge(_ours, _user_config()))
