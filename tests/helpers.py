"""Small helpers shared by the tests that start real servers.

Every process is started in its own session and stopped by PID (its process group),
never by name, so a test never touches anything it did not start.

Process start/stop/wait is deliberately written here again rather than taken from
`loadlab.processes` (the product's, which the benchmarks use): these helpers are the safety
net that cleans up after every test, including the tests that check the lab stops every
component it started (tests/loadlab). If the cleanup were the code under test, a bug in
`Component.stop` would leave the same processes behind in the lab and in the test's own
finalizer, and the leftovers would load the machine for the tests that measure CPU.
Only `free_port` (bind port 0, nothing to stop) comes from the product.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from loadlab.processes import free_port  # noqa: F401  (re-exported: the tests import it from here)

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
VENV_BIN = Path(sys.executable).parent


def require_binary(name: str) -> str:
    """Path of a system binary; in CI a missing one fails, elsewhere the test is skipped."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} not found on PATH: run `make system-deps` (Debian packages) to install it"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class ManagedProcess:
    """A subprocess with its output in a log file, stopped by PID group.

    Independent of `loadlab.processes.Component` on purpose (see the module docstring).
    """

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
            cwd=cwd or REPO_ROOT, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after `timeout`."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # children that outlived their parent still carry its process group id
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=timeout)
        self._log.close()


@pytest.fixture
def spawn(tmp_path):
    """Start processes for a test; all of them are stopped by PID when it ends, pass or fail."""
    started: list[ManagedProcess] = []

    def _spawn(args: list[str], name: str = "proc", env: dict[str, str] | None = None,
               cwd: Path | None = None) -> ManagedProcess:
        full_env = {**os.environ, **(env or {})}
        proc = ManagedProcess(args, tmp_path / f"{name}-{len(started)}.log", env=full_env, cwd=cwd)
        started.append(proc)
        return proc

    yield _spawn
    for proc in reversed(started):
        proc.stop()


def wait_for_http(url: str, timeout: float = 20.0, proc: ManagedProcess | None = None) -> None:
    """Poll `url` until it answers (any HTTP status but 503, which readiness endpoints such as
    Prometheus' /-/ready give until they are ready); fail with the process log if it never does."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.proc.poll() is not None:
            pytest.fail(f"{proc.args[:4]} exited with {proc.proc.returncode} before {url} answered:\n{proc.log()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                return
            last_error = exc
            time.sleep(0.1)
        except OSError as exc:
            last_error = exc
            time.sleep(0.1)
    detail = proc.log()[-3000:] if proc else ""
    pytest.fail(f"{url} did not answer within {timeout}s ({last_error}):\n{detail}")
