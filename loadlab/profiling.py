"""`--profile`: sample the target's Python stacks during each step's hold and name the hot spot at the knee.

Live (`StepProfiler`, a thread of the lab): it follows Locust's user count as the lab's sampler
reads it every second (`locust_users`). When the count changes a step begins; after the step's
transient (`step_transient_fraction` x the previous step's length) it starts two py-spy recorders
on each process of the target's tree as it is then (`loadlab.stacks.GroupRecorder`: on-CPU
and all threads; a worker forked during the step is profiled from the next step on), and stops
them when the count changes again. Each recording is a *chunk* in `profiles/chunks/`, listed
with its wall-clock start and end in `profiles/chunks.jsonl`. For a server on another machine
(`--target-sidecar` without `--target-pid`), `RemoteStepProfiler` asks the sidecar beside it for
the same recordings (its `/profile`), several per hold.

Afterwards (`attach`, called by `rundir.analyze`): chunks are given to the steps by time (a chunk
belongs to the step it overlaps most), each step gets its collapsed stacks (`profiles/step-NN-Uu.cpu.txt`
and `.wait.txt`), and the knee's (else the break's) stacks become `hotspots` in the verdict, a
one-line `why` in its summary, an SVG flame graph (matplotlib) and, in the report, the functions
whose share grew between the lightest step and that one.

Classifying samples:
- *cpu*: a thread that was on a CPU (or runnable) when sampled. Share = of all the target's on-CPU samples.
- *wait*: a thread that was not, inside a request (its stack passes through a WSGI entry point,
  `REQUEST_ENTRIES`), so a worker waiting for its next connection is idle, not a hot spot. Share =
  of the threads' sampled time inside requests. py-spy marks no sample as idle, so waits are
  `all - cpu` per stack (two recorders at one rate), and a function's wait is reported only when it
  stands out of that difference's sampling noise (3 sigma).
- A hot spot is the function a sample ended in (self time, the leaf Python frame: a call into C such
  as `hashlib.scrypt` or `time.sleep` shows as the Python line that made it), with its most sampled
  line and the nearest frame of the application's own code (`under`).
"""

from __future__ import annotations

import html
import io
import json
import math
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from loadlab import stacks
from loadlab.contract.names import SIDECAR_PROFILE_PATH
from loadlab.stacks import Frame, GroupRecorder, ProfilerUnavailable, Stack, parse_frame, process_tree
from loadlab.verdict import CONCURRENCY, TARGET_CPU, Hotspot, Profiles, Verdict

PROFILES_DIR = "profiles"
CHUNKS_DIR = "chunks"
CHUNK_INDEX = "chunks.jsonl"

# Frames (the last part of the function's qualified name) through which a request is being
# served: Flask, gunicorn's sync/gthread/async workers, Django, http.server and Werkzeug's dev server.
REQUEST_ENTRIES = frozenset({"wsgi_app", "handle_request", "get_response", "handle_one_request"})
TOP = 5  # hot spots per kind
MIN_SAMPLES = 50  # fewer samples of a kind than this name no hot spot of that kind
MIN_SHARE = 0.01  # a hot spot, or a change of share between two steps, of at least 1 %
NOISE_SIGMAS = 3.0
MIN_DELAY_S = 1.0  # the first step's transient, before any step's length is known
MAX_REMOTE_CHUNK_S = 15.0  # one recording by a remote sidecar at most: a long hold takes several
REMOTE_MIN_S = 1.0  # the sidecar's shortest recording
_STDLIB = re.compile(r"/lib/python\d+\.\d+/")
_LIBRARY_DIRS = ("/site-packages/", "/dist-packages/")


# ---------------------------------------------------------------------------------------- live


@dataclass
class StepTracker:
    """Which step runs now, from Locust's user count polled over time."""

    level: float | None = None  # the user count of the step now running
    start: float = 0.0  # when it began (wall clock)
    last_step_s: float | None = None  # the length of the last finished step (3 s or more)

    def update(self, users: float | None, now: float) -> bool:
        """Follow the count read at `now`; True when a new step began."""
        if users is None or users == self.level:
            return False
        if self.level and now - self.start >= 3:  # a step (3 s or more), not a ramp's second
            self.last_step_s = now - self.start
        self.level, self.start = users, now
        return True


