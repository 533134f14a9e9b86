"""`python -m monitoring.sidecar`: parse flags, build the registry, serve it until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
import threading

from prometheus_client import generate_latest, make_wsgi_app

from loadlab.contract.names import DEFAULT_BIND, DEFAULT_PORTS

from . import build_registry
from .groups import DEFAULT_LOCUST_REGEX, DEFAULT_TARGET_REGEX, GroupConfigError, GroupSelection, resolve_groups
from .profile import PROFILE_PATH, ProfileEndpoint, serve

log = logging.getLogger("monitoring.sidecar")

EPILOG = f"""\
Groups: a process belongs to a group if its command line (argv joined by spaces)
matches one of the group's regexes (re.search), if it is one of the group's PIDs or
the PID in one of its PID files (re-read every scrape), or if its parent was a member
when it was first seen. Flags and --config entries with the same NAME are merged.
With no group given at all, two defaults apply:
  target = {DEFAULT_TARGET_REGEX}
  locust = {DEFAULT_LOCUST_REGEX}
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m monitoring.sidecar", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Prometheus exporter for CPU/memory of named process groups (process-exporter metric "
                    "names) and of the host (node_exporter names), built on psutil.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORTS["sidecar"], help="port to serve /metrics on (default: %(default)s)")
    parser.add_argument("--host", default=DEFAULT_BIND,
                        help="address to bind (default: %(default)s; use 0.0.0.0 in a container)")
    parser.add_argument("--group", action="append", default=[], metavar="NAME=REGEX",
                        help="processes whose command line matches REGEX, and their children (repeatable)")
    parser.add_argument("--group-pid", action="append", default=[], metavar="NAME=PID",
                        help="the process PID and its descendants (repeatable)")
    parser.add_argument("--pid-file", action="append", default=[], metavar="NAME=PATH",
                        help="the process whose PID is in PATH, re-read every scrape, and its descendants")
    parser.add_argument("--config", metavar="FILE", help="groups from a .yaml/.yml/.toml file (see README)")
    parser.add_argument("--no-host-metrics", action="store_true", help="leave out the node_* metrics")
    parser.add_argument("--allow-profiling", action="store_true",
                        help=f"serve {PROFILE_PATH}?seconds=N[&group=NAME]: py-spy stacks of a group's processes "
                             "(needs ptrace: root or CAP_SYS_PTRACE); off by default")
    parser.add_argument("--once", action="store_true",
                        help="print one scrape to stdout and exit instead of serving (for debugging)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"argument --port: {args.port} is not a port number (0-65535)")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="sidecar: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        groups = resolve_groups(GroupSelection(args.group, args.group_pid, args.pid_file, args.config))
    except GroupConfigError as exc:
        print(f"sidecar: error: {exc}", file=sys.stderr)
        return 2
    registry = build_registry(groups, host=not args.no_host_metrics)
    if args.once:
        sys.stdout.write(generate_latest(registry).decode())
        return 0

    try:
        app = ProfileEndpoint(make_wsgi_app(registry), groups, allowed=args.allow_profiling)
        server = serve(app, args.host, args.port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(f"sidecar: error: port {args.port} on {args.host} is already in use (another exporter?); "
                  "stop it or pick a free port with --port", file=sys.stderr)
        else:
            print(f"sidecar: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; "
                  "check --host/--port", file=sys.stderr)
        return 1

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    names = ", ".join(g.name for g in groups)
    log.info("serving http://%s:%d/metrics for groups: %s%s", args.host, server.server_port, names,
             f"; {PROFILE_PATH}?seconds=N allowed" if args.allow_profiling else "")
    while not stop.wait(3600):  # wake on the signal, not on a timer
        pass
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
