"""Sampled Python stacks: how they are recorded (py-spy) and the format the lab and the sidecar share.

A recording of a process tree is two py-spy `record --format raw` files ("collapsed stacks", one
`frame;frame;... count` line per distinct stack, root first), taken at the same time and rate:

- `cpu`: samples of threads that were on a CPU (or runnable) when sampled: py-spy's default;
- `all`: every thread at every sample, idle ones included (`--idle`).

py-spy writes no per-sample idle flag, so the waiting stacks are the difference, `all - cpu`,
stack by stack. Both recorders run `--nonblocking` (they read the target's memory without
stopping it): two blocking recorders would fight over ptrace and lose a third of their samples,
and not stopping the target is what keeps the overhead low.

A process tree is recorded one py-spy per process (`GroupRecorder`), not with py-spy's
`--subprocesses`, which keeps rescanning the machine's processes for new children: measured at 50
samples/s on the bundled target (arbiter + 2 workers), 0.18 cores for the two `--subprocesses`
recorders against 0.15 for six per-process ones; on three shallow-stack processes, 0.04 against 0.02.

The lab (`loadlab.profiling`) records its target per step with `GroupRecorder`; the sidecar's
`/profile?seconds=N` answers with one recording of its group's processes. Frames are
`function (path:line)`; py-spy's `process PID:"command line"` frames are cut to `process PID`,
so no stored profile carries a command line (which may hold a secret). py-spy never reads local
variables in `record`, so no profile carries request data.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# py-spy samples per second per recorder. Two recorders per process. Reading a gunicorn + Flask stack
# (~35 frames) costs py-spy about 0.5 ms of CPU, so at this rate the six recorders of an arbiter and
# two workers use ~0.06 cores (measured: 0.15 at 50/s), which keeps a profiled run's capacity within
# 5 % of an unprofiled one on 2 cores (benchmarks/bench_profiling.py). A 105 s hold still collects
# ~2000 samples per process; time-scaled runs with holds of a few seconds want --profile-rate 50.
DEFAULT_RATE = 20
# The longest a recorder runs before py-spy stops by itself (a bound for a stop that never came).
MAX_SECONDS = 3600
KINDS = ("cpu", "all")

Stack = tuple[str, ...]
_PROCESS = re.compile(r'process (\d+):"[^"]*"')
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*):(?P<line>\d+)\)$")


class ProfilerUnavailable(RuntimeError):
    """py-spy cannot sample this process; the message is one line saying why."""


def pyspy_binary() -> str | None:
    """The py-spy beside this Python (a venv's bin/), else the one on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("py-spy")


def _env() -> dict[str, str]:
    # py-spy's errors come with a Rust backtrace unless told otherwise; one line is enough.
    return {**os.environ, "RUST_BACKTRACE": "0", "RUST_LIB_BACKTRACE": "0"}


def error_line(output: str) -> str:
    """py-spy's own error message (its `Error: ...` line), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Error:"):
            return line[len("Error:"):].strip()
    return lines[-1] if lines else "no output"


def check_attach(pid: int, binary: str | None = None, timeout: float = 20.0) -> None:
    """Raise ProfilerUnavailable unless py-spy can read the stacks of `pid` (one `py-spy dump`)."""
    binary = binary or pyspy_binary()
    if binary is None:
        raise ProfilerUnavailable("py-spy is not installed: pip install py-spy (in a checkout of this project: make setup)")
    try:
        proc = subprocess.run([binary, "dump", "--pid", str(pid), "--nonblocking"], capture_output=True, text=True,
                              timeout=timeout, env=_env(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ProfilerUnavailable(f"py-spy dump of pid {pid} did not finish in {timeout:g} s") from None
    if proc.returncode != 0:
        why = error_line(proc.stderr + proc.stdout)
        hint = ""
        if "ermission" in why or "not permitted" in why:
            hint = " (py-spy needs ptrace: run as root, or grant CAP_SYS_PTRACE, or lower kernel.yama.ptrace_scope)"
        elif "python version" in why.lower():
            hint = " (not a Python process?)"
        raise ProfilerUnavailable(f"py-spy cannot sample pid {pid}: {why}{hint}")


def sanitize(text: str) -> str:
    """Collapsed stacks with every `process PID:"command line"` frame cut to `process PID`."""
    return _PROCESS.sub(r"process \1", text)


def parse_collapsed(text: str) -> Counter[Stack]:
    """{stack (root first): samples} of collapsed-stack text; malformed lines are skipped."""
    out: Counter[Stack] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        out[tuple(stack.split(";"))] += int(count)
    return out


def format_collapsed(stacks: Counter[Stack]) -> str:
    """The collapsed-stack text of `stacks` (heaviest first), as flamegraph.pl and speedscope read it."""
    return "".join(f"{';'.join(stack)} {n}\n" for stack, n in stacks.most_common() if n > 0)


@dataclass(frozen=True)
class Frame:
    function: str
    file: str  # as py-spy wrote it (full paths with --full-filenames)
    line: int


def parse_frame(frame: str) -> Frame | None:
    """`function (file:line)`, or None for py-spy's synthetic frames (`process N`, `thread (...)`)."""
    match = _FRAME.match(frame)
    if match is None:
        return None
    return Frame(match["function"], match["file"], int(match["line"]))


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants now (gunicorn: the arbiter and its workers)."""
    try:
        root = psutil.Process(pid)
        return [pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.Error:
        return [pid]


@dataclass
class Recorder:
    """Two py-spy recorders (on-CPU and all threads) of the process `pid` into `out_dir`,
    from `start()` until `stop()` (or `seconds`, when given). Stopped by PID, never by name."""

    pid: int
    out_dir: Path
    name: str
    rate: int = DEFAULT_RATE
    seconds: float | None = None
    binary: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def path(self, kind: str) -> Path:
        return self.out_dir / f"{self.name}.{kind}.txt"

    def log_path(self, kind: str) -> Path:
        return self.out_dir / f"{self.name}.{kind}.log"

    def command(self, kind: str) -> list[str]:
        binary = self.binary or pyspy_binary() or "py-spy"
        duration = self.seconds if self.seconds is not None else MAX_SECONDS
        args = [binary, "record", "--pid", str(self.pid), "--nonblocking", "--full-filenames",
                "--format", "raw", "--rate", str(self.rate), "--duration", str(max(1, round(duration))),
                "--output", str(self.path(kind))]
        return args + (["--idle"] if kind == "all" else [])

    def start(self) -> Recorder:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.started_at = time.time()
        for kind in KINDS:
            with open(self.log_path(kind), "wb") as log:
                # Own session: a Ctrl-C at the lab's terminal must not stop it before the lab says so.
                self.procs[kind] = subprocess.Popen(self.command(kind), stdout=log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, env=_env(), start_new_session=True)
        return self

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs.values())

    def stop(self, timeout: float = 10.0) -> dict[str, Counter[Stack]]:
        """SIGINT both (py-spy writes its file on it), wait, SIGKILL a straggler; {kind: stacks}."""
        if self.ended_at is None:
            self.ended_at = time.time()
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        return self.wait(timeout)

    def wait(self, timeout: float) -> dict[str, Counter[Stack]]:
        out: dict[str, Counter[Stack]] = {}
        for kind, proc in self.procs.items():
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
                self.errors.append(f"py-spy ({kind}) did not stop within {timeout:g} s and was killed")
            path = self.path(kind)
            if proc.returncode != 0 or not path.is_file():
                log = self.log_path(kind).read_text(errors="replace") if self.log_path(kind).is_file() else ""
                self.errors.append(f"py-spy ({kind}) exited with code {proc.returncode}: {error_line(log)}")
                out[kind] = Counter()
                continue
            text = sanitize(path.read_text(errors="replace"))
            path.write_text(text)
            out[kind] = parse_collapsed(text)
        return out


@dataclass
class GroupRecorder:
    """A `Recorder` for each of `pids`, started and stopped together; their stacks merged."""

    pids: list[int]
    out_dir: Path
    name: str
    rate: int = DEFAULT_RATE
    seconds: float | None = None
    binary: str | None = None
    recorders: list[Recorder] = field(default_factory=list)
    started_at: float | None = None
    ended_at: float | None = None

    def start(self) -> GroupRecorder:
        self.started_at = time.time()
        for pid in self.pids:
            self.recorders.append(Recorder(pid, self.out_dir, f"{self.name}-{pid}", rate=self.rate, seconds=self.seconds,
                                           binary=self.binary).start())
        return self

    def spy_pids(self) -> list[int]:
        """The py-spy processes."""
        return [p for r in self.recorders for p in r.pids()]

    @property
    def errors(self) -> list[str]:
        return [f"pid {r.pid}: {e}" for r in self.recorders for e in r.errors]

    def files(self, kind: str) -> list[Path]:
        return [r.path(kind) for r in self.recorders]

    def _merge(self, results: list[dict[str, Counter[Stack]]]) -> dict[str, Counter[Stack]]:
        merged: dict[str, Counter[Stack]] = {kind: Counter() for kind in KINDS}
        for found in results:
            for kind, counts in found.items():
                merged[kind].update(counts)
        return merged

    def stop(self, timeout: float = 10.0) -> dict[str, Counter[Stack]]:
        """SIGINT every recorder, then collect them."""
        self.ended_at = time.time()
        for recorder in self.recorders:  # all at once: each py-spy finishes its last sample in parallel
            recorder.ended_at = self.ended_at
            for proc in recorder.procs.values():
                if proc.poll() is None:
                    try:
                        os.kill(proc.pid, signal.SIGINT)
                    except ProcessLookupError:
                        pass
        return self._merge([r.wait(timeout) for r in self.recorders])

    def wait(self, timeout: float) -> dict[str, Counter[Stack]]:
        """Until every recorder ends by itself (`seconds`)."""
        merged = self._merge([r.wait(timeout) for r in self.recorders])
        self.ended_at = time.time()
        return merged
