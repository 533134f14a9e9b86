"""Load generators on other machines, on Locust's own distributed engine (`--remote-workers N`).

    loadlab run login-step --host http://10.0.0.5:8000 --remote-workers 2 --master-bind 10.0.0.9

The lab starts Locust's master with `--expect-workers` (the local `--workers` plus N) and starts
no worker for the N: it prints the command to run on each load machine (`worker_command`), then
waits until Locust's master counts them all. The count is the exporter's `locust_workers` gauge,
the master's own `worker_count` (ready + spawning + running workers); in `run` mode Locust's
`--expect-workers-max-wait` gives up a few seconds later, as a backstop. Workers that do not all connect within
`--workers-timeout` stop the run with one line naming how many arrived (`WorkersMissing`).

A remote worker lost during the test (its machine died, someone pressed Ctrl-C there) shows as a
`locust_workers` below the expected count while the master's test still runs: Locust only marks it
missing and runs on with fewer users than each step asks for, so the lab stops the run and judges
the part that ran as partial, as it does for a local worker that dies (`lost_worker`).

Locust's master port has no authentication: anyone who reaches it can join as a worker (and run
the locustfile's code with whatever the master sends). `--master-bind` is 127.0.0.1 unless the user
opens it, and then only on a trusted network.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from loadlab.processes import ComponentDied, LabError
from loadlab.sampler import parse_metrics, scrape

DEFAULT_WORKERS_TIMEOUT_S = 60.0
WORKERS = "locust_workers"
RUNNING = "locust_running"
# The suite's own variables (locust_tests/config/test_config.py, the SLO, the step hunt) a worker
# needs to run the same scenario. Secrets (LAB_ADMIN_TOKEN, web passwords) are never printed.
SUITE_VARIABLES = ("MIN_WAIT_TIME", "MAX_WAIT_TIME", "USERS_COUNT", "LOGIN_USERS", "TEST_USERS_FILE",
                   "REGISTRATION_ENDPOINT", "LOGIN_ENDPOINT", "HEALTH_ENDPOINT", "REGISTRATION_BODY", "LOGIN_BODY",
                   "REGISTRATION_OK_STATUS", "REGISTRATION_EXISTS_STATUS", "LOGIN_OK_STATUS", "LOGIN_TOKEN_FIELD")
SECRET = re.compile(r"PASSWORD|TOKEN|SECRET|_WEB_", re.IGNORECASE)  # LOCUST_WEB_PASSWORD, the master's web UI
SECURITY_NOTE = ("Locust's master port has no authentication: open --master-bind only on a trusted network "
                 "(anyone who reaches it can join as a worker)")


# Locust's master marks a worker missing after HEARTBEAT_LIVENESS (3) missed heartbeats of
# HEARTBEAT_INTERVAL (1 s) each: the worker was gone this long before the count shows it.
MISSING_AFTER_S = 4.0
MISSING_LINE = "failed to send heartbeat, setting state to missing"  # locust.runners.MasterRunner.heartbeat_worker
# Locust's own --expect-workers-max-wait gives up this much after the lab's --workers-timeout: the
# lab's message (how many came) comes first; Locust's is the backstop should the lab be gone.
LOCUST_WAIT_MARGIN_S = 5


class WorkersMissing(LabError):
    """Fewer workers than expected connected to Locust's master in time."""


class WorkerLost(ComponentDied):
    """A worker the master counted is gone mid-test; `at`: when it was last known to be there."""

    def __init__(self, message: str, at: float) -> None:
        super().__init__(message)
        self.at = at


@dataclass(frozen=True)
class MasterCount:
    """What Locust's master said in one scrape of its exporter."""

    workers: int
    running: bool


