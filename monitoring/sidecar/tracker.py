"""Which processes belong to which group, and their resource use, kept across scrapes.

The tracker is the part that has to stay correct while processes come and go:

- It keeps one `psutil.Process` handle per process between scrapes, keyed by PID and
  checked against the process's start time, and learns about new processes from
  the PID list alone (`psutil.pids()`, one directory listing). Only a process it has
  never seen costs a read of its `stat` and `cmdline`; only group members are read
  in detail, inside `oneshot()`, and only for what the metrics need.
- Membership is sticky: a process that matched (or whose parent was a member when
  it was first seen) stays in the group until it exits, even if it is re-parented
  to init, like process-exporter's `-children` mode.
- CPU is counted from each member's *own* user/system time. When a member exits
  (or turns zombie) its last-seen time moves into a per-group "exited" total, so a
  group's CPU counter never goes backwards. The reaped-children fields of the
  parent (`children_user`/`children_system`) are never read: they would count an
  exited worker twice.
- The time members were runnable but waited for a CPU (the kernel's run delay,
  `/proc/<pid>/task/*/schedstat`) is kept the same way: on a host busy with other
  work it tells a CPU-bound server that gets little CPU from one that waits on I/O.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .groups import GroupSpec

log = logging.getLogger(__name__)

# A process that did not match may still be between fork() and exec() (a runner
# that just spawned gunicorn is, for an instant, a copy of the runner). Re-read the
# command line of unmatched processes younger than this; older ones are settled.
# fork-to-exec takes microseconds; 3 s covers a stalled machine and a shell wrapper
# that execs at once, while keeping the re-reads few on a host that forks a lot.
RECHECK_CMDLINE_SECONDS = 3.0
# PIDs are reused only after the kernel's counter wraps around, which cannot happen
# between two scrapes a few seconds apart. After a longer gap (nobody scraped for a
# while) every cached handle is checked against its start time before being trusted.
IDENTITY_RECHECK_AFTER_SECONDS = 5.0


@dataclass
class GroupStats:
    """One group's totals at one scrape."""

    num_procs: int = 0
    cpu_user: float = 0.0
    cpu_system: float = 0.0
    resident: int = 0
    virtual: int = 0
    threads: int = 0
    open_fds: int = 0
    oldest_start: float = 0.0  # seconds since the epoch; 0 when the group has no process
    run_delay: float = 0.0  # seconds its members' threads were runnable, waiting for a CPU (Linux schedstat)


@dataclass
class _Seen:
    """Everything the tracker remembers about one process it has seen."""

    proc: psutil.Process
    start: float  # seconds since boot (psutil's monotonic create time): identity with the PID
    ppid: int  # parent when first seen; a later re-parenting to init must not drop membership
    matched: frozenset[str] = frozenset()  # groups whose cmdline regex matched
    cmdline_settled: bool = True
    groups: set[str] = field(default_factory=set)  # sticky membership
    user: int = 0  # last seen own CPU times, in microseconds
    system: int = 0
    retired: bool = False  # exited or zombie: its CPU is already in the exited totals
    run_delay: int = 0  # last seen run delay of its threads, in microseconds
    first_scan: int = 0  # scan number when first seen


