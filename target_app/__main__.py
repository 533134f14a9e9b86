"""`python -m target_app`: parse flags, check the database file, start the server.

Every flag has an environment variable (the flag wins); `--help` lists them.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence

from loadlab.contract.cores import usable_cores
from loadlab.contract.names import DEFAULT_BIND, DEFAULT_PORTS

from . import create_app
from .config import HASH_PROFILES, ConfigError, resolve
from .db import SQLiteStorage, StorageError
from .server import ServeError, check_listen, serve, serve_dev

_TRUE = {"1", "true", "yes", "on"}


def _positive_int(name: str, low: int = 1, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{name} must be between {low} and {high or 'any'}, got {value}")
        return value
    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m target_app",
        description="Serve the loadlab target API (registration/login) under gunicorn, instrumented for Prometheus.",
    )
    parser.add_argument("--host", default=env.get("TARGET_APP_HOST", DEFAULT_BIND),
                        help="address to bind (env TARGET_APP_HOST; default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=_positive_int("--port/TARGET_APP_PORT", 1, 65535),
                        default=env.get("TARGET_APP_PORT", str(DEFAULT_PORTS["target"])),
                        help=f"port to bind (env TARGET_APP_PORT; default {DEFAULT_PORTS['target']})")
    parser.add_argument("--metrics-port", type=_positive_int("--metrics-port/TARGET_APP_METRICS_PORT", 0, 65535),
                        default=env.get("TARGET_APP_METRICS_PORT") or "0",
                        help="also serve /metrics (all workers' totals) from the gunicorn arbiter on this port "
                             "of --host, so scrapes never queue behind the load as they do on the API port "
                             f"(env TARGET_APP_METRICS_PORT; default 0 = off; the lab's convention is {DEFAULT_PORTS['target_metrics']})")
    parser.add_argument("--workers", type=_positive_int("--workers/TARGET_APP_WORKERS"),
                        default=env.get("TARGET_APP_WORKERS") or str(usable_cores()),
                        help="gunicorn worker processes (gevent; env TARGET_APP_WORKERS; default: number of CPUs)")
    parser.add_argument("--db", default=env.get("TARGET_APP_DB", "target_app.db"),
                        help="SQLite database file, created if missing (env TARGET_APP_DB; default ./target_app.db)")
    parser.add_argument("--hash-profile", choices=sorted(HASH_PROFILES),
                        default=env.get("TARGET_APP_HASH_PROFILE", "default"),
                        help="password hash cost: default (scrypt N=2^14, realistic) or lab (16x cheaper) "
                             "(env TARGET_APP_HASH_PROFILE)")
    parser.add_argument("--dev", action="store_true", default=env.get("TARGET_APP_DEV", "").lower() in _TRUE,
                        help="Flask's development server, one process, instead of gunicorn (env TARGET_APP_DEV=1)")
    parser.add_argument("--no-metrics", action="store_true",
                        default=env.get("TARGET_APP_NO_METRICS", "").lower() in _TRUE,
                        help="serve without Prometheus instrumentation and without /metrics, "
                             "to measure its overhead (env TARGET_APP_NO_METRICS=1)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = {"DATABASE": args.db, "HASH_PROFILE": args.hash_profile, "METRICS": not args.no_metrics}
    try:
        settings = resolve(config)
        # Open the file and create the schema now, in one process, so an unusable path is one
        # clear line before anything forks.
        storage = SQLiteStorage(args.db)
        try:
            storage.init_schema()
        finally:
            storage.close()
        # Before the banner, so a bad port is the one line printed; serve() checks again (a cheap
        # probe that also narrows the window for the port to be taken meanwhile).
        check_listen(args.host, args.port, args.metrics_port, metrics=not args.no_metrics)
    except (ConfigError, StorageError, ServeError) as exc:
        print(f"target_app: {exc}", file=sys.stderr)
        return 2
    # One signing key for all workers (each worker's create_app would otherwise draw its own,
    # and a token issued by one worker would not verify in another). The factory closure
    # reaches the workers through fork.
    config["SECRET_KEY"] = settings["SECRET_KEY"]
    factory = functools.partial(create_app, config)
    mode = "Flask dev server" if args.dev else f"gunicorn, {args.workers} workers"
    if args.no_metrics:
        metrics = "off"
    elif args.metrics_port:
        metrics = f"on, also at http://{args.host}:{args.metrics_port}/metrics"
    else:
        metrics = "on"
    print(f"target_app: serving http://{args.host}:{args.port} ({mode}), database {os.path.abspath(args.db)}, "
          f"hash profile {args.hash_profile}, metrics {metrics}", file=sys.stderr)
    try:
        if args.dev:
            serve_dev(factory, args.host, args.port, metrics_port=args.metrics_port)
        else:
            serve(factory, args.host, args.port, args.workers, metrics=not args.no_metrics,
                  metrics_port=args.metrics_port)
    except ServeError as exc:
        print(f"target_app: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