class StepProfiler(threading.Thread):
    """Record the target (`pid` and its children) during each step's hold, until `stop()`."""

    def __init__(self, run_dir: Path, pid: int, users: Callable[[], float | None], transient_fraction: float,
                 rate: int = stacks.DEFAULT_RATE, say: Callable[[str], None] = print, poll_s: float = 0.5,
                 on_spawn: Callable[[int], None] | None = None) -> None:
        super().__init__(name="loadlab-profiler", daemon=True)
        # Told each py-spy PID as it starts (the lab's watchdog), so a killed lab takes them along.
        self.on_spawn = on_spawn
        self.dir = Path(run_dir) / PROFILES_DIR
        self.pid = pid
        self.users = users
        self.transient_fraction = transient_fraction
        self.rate = rate
        self.say = say
        self.poll_s = poll_s
        self.binary = stacks.pyspy_binary()
        self._stop_event = threading.Event()
        self._pids: list[int] = []
        self.chunks = 0
        self.failures = 0

    def pids(self) -> list[int]:
        """Every py-spy process this profiler started (all stopped by the time `stop()` returns)."""
        return list(self._pids)

    def delay(self, last_step_s: float | None) -> float:
        return MIN_DELAY_S if last_step_s is None else max(MIN_DELAY_S, self.transient_fraction * last_step_s)

    def run(self) -> None:
        steps = StepTracker()
        tried = False  # one recording per step: a py-spy that failed is not restarted every poll
        recorder: GroupRecorder | None = None
        try:
            while not self._stop_event.wait(self.poll_s):
                now = time.time()
                previous = steps.level
                if steps.update(self.users(), now):
                    if recorder is not None:
                        self.finish(recorder, previous)
                        recorder = None
                    tried = False
                if not tried and steps.level and now >= steps.start + self.delay(steps.last_step_s):
                    tried = True
                    recorder = self.begin(steps.level)
        finally:
            if recorder is not None:
                self.finish(recorder, steps.level)

    def begin(self, users: float) -> GroupRecorder | None:
        self.chunks += 1
        name = f"{self.chunks:03d}-{users:g}u"
        recorder = GroupRecorder(process_tree(self.pid), self.dir / CHUNKS_DIR, name, rate=self.rate,
                                 binary=self.binary)
        try:
            recorder.start()
        except OSError as exc:
            self.failed(f"cannot start py-spy: {exc}")
            recorder.stop()
            return None
        finally:
            self._pids += recorder.spy_pids()
            if self.on_spawn is not None:
                for pid in recorder.spy_pids():
                    self.on_spawn(pid)
        return recorder

    def finish(self, recorder: GroupRecorder, users: float | None) -> None:
        found = recorder.stop()
        self.index({"name": recorder.name, "users": users, "start": recorder.started_at, "end": recorder.ended_at,
                    "pids": recorder.pids, "rate": self.rate,
                    "files": {kind: [f.relative_to(self.dir).as_posix() for f in recorder.files(kind)]
                              for kind in stacks.KINDS},
                    "samples": {kind: sum(found.get(kind, Counter()).values()) for kind in stacks.KINDS},
                    "errors": recorder.errors})
        if recorder.errors:
            self.failed(recorder.errors[0])

    def index(self, entry: dict[str, Any]) -> None:
        """List a recorded chunk in profiles/chunks.jsonl, where `attach` finds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / CHUNK_INDEX, "a") as fh:
            fh.write(json.dumps(entry) + "\n")

    def failed(self, why: str) -> None:
        self.failures += 1
        if self.failures == 1:  # one line; the run goes on, the verdict says what is missing
            self.say(f"profiler: {why}; the run goes on, profiles of some steps may be missing")

    def stop(self, timeout: float = 30.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=timeout)


def profile_url(sidecar_metrics_url: str) -> str:
    """The `/profile` endpoint of the sidecar whose metrics are at `sidecar_metrics_url`."""
    return urlunsplit(urlsplit(sidecar_metrics_url)._replace(path=SIDECAR_PROFILE_PATH, query="", fragment=""))


def _http_error(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read().decode(errors="replace")).get("error") or exc.reason)
    except (OSError, ValueError, AttributeError):
        return str(exc.reason)


def check_remote(url: str, timeout: float = 5.0) -> None:
    """ProfilerUnavailable unless the sidecar at `url` (its /profile) takes profiles. Asked without
    `seconds`: a sidecar that profiles refuses that as a bad request (400); one that does not, 403."""
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except urllib.error.HTTPError as exc:
        if exc.code == 400:
            return
        raise ProfilerUnavailable(f"the sidecar at {url} answered {exc.code}: {_http_error(exc)}") from None
    except (OSError, ValueError) as exc:
        raise ProfilerUnavailable(f"the sidecar at {url} does not answer ({exc})") from None
    raise ProfilerUnavailable(f"{url} is not a loadlab sidecar's profile endpoint (it answered 200 without ?seconds=N)")


class RemoteStepProfiler(StepProfiler):
    """--profile with --target-sidecar: the sidecar on the API's machine records its group
    (`GET /profile?seconds=N&group=G`, monitoring/sidecar/profile.py). A recording's length is fixed
    when it starts, so each hold is recorded in back-to-back chunks from the end of the transient, of
    `MAX_REMOTE_CHUNK_S` at most: to the step's expected end (the last step's length, less how late
    the lab may have seen the step begin and how late the sidecar's last recording ended), or,
    while no step's length is known yet, each half as long as the hold has lasted so far (1 s at
    least). The chunk's times are the lab's own clock (the length the sidecar recorded, ending when
    its answer came), so a remote clock's offset does not matter."""

    def __init__(self, run_dir: Path, url: str, group: str, users: Callable[[], float | None],
                 transient_fraction: float, rate: int = stacks.DEFAULT_RATE, say: Callable[[str], None] = print,
                 poll_s: float = 0.5, lag_s: float = 1.0) -> None:
        super().__init__(run_dir, 0, users, transient_fraction, rate, say, poll_s)  # no local PID
        self.lag_s = lag_s  # how old a reading of `users()` may be when the step has changed
        self.name = "loadlab-remote-profiler"
        self.url, self.group = url, group
        self._fetching: threading.Thread | None = None
        self._refused = False  # the sidecar said no (403): ask no more
        # How much longer than its recording the sidecar's answer took (attaching py-spy, the network),
        # as last measured: a recording asked for now ends that much later.
        self.overhead_s = 0.5

    def chunk_seconds(self, steps: StepTracker, now: float) -> float | None:
        """How long a recording started now should be, or None: not now."""
        begun = steps.start + self.delay(steps.last_step_s)
        if not steps.level or now < begun:
            return None
        if steps.last_step_s is None:  # the step's length unknown: half as long as the hold has lasted
            seconds = max(REMOTE_MIN_S, 0.5 * (now - begun))
        else:  # the rest of the hold, if this step is as long as the last one, less how late the lab may
            # have seen it begin (`lag_s` and a poll) and how late the sidecar starts
            seconds = steps.start + steps.last_step_s - self.lag_s - self.poll_s - self.overhead_s - now
        seconds = min(MAX_REMOTE_CHUNK_S, seconds)
        return seconds if seconds >= REMOTE_MIN_S else None

    def run(self) -> None:
        steps = StepTracker()
        while not self._stop_event.wait(self.poll_s) and not self._refused:
            now = time.time()
            steps.update(self.users(), now)
            if self._fetching is not None and self._fetching.is_alive():
                continue
            seconds = self.chunk_seconds(steps, now)
            if seconds is not None and steps.level:
                self._fetching = threading.Thread(target=self.fetch, args=(steps.level, seconds), daemon=True,
                                                  name="loadlab-remote-profile")
                self._fetching.start()

    def fetch(self, users: float, seconds: float) -> None:
        self.chunks += 1
        name = f"{self.chunks:03d}-{users:g}u"
        query = urlencode({"seconds": f"{seconds:.1f}", "group": self.group, "rate": self.rate})
        asked = time.time()
        try:
            with urllib.request.urlopen(f"{self.url}?{query}", timeout=seconds + 30) as answer:
                body = json.load(answer)
            ended = time.time()
        except urllib.error.HTTPError as exc:
            self._refused = self._refused or exc.code == 403
            self.failed(f"the sidecar at {self.url} answered {exc.code}: {_http_error(exc)}")
            return
        except (OSError, ValueError) as exc:
            self.failed(f"the sidecar at {self.url} did not answer: {exc}")
            return
        chunks = self.dir / CHUNKS_DIR
        chunks.mkdir(parents=True, exist_ok=True)
        files, samples = {}, {}
        for kind in stacks.KINDS:
            text = stacks.sanitize(str(body.get(kind) or ""))
            path = chunks / f"{name}.{kind}.txt"
            path.write_text(text)
            files[kind] = [path.relative_to(self.dir).as_posix()]
            samples[kind] = sum(stacks.parse_collapsed(text).values())
        recorded = max(0.0, min(float(body.get("end", 0) or 0) - float(body.get("start", 0) or 0), ended - asked))
        self.overhead_s = ended - asked - recorded
        errors = [str(e) for e in body.get("errors") or []]
        self.index({"name": name, "users": users, "start": ended - recorded, "end": ended,
                    "pids": body.get("pids"), "rate": body.get("rate"), "files": files, "samples": samples,
                    "errors": errors, "sidecar": self.url})
        if errors:
            self.failed(errors[0])

    def stop(self, timeout: float = 30.0) -> None:
        super().stop(timeout)
        fetching = self._fetching
        if fetching is not None:  # the recording under way ends by itself (MAX_REMOTE_CHUNK_S at most)
            fetching.join(timeout=MAX_REMOTE_CHUNK_S + timeout)