class ProcessTracker:
    """Resolves groups to processes and reads their resource use; thread-safe."""

    def __init__(self, groups: Iterable[GroupSpec], exclude_pids: Iterable[int] | None = None) -> None:
        self.groups = list(groups)
        if not self.groups:
            raise ValueError("ProcessTracker needs at least one group")
        self._regex_groups = [g for g in self.groups if g.cmdline]
        # Never count the exporter itself, whatever its own command line says.
        self._exclude = set(exclude_pids) if exclude_pids is not None else {os.getpid()}
        self._seen: dict[int, _Seen] = {}
        # CPU (user, system) of members that exited, in microseconds.
        self._exited_cpu: dict[str, list[int]] = {g.name: [0, 0] for g in self.groups}
        self._exited_wait: dict[str, int] = {g.name: 0 for g in self.groups}
        # --group-pid selects the process that had that PID when first seen, not a
        # later stranger that inherited the number.
        self._pinned: dict[int, float | None] = {pid: None for g in self.groups for pid in g.pids}
        self._pidfile_problems: dict[Path, str] = {}
        self._last_scan: float | None = None
        self._scan_no = 0
        self._boot = psutil.boot_time()
        self._lock = threading.Lock()
        self.procread_errors = 0  # a member's stats could not be read at all
        self.partial_errors = 0  # a member's stats were read but not all (e.g. fds of another user)

    # ---- public -------------------------------------------------------------

    def scan(self) -> dict[str, GroupStats]:
        """Refresh membership and read every member; one call per scrape."""
        with self._lock:
            now = time.monotonic()
            if self._last_scan is not None and now - self._last_scan > IDENTITY_RECHECK_AFTER_SECONDS:
                self._drop_reused_pids()
            self._last_scan = now
            self._scan_no += 1
            self._update_membership()
            return self._read_members()

    def members(self) -> dict[str, list[int]]:
        """PIDs of each group's live members as of the last scan (for debugging and tests)."""
        with self._lock:
            found: dict[str, list[int]] = {g.name: [] for g in self.groups}
            for pid, seen in self._seen.items():
                if not seen.retired:
                    for name in seen.groups:
                        found[name].append(pid)
            return found

    # ---- membership ---------------------------------------------------------

    def _drop_reused_pids(self) -> None:
        for pid, seen in list(self._seen.items()):
            if not seen.proc.is_running():  # compares the start time, not just the PID
                self._forget(pid)

    def _forget(self, pid: int) -> None:
        seen = self._seen.pop(pid)
        if not seen.retired:
            self._retire(seen)

    def _retire(self, seen: _Seen) -> None:
        seen.retired = True
        for name in seen.groups:
            totals = self._exited_cpu[name]
            totals[0] += seen.user
            totals[1] += seen.system
            self._exited_wait[name] += seen.run_delay

    def _update_membership(self) -> None:
        pids = psutil.pids()
        alive = set(pids)
        for pid in [pid for pid in self._seen if pid not in alive]:
            self._forget(pid)

        new: list[_Seen] = []
        for pid in pids:
            if pid in self._seen or pid in self._exclude:
                continue
            seen = self._first_look(pid)
            if seen is not None:
                new.append(seen)
        # Parents before children, so a child first seen together with its parent inherits.
        new.sort(key=lambda s: s.start)
        for seen in new:
            seen.first_scan = self._scan_no
            self._seen[seen.proc.pid] = seen

        roots = self._root_pids()
        wall_now = time.time()
        # dict order is first-seen order and a parent is never first seen after its child,
        # so one pass propagates membership down whole trees.
        for pid, seen in self._seen.items():
            if seen.retired:
                continue
            if not seen.cmdline_settled and seen.first_scan != self._scan_no:
                if wall_now - (self._boot + seen.start) < RECHECK_CMDLINE_SECONDS:
                    seen.matched = self._match_cmdline(seen.proc)
                    seen.cmdline_settled = bool(seen.matched)
                else:
                    seen.cmdline_settled = True
            groups = seen.matched | roots.get(pid, frozenset())
            parent = self._seen.get(seen.ppid)
            if parent is not None and parent.start <= seen.start:
                groups = groups | parent.groups
            if groups - seen.groups:
                seen.groups.update(groups)

    def _first_look(self, pid: int) -> _Seen | None:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                start = proc.create_time() - self._boot
                ppid = proc.ppid()
        except psutil.NoSuchProcess:  # gone between the PID listing and this read
            return None
        except psutil.AccessDenied:
            return None
        # Kernel threads (kthreadd = 2 and its children) have no command line to match.
        if pid == 2 or ppid == 2:
            return _Seen(proc, start, ppid)
        matched = self._match_cmdline(proc)
        # An unmatched process may still exec() into a matching one; see RECHECK_CMDLINE_SECONDS.
        young = time.time() - (self._boot + start) < RECHECK_CMDLINE_SECONDS
        settled = bool(matched) or not self._regex_groups or not young
        return _Seen(proc, start, ppid, matched=matched, cmdline_settled=settled)

    def _match_cmdline(self, proc: psutil.Process) -> frozenset[str]:
        if not self._regex_groups:
            return frozenset()
        try:
            cmdline = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return frozenset()
        if not cmdline:
            return frozenset()
        return frozenset(g.name for g in self._regex_groups if g.matches_cmdline(cmdline))

    def _root_pids(self) -> dict[int, frozenset[str]]:
        roots: dict[int, set[str]] = {}
        for group in self.groups:
            for pid in group.pids:
                seen = self._seen.get(pid)
                if seen is None:
                    continue
                pinned = self._pinned.get(pid)
                if pinned is None:
                    self._pinned[pid] = pinned = seen.start
                if pinned == seen.start:
                    roots.setdefault(pid, set()).add(group.name)
            for path in group.pid_files:
                file_pid = self._read_pid_file(path)
                if file_pid is not None:
                    roots.setdefault(file_pid, set()).add(group.name)
        return {pid: frozenset(names) for pid, names in roots.items()}

    def _read_pid_file(self, path: Path) -> int | None:
        # Re-read every scrape: a restarted target writes a new PID into the same file.
        try:
            pid = int(path.read_text().strip())
            problem = "" if pid > 0 else "does not hold a positive PID"
        except OSError as exc:
            pid, problem = 0, f"cannot be read ({exc.strerror or exc})"
        except ValueError:
            pid, problem = 0, "does not hold a PID"
        if problem != self._pidfile_problems.get(path, ""):
            # Log changes only: a missing file is normal before the process starts.
            if problem:
                log.warning("pid file %s %s; its group counts no process from it until it does", path, problem)
            else:
                log.info("pid file %s now holds PID %d", path, pid)
            self._pidfile_problems[path] = problem
        return pid if not problem else None

    # ---- reading ------------------------------------------------------------

    def _read_members(self) -> dict[str, GroupStats]:
        stats = {g.name: GroupStats() for g in self.groups}
        cpu_us = {g.name: [0, 0] for g in self.groups}
        wait_us = {g.name: 0 for g in self.groups}
        for seen in self._seen.values():
            if seen.retired or not seen.groups:
                continue
            read = self._read_one(seen)
            if seen.retired:
                continue
            # CPU counts even when this read failed: the last-seen value keeps the sum from dipping.
            for name in seen.groups:
                cpu_us[name][0] += seen.user
                cpu_us[name][1] += seen.system
                wait_us[name] += seen.run_delay
            if read is None:
                continue
            rss, vms, threads, fds = read
            created = self._boot + seen.start
            for name in seen.groups:
                group = stats[name]
                group.num_procs += 1
                group.resident += rss
                group.virtual += vms
                group.threads += threads
                group.open_fds += fds
                if group.oldest_start == 0.0 or created < group.oldest_start:
                    group.oldest_start = created
        # Exited totals last: members that retired during this very read are in them now.
        for name, (user, system) in cpu_us.items():
            exited_user, exited_system = self._exited_cpu[name]
            stats[name].cpu_user = (user + exited_user) / 1e6
            stats[name].cpu_system = (system + exited_system) / 1e6
            stats[name].run_delay = (wait_us[name] + self._exited_wait[name]) / 1e6
        return stats

    def _read_one(self, seen: _Seen) -> tuple[int, int, int, int] | None:
        """Update `seen`'s CPU and return (rss, vms, threads, fds); None if it could not be read."""
        proc = seen.proc
        fds = 0
        try:
            with proc.oneshot():
                cpu = proc.cpu_times()  # /proc/<pid>/stat, cached for status() below
                # Whole microseconds, so group sums are exact integers whatever order they are
                # added in (float sums can dip by 1e-16, which rate() would read as a counter reset).
                # max(): a process's own counter read twice never goes backwards.
                seen.user = max(seen.user, round(cpu.user * 1e6))
                seen.system = max(seen.system, round(cpu.system * 1e6))
                seen.run_delay = max(seen.run_delay, _run_delay_us(proc.pid))
                if proc.status() == psutil.STATUS_ZOMBIE:
                    self._retire(seen)
                    return None
                mem = proc.memory_info()  # /proc/<pid>/statm
                threads = proc.num_threads()  # /proc/<pid>/status
                try:
                    fds = proc.num_fds()  # listdir /proc/<pid>/fd; needs same user or root
                except psutil.AccessDenied:
                    self.partial_errors += 1
        except psutil.NoSuchProcess:  # exited since the PID list was read (ZombieProcess too)
            self._retire(seen)
            return None
        except psutil.AccessDenied:
            self.procread_errors += 1
            return None
        return mem.rss, mem.vms, threads, fds


def _run_delay_us(pid: int) -> int:
    """Microseconds the process's threads have spent runnable but waiting for a CPU: the second field
    of each thread's /proc/<pid>/task/<tid>/schedstat (nanoseconds). 0 where the kernel has no
    schedstat (not Linux, or built without it). A thread that exits takes its delay with it;
    the caller's max() keeps the process's figure from going backwards."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as fh:
                total += int(fh.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total // 1000
