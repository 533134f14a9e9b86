"""The sidecar's `/profile?seconds=N[&group=NAME][&rate=HZ]`: one py-spy recording of a process group.

For a server the lab cannot reach by PID (another machine), the sidecar running beside it takes
the profile: `GET /profile?seconds=10` samples the group's processes (default `target`: every
process of the group, one py-spy each) for 10 seconds, on-CPU and all threads (`rate` samples a
second, default 20; `loadlab run --profile-rate` sets it), and answers
with JSON: `{"group", "pids", "seconds", "rate", "start", "end", "cpu", "all", "errors"}`, where
`cpu` and `all` are collapsed stacks in the format `loadlab.stacks` defines (the lab's
own `--profile` chunks are the same). Command lines are cut from the stacks and py-spy reads no
local variables, so a profile carries no request data.

Off unless the sidecar is started with `--allow-profiling` (403 otherwise): sampling needs ptrace
over the target, which is more than reading /proc. It answers only where the sidecar binds, one
recording at a time (409 while one runs), for at most `MAX_SECONDS`.
"""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.exposition import ThreadingWSGIServer

from loadlab import stacks
from loadlab.contract.names import SIDECAR_PROFILE_PATH, TARGET_GROUP

from .groups import GroupSpec
from .tracker import ProcessTracker

PROFILE_PATH = SIDECAR_PROFILE_PATH
MAX_SECONDS = 600
MAX_RATE = 1000  # samples a second at most (py-spy's own default is 100)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ProfileError(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def group_members(groups: list[GroupSpec], name: str) -> list[int]:
    """PIDs of the group's processes now."""
    if name not in {g.name for g in groups}:
        raise ProfileError("404 Not Found", f"no group {name!r}: this sidecar has {', '.join(g.name for g in groups)}")
    tracker = ProcessTracker(groups)
    tracker.scan()
    members = sorted(tracker.members()[name])
    if not members:
        raise ProfileError("503 Service Unavailable", f"group {name!r} has no process now: is the server running?")
    return members


def serve(app: WsgiApp, host: str, port: int) -> WSGIServer:
    """Serve `app` on host:port from a daemon thread, as prometheus_client's start_http_server does
    (its threading server, no request log); raises OSError when the address cannot be bound."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = make_server(host, port, app, Server, handler_class=QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="sidecar-http", daemon=True).start()
    return httpd


def seconds_from(query: dict[str, list[str]]) -> float:
    raw = (query.get("seconds") or [""])[0]
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not 1 <= seconds <= MAX_SECONDS:
        raise ProfileError("400 Bad Request", f"seconds={raw!r}: give the recording's length, 1 to {MAX_SECONDS}, "
                                              "e.g. /profile?seconds=10")
    return seconds


def rate_from(query: dict[str, list[str]], default: int) -> int:
    raw = (query.get("rate") or [str(default)])[0]
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_RATE:
        raise ProfileError("400 Bad Request", f"rate={raw!r}: give samples a second, 1 to {MAX_RATE}, e.g. rate=20")
    return int(raw)


class ProfileEndpoint:
    """WSGI: `/profile` here, every other path to `metrics_app` (the Prometheus exposition)."""

    def __init__(self, metrics_app: WsgiApp, groups: list[GroupSpec], allowed: bool,
                 rate: int = stacks.DEFAULT_RATE) -> None:
        self.metrics_app = metrics_app
        self.groups = groups
        self.allowed = allowed
        self.rate = rate
        self._busy = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PROFILE_PATH:
            return self.metrics_app(environ, start_response)
        try:
            body = self.profile(parse_qs(environ.get("QUERY_STRING", "")))
            status = "200 OK"
        except ProfileError as exc:
            status, body = exc.status, {"error": str(exc)}
        data = (json.dumps(body) + "\n").encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def profile(self, query: dict[str, list[str]]) -> dict[str, Any]:
        if not self.allowed:
            raise ProfileError("403 Forbidden", "profiling is off: start the sidecar with --allow-profiling "
                                                "(it needs ptrace over the target: root or CAP_SYS_PTRACE)")
        seconds = seconds_from(query)
        rate = rate_from(query, self.rate)
        group = (query.get("group") or [TARGET_GROUP])[0]
        if not self._busy.acquire(blocking=False):
            raise ProfileError("409 Conflict", "a profile is being taken already: retry when it is done")
        try:
            return self.record(group, group_members(self.groups, group), seconds, rate)
        finally:
            self._busy.release()

    def record(self, group: str, members: list[int], seconds: float, rate: int) -> dict[str, Any]:
        errors: list[str] = []
        readable = []
        for pid in members:
            try:
                stacks.check_attach(pid)
                readable.append(pid)
            except stacks.ProfilerUnavailable as exc:
                errors.append(str(exc))
        if not readable:
            raise ProfileError("503 Service Unavailable", "; ".join(dict.fromkeys(errors)))  # once per distinct reason
        start = time.time()
        with tempfile.TemporaryDirectory(prefix="sidecar-profile-") as tmp:
            recorder = stacks.GroupRecorder(readable, Path(tmp), "profile", rate=rate, seconds=seconds).start()
            found = recorder.wait(timeout=seconds + 30)
        return {"group": group, "pids": readable, "seconds": seconds, "rate": rate, "start": start,
                "end": time.time(), **{kind: stacks.format_collapsed(found[kind]) for kind in stacks.KINDS},
                "errors": errors + recorder.errors}