# ------------------------------------------------------------------------------------ analysis


def short_file(path: str) -> str:
    """A frame's file as a reader knows it: the package path of a library, the stdlib module,
    the project path of the application (its last two parts when outside this checkout)."""
    for marker in _LIBRARY_DIRS:
        if marker in path:
            return path.rsplit(marker, 1)[1]
    match = _STDLIB.search(path)
    if match:
        return path[match.end():]
    if path.startswith("<") or "/" not in path:
        return path
    root = str(Path(__file__).resolve().parent.parent) + "/"
    if path.startswith(root):
        return path[len(root):]
    return "/".join(path.split("/")[-2:])


def is_application(frame: Frame) -> bool:
    """Code of the application itself: neither the standard library nor an installed package."""
    path = frame.file
    if path.startswith("<") or any(marker in path for marker in _LIBRARY_DIRS):
        return False
    return _STDLIB.search(path) is None


def describe(frame: Frame) -> str:
    return f"{frame.function} ({short_file(frame.file)}:{frame.line})"


def clean(stack: Stack) -> Stack:
    """The stack without py-spy's synthetic `process N` / `thread (...)` frames."""
    return tuple(f for f in stack if parse_frame(f) is not None)


def in_request(stack: Stack) -> bool:
    for raw in stack:
        frame = parse_frame(raw)
        if frame is not None and frame.function.rsplit(".", 1)[-1] in REQUEST_ENTRIES:
            return True
    return False


