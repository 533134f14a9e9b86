"""The lab's watchdog: if `loadlab` dies without stopping what it started, stop it anyway.

`loadlab` starts this small process first, in its own session, with a pipe on its stdin, and
writes to it the PID of each component as it starts. While `loadlab` lives, the watchdog notes
every descendant of those PIDs each half second (gunicorn's workers, Locust's --processes
children), so it still knows them after their parent has gone. Then:

* `loadlab` stopped everything itself: it writes `done`, closes the pipe, the watchdog exits.
* `loadlab` died (SIGKILL, a CI timeout, an OOM kill): the pipe closes without `done`. Each
  component has already received SIGTERM from the kernel (PR_SET_PDEATHSIG, see
  `processes.die_with_parent`) and is shutting down; where that is not available the watchdog
  sends it. After `--grace` seconds it SIGKILLs every noted process still running, then exits.

Processes are known by PID and start time (psutil), never by name, so nothing else is touched.

    python -m loadlab.watchdog [--grace 5]      # stdin: one PID per line, then `done`
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import psutil

GRACE_S = 5.0  # for a clean SIGTERM shutdown (Locust writes its reports) before SIGKILL
NOTE_EVERY_S = 0.5
DONE = b"done"


class Tree:
    """The processes started by `loadlab` (roots) and every descendant seen so far."""

    def __init__(self) -> None:
        self.roots: dict[int, psutil.Process] = {}
        self.seen: dict[int, psutil.Process] = {}

    def add_root(self, pid: int) -> None:
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            return
        self.roots[pid] = proc
        self.seen.setdefault(pid, proc)

    def note(self) -> None:
        for root in list(self.roots.values()):
            try:
                if not root.is_running():
                    continue
                for child in root.children(recursive=True):
                    self.seen.setdefault(child.pid, child)
            except psutil.Error:
                continue

    def alive(self, procs: Sequence[psutil.Process] | None = None) -> list[psutil.Process]:
        out = []
        for proc in self.seen.values() if procs is None else procs:
            try:
                # is_running() also compares the start time, so a reused PID is not "alive".
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc)
            except psutil.Error:
                pass
        return out


def reap(tree: Tree, grace: float, terminate_roots: bool, log: IO[str], parent: int) -> int:
    """Wait up to `grace` s for the noted processes to exit, then SIGKILL the rest; how many were killed."""
    tree.note()  # the last look, before roots exit and their children are re-parented away from them
    if terminate_roots:
        for proc in tree.alive(list(tree.roots.values())):
            try:
                proc.terminate()
            except psutil.Error:
                pass
    left = tree.alive()
    print(f"loadlab.watchdog: loadlab (pid {parent}) exited without stopping its components: "
          f"{len(left)} processes still running, SIGKILL in {grace:g} s unless they exit", file=log, flush=True)
    _, still = psutil.wait_procs(left, timeout=grace)
    still = tree.alive(still)
    for proc in still:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(still, timeout=5)
    if still:
        print(f"loadlab.watchdog: killed {', '.join(str(p.pid) for p in still)}", file=log, flush=True)
    return len(still)


def watch(stdin_fd: int, grace: float, terminate_roots: bool, log: IO[str]) -> int:
    parent = os.getppid()
    tree = Tree()
    buffer = b""
    while True:
        ready, _, _ = select.select([stdin_fd], [], [], NOTE_EVERY_S)
        if ready:
            chunk = os.read(stdin_fd, 4096)
            if not chunk:
                break  # loadlab closed the pipe, or died
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                line = line.strip()
                if line == DONE:
                    return 0
                if line.isdigit():
                    tree.add_root(int(line))
        tree.note()
    reap(tree, grace, terminate_roots, log, parent)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadlab.watchdog", description=__doc__.split("\n\n")[0])
    parser.add_argument("--grace", type=float, default=GRACE_S,
                        help="seconds for the components to exit on their own before SIGKILL (default %(default)s)")
    parser.add_argument("--terminate", action="store_true",
                        help="SIGTERM the components first (where the kernel does not: no PR_SET_PDEATHSIG)")
    args = parser.parse_args(argv)
    return watch(sys.stdin.fileno(), args.grace, args.terminate, sys.stderr)


class Watchdog:
    """The `loadlab` side: start the watchdog, tell it each component's PID, and when all is stopped."""

    def __init__(self, log_path: Path, grace: float = GRACE_S) -> None:
        from loadlab.processes import pdeathsig_supported

        log_path.parent.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "loadlab.watchdog", "--grace", f"{grace:g}"]
        if not pdeathsig_supported():
            args.append("--terminate")
        with open(log_path, "ab") as log:
            # Its own session: a Ctrl-C in the terminal reaches loadlab, which stops everything itself.
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
        self._ended = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _send(self, line: bytes) -> None:
        if self._ended or self.proc.stdin is None:
            return
        try:
            self.proc.stdin.write(line + b"\n")
            self.proc.stdin.flush()
        except OSError:  # the watchdog is gone: nothing to tell it
            self._ended = True

    def watch(self, pid: int) -> None:
        self._send(str(pid).encode())

    def done(self) -> None:
        """Everything was stopped: let the watchdog exit without touching anything."""
        self._send(DONE)
        self._ended = True
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    sys.exit(main())
