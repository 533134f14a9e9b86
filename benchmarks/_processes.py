"""Process helpers the benchmark scripts share: a free port, and stopping a server by PID group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


def free_port() -> int:
    """A port the OS just handed out (bind to port 0), so runs never collide."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