@dataclass
class StepProfile:
    """The samples of one step's hold: on-CPU stacks and all stacks (idle included)."""

    index: int
    users: int
    seconds: float = 0.0
    cpu: Counter[Stack] = field(default_factory=Counter)
    all: Counter[Stack] = field(default_factory=Counter)
    chunks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def wait(self) -> Counter[Stack]:
        """Samples off the CPU, stack by stack (negative differences, sampling noise, dropped)."""
        return self.all - self.cpu

    @property
    def request_wait(self) -> Counter[Stack]:
        return Counter({s: n for s, n in self.wait.items() if in_request(s)})

    @property
    def request_time(self) -> int:
        """Samples of threads inside a request, on the CPU or not."""
        return sum(n for s, n in self.all.items() if in_request(s))

    @property
    def cpu_samples(self) -> int:
        return sum(self.cpu.values())


def load_chunks(profiles_dir: Path) -> list[dict[str, Any]]:
    index = profiles_dir / CHUNK_INDEX
    if not index.is_file():
        return []
    out = []
    for line in index.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("start") and entry.get("end"):
            out.append(entry)
    return out


def step_profiles(verdict: Verdict, profiles_dir: Path, chunks: list[dict[str, Any]]) -> dict[int, StepProfile]:
    """{step index: its profile}, each chunk given to the step whose span it overlaps most (at least half)."""
    out: dict[int, StepProfile] = {}
    for chunk in chunks:
        start, end = float(chunk["start"]), float(chunk["end"])
        best, best_overlap = None, 0.0
        for step in verdict.steps:
            overlap = min(end, step.end + 1) - max(start, step.start)
            if overlap > best_overlap:
                best, best_overlap = step, overlap
        if best is None or best_overlap < 0.5 * (end - start):
            continue
        profile = out.setdefault(best.index, StepProfile(best.index, best.users))
        profile.seconds += end - start
        profile.chunks.append(chunk["name"])
        profile.errors += chunk.get("errors") or []
        for kind in stacks.KINDS:
            for name in chunk["files"][kind]:
                path = profiles_dir / name
                if path.is_file():
                    found = stacks.parse_collapsed(path.read_text(errors="replace"))
                    target = profile.cpu if kind == "cpu" else profile.all
                    for stack, n in found.items():
                        target[clean(stack)] += n
    return out


def _leaf(stack: Stack) -> Frame | None:
    return parse_frame(stack[-1]) if stack else None


