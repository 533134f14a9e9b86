"""Process helpers the benchmark scripts share: a free port, waiting for a server to answer
HTTP, and stopping a server by PID group."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A port the OS just handed out (bind to port 0), so runs never collide."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path | None = None, timeout: float = 30) -> None:
    """Poll `url` until it answers 2xx; exit the benchmark with what did not answer (and the
    end of `log`, the process's output) if `proc` exits first or `timeout` seconds pass."""
    see = f"; see {log}" if log else ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = ""
            if log and Path(log).exists():
                tail = f", which ends:\n{Path(log).read_text(errors='replace')[-2000:]}"
            raise SystemExit(f"{shlex.join(map(str, proc.args))} exited with {proc.returncode} before {url} "
                             f"answered{see}{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                response.read()
            return
        except OSError:  # refused, timed out, or an HTTP error status: not ready yet
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout:g} s{see}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (started in its own session), SIGKILL what is left."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
