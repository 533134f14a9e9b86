"""Start, watch and stop the lab's components, always by PID, never by name.

Each component runs in its own session (its own process group), with its output in a log
file in the run directory. Stopping sends SIGTERM (Locust: SIGINT, so it writes its reports)
to the group, then SIGKILL to the group and to every descendant seen while it ran, so a
gunicorn worker or a Locust child that slipped out of the group is not left behind. The
benchmarks start their servers with it too.

If `loadlab` itself is killed (SIGKILL, a CI timeout), the kernel sends each component SIGTERM
(PR_SET_PDEATHSIG, on Linux), and `loadlab.watchdog` kills whatever of their trees is still
there a few seconds later.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import psutil


class LabError(Exception):
    """A failure the user can act on; the message names the thing and says what to do."""


class ComponentDied(LabError):
    """A component exited when it should not have; `reason` is the one line for the partial verdict."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message.splitlines()[0]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def port_owner(port: int) -> str:
    """' (pid N, name)' of the process listening on `port`, when the OS lets us see it."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                try:
                    return f" (by pid {conn.pid}, {psutil.Process(conn.pid).name()})"
                except psutil.Error:
                    return f" (by pid {conn.pid})"
    except (psutil.AccessDenied, PermissionError):
        pass
    return ""


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()  # looked up once, here: the child between fork and exec only calls it


def pdeathsig_supported() -> bool:
    return _prctl is not None


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive `sig` when this process dies, even by SIGKILL
    (Linux PR_SET_PDEATHSIG; None elsewhere). The setting survives exec; it is cleared on fork, so
    grandchildren (gunicorn workers, Locust --processes children) are left to their parent and to
    the watchdog."""
    prctl = _prctl
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig))
        if os.getppid() != parent:  # the parent died before prctl took effect: act as if it had
            os.kill(os.getpid(), sig)

    return preexec


def describe_exit(code: int | None) -> str:
    """'code 1', or 'code -9 (killed by SIGKILL)'."""
    if code is not None and code < 0:
        try:
            return f"code {code} (killed by {signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"code {code}"


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Component:
    """One process of the lab: started in its own session, logged to a file, stopped by PID."""

    def __init__(self, name: str, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, ready_url: str | None = None, exits_by_itself: bool = False,
                 label: str | None = None, stop_signal: int = signal.SIGTERM, stop_timeout: float = 10.0) -> None:
        self.name = name
        self.label = label or name  # how messages name it ("locust worker 2")
        # The first signal of stop(), and how long to wait for it before SIGKILL.
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.args = args
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self.ready_url = ready_url
        # Locust headless ends on its own; everything else ending early is a failure.
        self.exits_by_itself = exits_by_itself
        self.proc: subprocess.Popen | None = None
        self._seen: dict[int, psutil.Process] = {}

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> Component:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=self.cwd, start_new_session=True,
                                         preexec_fn=die_with_parent())
        except FileNotFoundError as exc:
            raise LabError(f"{self.name}: cannot run {self.args[0]!r} ({exc.strerror}); install it or fix PATH") from exc
        finally:
            log.close()  # the child holds its own copy
        self.remember_descendants()
        return self

    def remember_descendants(self) -> None:
        """Note the PIDs of the whole tree so stop() can reach children that left the group."""
        if not self.proc:
            return
        try:
            root = psutil.Process(self.proc.pid)
            for proc in [root, *root.children(recursive=True)]:
                self._seen.setdefault(proc.pid, proc)
        except psutil.Error:
            pass

    def pids(self) -> list[int]:
        return list(self._seen)

    def poll(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def exit_summary(self) -> str:
        return f"{self.label} (pid {self.pid}) exited with {describe_exit(self.poll())} during the run"

    def died_message(self) -> str:
        return (f"{self.exit_summary()}; its log: {self.log_path}\n"
                f"--- last lines of {self.log_path.name} ---\n{tail(self.log_path)}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until `ready_url` answers HTTP (any status); fail if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.poll() is not None:
                raise ComponentDied(f"{self.name} exited with code {self.poll()} while starting; its log: "
                                    f"{self.log_path}\n--- last lines ---\n{tail(self.log_path)}")
            if not self.ready_url:
                break
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2):
                    break
            except urllib.error.HTTPError as exc:
                if exc.code != 503:  # any answer but "not ready yet" (Prometheus' /-/ready says 503 until it is)
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise LabError(f"{self.name} did not become ready within {timeout:.0f}s "
                           f"({self.ready_url}); its log: {self.log_path}\n{tail(self.log_path)}")
        self.remember_descendants()

    def stop(self, timeout: float | None = None) -> None:
        """`stop_signal` to the group (a clean shutdown writes final reports), then SIGKILL whatever is left."""
        if not self.proc:
            return
        timeout = self.stop_timeout if timeout is None else timeout
        self.remember_descendants()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, self.stop_signal)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pid, proc in self._seen.items():
            if pid == self.proc.pid:
                continue
            try:
                # Same process as the one we saw (PIDs get reused): compare create_time via is_running().
                if proc.is_running():
                    proc.kill()
            except psutil.Error:
                pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=timeout)
        psutil.wait_procs([p for p in self._seen.values() if p.pid != self.proc.pid], timeout=timeout)


class Watcher(Protocol):
    """Told each component's PID as it starts, and when everything was stopped (loadlab.watchdog)."""

    def watch(self, pid: int) -> None: ...

    def done(self) -> None: ...


class Supervisor:
    """The components of one lab session; stops them all, in reverse start order, exactly once."""

    def __init__(self) -> None:
        self.components: list[Component] = []
        self.watchdog: Watcher | None = None

    def start(self, component: Component) -> Component:
        self.components.append(component)
        component.start()
        if self.watchdog is not None and component.pid is not None:
            self.watchdog.watch(component.pid)
        return component

    def check_alive(self) -> None:
        for comp in self.components:
            comp.remember_descendants()
            if comp.poll() is not None and not comp.exits_by_itself:
                raise ComponentDied(comp.died_message(), comp.exit_summary())

    def all_pids(self) -> list[int]:
        return sorted({pid for comp in self.components for pid in comp.pids()})

    def stop_all(self) -> None:
        for comp in reversed(self.components):
            try:
                comp.stop()
            except Exception:  # keep stopping the others
                pass
        if self.watchdog is not None:  # everything is stopped: the watchdog has nothing left to do
            self.watchdog.done()


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; unwinds to the finally blocks that stop the components."""


def install_signal_handlers() -> Callable[[], None]:
    """Turn SIGINT/SIGTERM into `Interrupted`; returns a function restoring the old handlers."""
    def handler(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, previous in old.items():
            signal.signal(sig, previous)

    return restore


def hold_signals() -> None:
    """Ignore SIGINT/SIGTERM while cleaning up (the handlers installed before are restored after)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