def _under(stack: Stack) -> Frame | None:
    """The leaf-most frame of the application's own code serving the request, below the leaf
    (None outside a request: every stack starts in the server's own main module)."""
    frames = [parse_frame(raw) for raw in stack[:-1]]
    entry = max((i for i, f in enumerate(frames) if f and f.function.rsplit(".", 1)[-1] in REQUEST_ENTRIES),
                default=None)
    if entry is None:
        return None
    for frame in reversed(frames[entry + 1:]):
        if frame is not None and is_application(frame):
            return frame
    return None


@dataclass
class _Tally:
    samples: int = 0
    lines: Counter[int] = field(default_factory=Counter)
    under: Counter[str] = field(default_factory=Counter)


def _by_function(counts: Counter[Stack]) -> dict[tuple[str, str], _Tally]:
    out: dict[tuple[str, str], _Tally] = defaultdict(_Tally)
    for stack, n in counts.items():
        leaf = _leaf(stack)
        if leaf is None or n <= 0:
            continue
        tally = out[(leaf.function, leaf.file)]
        tally.samples += n
        tally.lines[leaf.line] += n
        under = _under(stack)
        if under is not None:
            tally.under[describe(under)] += n
    return out


def _hotspot(key: tuple[str, str], tally: _Tally, samples: int, total: int, kind: str) -> Hotspot:
    function, file = key
    under = tally.under.most_common(1)[0][0] if tally.under else None
    return Hotspot(function=function, file=short_file(file), line=tally.lines.most_common(1)[0][0],
                   share=round(samples / total, 4), kind=kind, samples=samples, under=under)


def cpu_hotspots(profile: StepProfile, top: int = TOP) -> list[Hotspot]:
    total = profile.cpu_samples
    if total < MIN_SAMPLES:
        return []
    tallies = _by_function(profile.cpu)
    ranked = sorted(tallies.items(), key=lambda kv: -kv[1].samples)[:top]
    return [_hotspot(key, tally, tally.samples, total, "cpu") for key, tally in ranked
            if tally.samples >= MIN_SHARE * total]


def significant_waits(profile: StepProfile) -> dict[tuple[str, str], tuple[int, _Tally]]:
    """{(function, file): (samples waited, where)} inside requests, for the functions whose
    `all - cpu` stands out of its sampling noise (NOISE_SIGMAS standard deviations)."""
    requests_all = Counter({s: n for s, n in profile.all.items() if in_request(s)})
    requests_cpu = Counter({s: n for s, n in profile.cpu.items() if in_request(s)})
    all_by, cpu_by = _by_function(requests_all), _by_function(requests_cpu)
    out = {}
    for key, tally in _by_function(profile.request_wait).items():
        a = all_by[key].samples if key in all_by else 0
        c = cpu_by[key].samples if key in cpu_by else 0
        waited = a - c
        if waited > 0 and waited >= NOISE_SIGMAS * math.sqrt(a + c):
            out[key] = (waited, tally)
    return out


def significant_wait_stacks(profile: StepProfile) -> Counter[Stack]:
    """The waiting stacks inside requests whose function's wait is significant (the flame graph's)."""
    keep = significant_waits(profile)
    out: Counter[Stack] = Counter()
    for stack, n in profile.request_wait.items():
        leaf = _leaf(stack)
        if leaf is not None and (leaf.function, leaf.file) in keep:
            out[stack] = n
    return out


def wait_hotspots(profile: StepProfile, top: int = TOP) -> list[Hotspot]:
    """Functions where threads inside requests waited, beyond the sampling noise of `all - cpu`."""
    total = profile.request_time
    if total < MIN_SAMPLES:
        return []
    ranked = sorted(significant_waits(profile).items(), key=lambda kv: -kv[1][0])[:top]
    return [_hotspot(key, tally, waited, total, "wait") for key, (waited, tally) in ranked
            if waited >= MIN_SHARE * total]


def headline_kind(verdict: Verdict, profile: StepProfile, cpu: list[Hotspot], wait: list[Hotspot]) -> str | None:
    """Which kind explains the step: the verdict's limiting resource when it is CPU or concurrency,
    else whether the threads inside requests mostly ran or mostly waited."""
    if verdict.limiting_resource == TARGET_CPU and cpu:
        return "cpu"
    if verdict.limiting_resource == CONCURRENCY and wait:
        return "wait"
    requests_cpu = sum(n for s, n in profile.cpu.items() if in_request(s))
    if wait and profile.request_time - requests_cpu > requests_cpu:
        return "wait"
    return "cpu" if cpu else ("wait" if wait else None)