def check_bind(host: str) -> str:
    """`host` if this machine can listen on it (an address of one of its interfaces, or 0.0.0.0)."""
    try:
        infos = socket.getaddrinfo(host, 0, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise LabError(f"--master-bind {host!r} is not an address or a name this machine resolves: give one of "
                       f"its IPv4 addresses, e.g. 10.0.0.9, or 0.0.0.0 for all") from None
    address = infos[0][4][0]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError as exc:
            raise LabError(f"--master-bind {host} ({address}) is not an address of this machine "
                           f"({exc.strerror or exc}): give one of its own addresses, or 0.0.0.0 for all") from None
    return host


def is_open(bind: str) -> bool:
    """Whether the master listens beyond this machine (anything but a loopback address)."""
    try:
        return not ipaddress.ip_address(socket.gethostbyname(bind)).is_loopback
    except (OSError, ValueError):
        return True


def loopback_note(bind: str) -> str | None:
    """With remote workers: why none on another machine would connect to a master bound to loopback."""
    if is_open(bind):
        return None
    return (f"Locust's master listens on loopback only (--master-bind {bind}): workers on other machines cannot "
            f"reach it; pass --master-bind <this machine's address> (no authentication there: see README)")


def master_host(bind: str) -> str:
    """The address workers connect to: the bind address, or this machine's name when it binds them all."""
    return socket.getfqdn() if bind in ("0.0.0.0", "*", "") else bind


def local_master_host(bind: str) -> str:
    """Where this machine's own workers (--workers) reach the master: loopback unless it binds one address."""
    return "127.0.0.1" if bind in ("0.0.0.0", "*", "") else bind


def worker_env(environ: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The variables a worker needs: the suite's (those set here) and `extra` (the run's thresholds)."""
    out = {name: environ[name] for name in SUITE_VARIABLES if environ.get(name)}
    out.update({k: v for k, v in environ.items() if k.startswith("LOCUST_") and v and not SECRET.search(k)})
    out.update(extra)
    return out


def worker_command(locust_args: Sequence[str], env: Mapping[str, str], host: str, port: int,
                   pythonpath: str) -> str:
    """The shell line to run on each load machine: `locust -f ... --worker --master-host H --master-port P`.
    `locust_args`: what the lab's own workers get after `-m locust` (the locustfile, scenario, host...)."""
    assigns = [f"{name}={shlex.quote(value)}" for name, value in {"PYTHONPATH": pythonpath, **env}.items()]
    args = ["locust", *locust_args, "--worker", "--master-host", host, "--master-port", str(port)]
    return " ".join([*assigns, *(shlex.quote(a) for a in args)])


def master_count(exporter_url: str) -> MasterCount | None:
    """The master's connected workers and whether its test runs; None when its exporter does not answer."""
    try:
        samples = parse_metrics(scrape(exporter_url, timeout=2.0), (WORKERS, RUNNING))
    except (OSError, ValueError):
        return None
    values = {name: value for name, _, value in samples}
    if WORKERS not in values:
        return None
    return MasterCount(int(values[WORKERS]), values.get(RUNNING) == 1)


def missing_message(arrived: int, expected: int, local: int, timeout: float, port: int) -> str:
    """One line: how many remote workers arrived of how many, and what to check."""
    return (f"{max(0, arrived - local)} of {expected - local} remote Locust workers connected within {timeout:g} s: "
            f"check that each load machine runs the `locust ... --worker` command printed above, that no firewall "
            f"blocks master port {port}, and that --master-bind is an address those machines reach "
            f"(or raise --workers-timeout)")


def wait_for_workers(exporter_url: str, expected: int, local: int, timeout: float, port: int,
                     master_exited: Callable[[], bool], say: Callable[[str], None]) -> None:
    """Until Locust's master counts `expected` workers; WorkersMissing after `timeout` s, or when the
    master gives up first (Locust's own --expect-workers-max-wait)."""
    deadline = time.monotonic() + timeout
    most = 0  # the most seen at once: a master that gives up sends its workers away before it exits
    while True:
        count = master_count(exporter_url)
        if count is not None and count.workers >= expected:
            say(f"workers    {count.workers - local} of {expected - local} remote workers connected")
            return
        if count is not None and count.workers > most:
            most = count.workers
            say(f"workers    {max(0, most - local)} of {expected - local} remote workers connected so far")
        if master_exited() or time.monotonic() >= deadline:
            raise WorkersMissing(missing_message(most, expected, local, timeout, port))
        time.sleep(0.5)


class MissingLog:
    """Locust's master's own word that it lost a worker: its log line when a worker misses its
    heartbeats. It also covers the last worker going: the master then stops its test at once, so
    the count never shows a running test with fewer workers. Read on from where it was left."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.found: str | None = None

    def check(self) -> str | None:
        if self.found is None:
            try:
                with open(self.path, "rb") as fh:
                    fh.seek(self.offset)
                    chunk = fh.read()
            except OSError:
                return None
            whole = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written is read next time
            self.offset += len(whole)
            for line in whole.decode(errors="replace").splitlines():
                if MISSING_LINE in line:
                    self.found = line.split(": ", 1)[-1].strip().rstrip(".")
                    break
        return self.found


def lost_worker(count: MasterCount | None, expected: int, missing: str | None = None) -> str | None:
    """Why the run cannot go on: a worker the master counted is gone while its test runs, or the
    master logged one missing (`MissingLog`); None if neither."""
    short = count is not None and count.running and count.workers < expected
    if not short and missing is None:
        return None
    counted = f"Locust's master counts {count.workers} of {expected} workers" if short and count else (
        f"Locust's master says: {missing}")
    return (f"a Locust worker was lost during the test: {counted} (a remote machine died, lost the network, or its "
            f"worker was stopped); the steps after that would run with fewer users than they ask for")


__all__ = ["DEFAULT_WORKERS_TIMEOUT_S", "MISSING_AFTER_S", "MasterCount", "MissingLog", "SECURITY_NOTE", "WorkerLost",
           "WorkersMissing", "check_bind", "is_open", "local_master_host", "loopback_note", "lost_worker",
           "master_count", "master_host", "missing_message", "wait_for_workers", "worker_command", "worker_env"]