def why_line(at: str, users: int, top: Hotspot) -> str:
    where = f"{top.function} ({top.file}:{top.line})" + (f" under {top.under}" if top.under else "")
    if top.kind == "cpu":
        what = f"{top.share:.0%} of the target's CPU samples in {where}"
    else:
        what = f"{top.share:.0%} of the target's time inside requests waiting in {where}"
    return f"hot spot at the {at} ({users} users): {what}"


def share_diff(light: StepProfile, heavy: StepProfile, top: int = 10) -> list[dict[str, Any]]:
    """The functions with a share of at least 1 % in either step, the lightest profiled one and
    `heavy` (cpu and wait), those whose share grew most first: `share_light`, `share_at` (at `heavy`), `change`."""
    rows: list[dict[str, Any]] = []
    for kind in ("cpu", "wait"):
        shares: list[dict[tuple[str, str], float]] = []
        for p in (light, heavy):
            if kind == "cpu":
                total = p.cpu_samples
                counts = {k: t.samples for k, t in _by_function(p.cpu).items()}
            else:
                total = p.request_time
                counts = {k: waited for k, (waited, _) in significant_waits(p).items()}
            shares.append({k: n / total for k, n in counts.items()} if total else {})
        for key in set(shares[0]) | set(shares[1]):
            before, after = shares[0].get(key, 0.0), shares[1].get(key, 0.0)
            rows.append({"function": key[0], "file": short_file(key[1]), "kind": kind,
                         "share_light": round(before, 4), "share_at": round(after, 4),
                         "change": round(after - before, 4)})
    rows.sort(key=lambda r: (-r["change"], -r["share_at"]))
    return [r for r in rows if max(r["share_light"], r["share_at"]) >= MIN_SHARE][:top]


# ------------------------------------------------------------------------------- flame graph

_CPU_COLORS = ("#e8562a", "#ef7d32", "#f2a43a", "#e96b3c", "#f39548", "#ee8a2a")
_WAIT_COLORS = ("#3f7fc1", "#5a95cf", "#7aaad8", "#4b8ac9", "#6aa0d3", "#2f6fae")
_LIB_COLOR = "#d9c25b"
_STD_COLOR = "#bdbdbd"


def _tree(counts: Counter[Stack]) -> dict:
    root: dict = {"n": 0, "kids": {}}
    for stack, n in counts.items():
        if n <= 0:
            continue
        root["n"] += n
        node = root
        for frame in stack:
            node = node["kids"].setdefault(frame, {"n": 0, "kids": {}})
            node["n"] += n
    return root


def _color(raw: str, palette: tuple[str, ...]) -> str:
    frame = parse_frame(raw)
    if frame is None:
        return _STD_COLOR
    if is_application(frame):
        return palette[sum(map(ord, frame.function)) % len(palette)]
    return _LIB_COLOR if any(m in frame.file for m in _LIBRARY_DIRS) else _STD_COLOR


def _layout(tree: dict, min_fraction: float) -> list[tuple[float, int, float, str]]:
    """(left, level, width, frame) of every box at least `min_fraction` wide, children above parents."""
    total = tree["n"]
    boxes: list[tuple[float, int, float, str]] = []

    def walk(node: dict, x: float, level: int) -> None:
        for frame, kid in sorted(node["kids"].items(), key=lambda kv: -kv[1]["n"]):
            w = kid["n"] / total
            if w >= min_fraction:
                boxes.append((x, level, w, frame))
                walk(kid, x, level + 1)
            x += w

    walk(tree, 0.0, 0)
    return boxes


def flame_svg(profile: StepProfile, title: str, min_fraction: float = 0.003) -> str:
    """An SVG flame graph (matplotlib) of the step: on-CPU samples, and waits inside requests.
    Application frames are red/orange (CPU) or blue (wait), installed packages yellow, the standard
    library grey; text stays text in the SVG, so a browser's find locates a function."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("on CPU", profile.cpu, _CPU_COLORS),
              ("waiting inside requests", significant_wait_stacks(profile), _WAIT_COLORS)]
    trees = [(name, _tree(counts), palette) for name, counts, palette in panels]
    layouts = [_layout(tree, min_fraction) if tree["n"] else [] for _, tree, _ in trees]
    depths = [1 + max((b[1] for b in boxes), default=0) for boxes in layouts]
    width_in = 11.0
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "loadlab"}):
        fig, axes = plt.subplots(2, 1, figsize=(width_in, 0.8 + 0.19 * sum(depths) + 1.0),
                                 gridspec_kw={"height_ratios": depths})
        for ax, (name, tree, palette), rows, boxes in zip(axes, trees, depths, layouts):
            total = tree["n"]
            ax.set_title(f"{title}: {name} ({total} samples)", loc="left", fontsize=9)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, rows)
            ax.set_axis_off()
            if not total:
                ax.text(0.5, 0.5, "none beyond the sampling noise" if name.startswith("waiting") else "no samples",
                        ha="center", va="center", color="0.4", transform=ax.transAxes)
                continue
            ax.barh([b[1] for b in boxes], [b[2] for b in boxes], left=[b[0] for b in boxes], height=0.92,
                    align="edge", color=[_color(b[3], palette) for b in boxes], edgecolor="white", linewidth=0.4)
            chars_per_unit = width_in * 72 / (6.5 * 0.6)  # 6.5 pt text
            for x, level, w, frame in boxes:
                parsed = parse_frame(frame)
                text = parsed.function if parsed else frame
                fits = int(w * chars_per_unit) - 1
                if fits >= 4:
                    ax.text(x + 0.002, level + 0.45, text if len(text) <= fits else text[: fits - 1] + "…",
                            fontsize=6.5, va="center", ha="left", clip_on=True)
        fig.subplots_adjust(left=0.01, right=0.99, top=0.97, bottom=0.01, hspace=0.25)
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
        plt.close(fig)
    return buf.getvalue()


# ----------------------------------------------------------------------------- the verdict


def _step_file_stem(profile: StepProfile) -> str:
    return f"step-{profile.index:02d}-{profile.users}u"


def attach(verdict: Verdict, out_dir: Path, meta: dict[str, Any], write: bool = True) -> None:
    """Fill `verdict.hotspots` and `verdict.profiles` from the run's profiles (nothing when the run
    was not profiled); with `write`, the per-step collapsed stacks and the flame graph go to profiles/."""
    requested = meta.get("profiling")
    profiles_dir = Path(out_dir) / PROFILES_DIR
    chunks = load_chunks(profiles_dir)
    if not requested and not chunks:
        return
    requested = requested if isinstance(requested, dict) else {}
    rate = requested.get("rate")
    if requested.get("error"):
        verdict.profiles = Profiles(status="missing", reason=requested["error"], rate=rate)
        return
    by_step = step_profiles(verdict, profiles_dir, chunks)
    summary = []
    for index in sorted(by_step):
        p = by_step[index]
        files = {}
        if write:
            for kind, counts in (("cpu", p.cpu), ("wait", p.wait)):
                path = profiles_dir / f"{_step_file_stem(p)}.{kind}.txt"
                path.write_text(stacks.format_collapsed(counts))
                files[kind] = path.relative_to(out_dir).as_posix()
        summary.append({"index": p.index, "users": p.users, "seconds": round(p.seconds, 1),
                        "cpu_samples": p.cpu_samples, "all_samples": sum(p.all.values()),
                        "request_samples": p.request_time, "files": files, "errors": p.errors})
    report = Profiles(status="ok", rate=rate, steps=summary)
    verdict.profiles = report
    point = verdict.knee or verdict.brk
    if point is None:
        report.reason = "no knee and no break, so no hot spot to name; per-step stacks are in profiles/"
        return
    at = "knee" if verdict.knee is not None else "break"
    step = next((s for s in verdict.steps if s.start == point.time), None)
    report.at, report.step_users = at, (step.users if step else None)
    profile = by_step.get(step.index) if step else None
    if profile is None:
        errors = sorted({e for c in chunks for e in (c.get("errors") or [])})
        report.status = "missing"
        report.reason = (f"no profile covers the {at} step ({report.step_users} users)"
                         + (f": {errors[0]}" if errors else ""))
        return
    cpu, wait = cpu_hotspots(profile), wait_hotspots(profile)
    verdict.hotspots = cpu + wait
    headline = headline_kind(verdict, profile, cpu, wait)
    if headline is None:
        report.status = "missing"
        report.reason = (f"too few samples at the {at} step ({profile.cpu_samples} on CPU, {profile.request_time} "
                         f"inside requests; {MIN_SAMPLES} needed): a longer step or --profile-rate")
        return
    report.why = why_line(at, profile.users, (cpu if headline == "cpu" else wait)[0])
    lightest = by_step[min(by_step)]
    if lightest is not profile:
        report.diff = share_diff(lightest, profile)
    report.flame_svg = flame_svg(profile, f"{at} step, {profile.users} users")
    if write:
        path = profiles_dir / f"{_step_file_stem(profile)}.flame.svg"
        path.write_text(report.flame_svg)
        report.flame_graph = path.relative_to(out_dir).as_posix()


# ---------------------------------------------------------------------------------- report


def _inline_svg(svg: str) -> str:
    """The SVG as an element of the page: no XML prolog, scaled to the page width."""
    start = svg.find("<svg")
    return svg[start:].replace("<svg ", '<svg class="flame" role="img" ', 1) if start >= 0 else ""


def report_section(verdict: Verdict) -> str:
    """The report's profile section (empty when the run was not profiled)."""
    p = verdict.profiles
    if p is None:
        return ""
    esc = html.escape
    parts = ['<h2 id="profiles">Where the target spent its time (profiles)</h2>']
    if p.why:
        parts.append(f'<p id="hotspot-why"><b>{esc(p.why)}</b></p>')
    elif p.reason:
        parts.append(f'<p id="profiles-missing">{"profiles missing: " if p.status != "ok" else ""}{esc(p.reason)}</p>')
    if verdict.hotspots:
        rows = "".join(
            f"<tr><td>{h.kind}</td><td>{h.share:.1%}</td><td class=\"fn\">{esc(h.function)}</td>"
            f"<td class=\"fn\">{esc(h.file)}:{h.line}</td><td class=\"fn\">{esc(h.under or '–')}</td></tr>"
            for h in verdict.hotspots)
        parts.append(f"<h3>Hot spots at the {esc(p.at or '')} ({p.step_users} users)</h3>"
                     '<table id="hotspots"><tr><th>kind</th><th>share</th><th>function</th><th>where</th>'
                     f"<th>under</th></tr>{rows}</table>"
                     '<p class="muted">cpu: share of the target\'s on-CPU samples; wait: share of the time its threads '
                     "spent inside requests (not counting workers idle between requests).</p>")
    if p.diff:
        light = p.steps[0]["users"] if p.steps else "?"
        grew = [r for r in p.diff if r["change"] >= MIN_SHARE]
        rows = "".join(
            f"<tr class=\"{'grew' if r in grew else ''}\"><td>{r['kind']}</td><td class=\"fn\">{esc(r['function'])}</td>"
            f"<td class=\"fn\">{esc(r['file'])}</td><td>{r['share_light']:.1%}</td><td>{r['share_at']:.1%}</td>"
            f"<td>{r['change']:+.1%}</td></tr>" for r in p.diff)
        verdict_line = (f"Grew by a point or more: {esc(', '.join(r['function'] for r in grew))}." if grew else
                        "No function grew its share by a point or more: the same code dominates at light load and "
                        f"at the {esc(p.at or '')}; there is more of the same work, not different work.")
        parts.append(f"<h3>What grew as load rose: {light} users (lightest profiled step) vs {p.step_users} users</h3>"
                     f"<p>{verdict_line}</p>"
                     '<table id="profile-diff"><tr><th>kind</th><th>function</th><th>file</th>'
                     f"<th>share at {light}</th><th>share at {p.step_users}</th><th>change</th></tr>{rows}</table>")
    elif p.why and p.steps and p.steps[0]["users"] == p.step_users:
        parts.append(f'<p id="profile-diff">No diff: the {esc(p.at or "")} step is the lightest profiled step, so there '
                     "is no lighter one to compare with.</p>")
    if p.flame_svg:
        parts.append(f"<h3>Flame graph of the {esc(p.at or '')} step</h3>"
                     '<p class="muted">Width: share of the samples; bottom: the process\'s entry, top: where the '
                     "sample was taken. Red/orange (CPU) and blue (waits): the application's code; yellow: installed "
                     f"packages; grey: the standard library. Also in {esc(p.flame_graph or 'profiles/')}.</p>"
                     f'<figure class="flame">{_inline_svg(p.flame_svg)}</figure>')
    if p.steps:
        files = ", ".join(f"{s['users']} users: {s['cpu_samples']} cpu / {s['all_samples']} samples" for s in p.steps)
        parts.append(f'<p class="muted">Profiled steps ({p.rate} samples/s per recorder): {esc(files)}. Collapsed '
                     "stacks per step in profiles/ (speedscope and flamegraph.pl read them).</p>")
    parts.append("""<style>svg.flame { width: 100%; height: auto; display: block; }
td.fn { text-align: left; font-family: ui-monospace, monospace; } tr.grew td { background: #fff3e0; }</style>
<script>
// Mark the flame graph drawn (a browser check of the report).
window.addEventListener("load", () => {
  for (const svg of document.querySelectorAll("svg.flame")) {
    svg.classList.add(svg.getBBox().width > 0 ? "drawn" : "empty");
  }
});
</script>""")
    return "\n".join(parts)
