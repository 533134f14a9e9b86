"""`loadlab run` and `loadlab up`: start the lab's components in order, watch them, stop them all.

Order: the target (unless --host), the sidecar, the lab's own sampler, Prometheus (when
installed), then Locust (master + workers with --workers). Each is waited for until it
answers. The sidecar finds Locust through PID files written as each Locust process starts,
so it never has to guess by name. Everything started is stopped on success, on failure, on
Ctrl-C and on SIGTERM, in reverse order, by PID; if `loadlab` itself is killed, the kernel
(PR_SET_PDEATHSIG) and `loadlab.watchdog` stop them. A run that does not finish (a component
died, Ctrl-C, Locust stopped) still gets a verdict and report of the part that ran, marked
`complete: false`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import signal
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from loadlab import fleet, generators, own_locustfile, remote, rundir, targets
from loadlab.contract import thresholds
from loadlab.contract.cores import usable_cores
from loadlab.contract.exits import EXIT_API_FAILED, EXIT_COMPONENT_FAILED, EXIT_GATE, EXIT_USAGE
from loadlab.contract.live import RUN_DIR_ENV
from loadlab.contract.names import DEFAULT_BIND, DEFAULT_PORTS, GENERATOR_GROUP, LOCUST_JOB, SIDECAR_JOB, TARGET_GROUP, TARGET_JOB
from loadlab.contract.scenarios import STOP_TIMEOUT_S, lab_scenarios
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS, Thresholds
from loadlab.history import read_stats_history
from loadlab.live import LiveView
from loadlab.processes import (
    Component,
    ComponentDied,
    Interrupted,
    LabError,
    Supervisor,
    describe_exit,
    free_port,
    hold_signals,
    install_signal_handlers,
    port_in_use,
    port_owner,
    tail,
)
from loadlab.profiling import RemoteStepProfiler, StepProfiler, check_remote, profile_url
from loadlab.remote import RemoteSidecar
from loadlab.sampler import Sampler, parse_metrics, scrape
from loadlab.stacks import DEFAULT_RATE as DEFAULT_PROFILE_RATE
from loadlab.stacks import ProfilerUnavailable, check_attach
from loadlab.verdict import Verdict
from loadlab.watchdog import Watchdog
from locust_tests.config.api_contract import settings_problem  # Locust-free

REPO_ROOT = Path(__file__).resolve().parent.parent
SCENARIO_DIR = REPO_ROOT / "locust_tests" / "scenarios"

# `loadlab run` scenario name -> (locustfile, the suite's --scenario value).
SCENARIOS: dict[str, tuple[str, str]] = lab_scenarios()

# A Locust worker gone this long while its master still runs has died, whatever its exit code.
WORKER_GONE_S = 5.0
# On Ctrl-C or a death, Locust gets SIGINT and this long to write its --html/--json-file reports:
# the exporter's linger (3 s), the cleanup, and users finishing their requests (STOP_TIMEOUT_S).
LOCUST_STOP_S = 25.0


class LocustStoppedEarly(LabError):
    """Locust exited before any load was recorded (a refused host, a failed preflight)."""

PORT_FLAGS = {
    "target": "--target-port", "target_metrics": "--target-metrics-port", "web": "--web-port",
    "exporter": "--exporter-port", "sidecar": "--sidecar-port",
    "prometheus": "--prometheus-port", "master": "--master-port",
}
WHAT = {
    "target": "the target API", "target_metrics": "the target's metrics (served by the gunicorn arbiter)",
    "web": "Locust's web UI", "exporter": "Locust's Prometheus exporter",
    "sidecar": "the resource sidecar", "prometheus": "Prometheus", "master": "Locust's master (workers connect here)",
}


@dataclass
class LabOptions:
    scenario: str
    mode: str = "run"  # run (headless, ends by itself) | up (web UI until Ctrl-C)
    host: str | None = None
    workers: int = 0  # Locust workers; 0 = one standalone Locust process
    time_scale: float | None = None
    out: Path = Path("reports")
    target_workers: int | None = None
    target_pid: int | None = None
    hash_profile: str = "default"
    ports: dict[str, int] = field(default_factory=dict)  # explicit ones only
    free_ports: bool = False
    prometheus: str = "auto"  # auto | on | off
    locust_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    slo_p95_ms: float | None = None  # flags; they beat the suite's SLO_* variables
    slo_error_ratio: float | None = None
    profile: bool = False  # sample the target's stacks during each step's hold (loadlab.profiling)
    profile_rate: int = DEFAULT_PROFILE_RATE
    locustfile: Path | None = None  # a locustfile of the user's own, in place of `scenario` (loadlab.own_locustfile)
    target_sidecar: str | None = None  # a sidecar on the API's machine (loadlab.remote)
    target_metrics: str | None = None  # the API's own /metrics URL
    target_group: str | None = None  # the remote sidecar's group of the API's processes (default: target)
    # An API served by a fleet (loadlab.targets): the sidecars and metrics of its other machines.
    extra_target_sidecars: list[str] = field(default_factory=list)
    extra_target_metrics: list[str] = field(default_factory=list)

    gates: list[Any] = field(default_factory=list)  # loadlab.gates.Gate, checked on the verdict (exit 4)
    junit: Path | None = None  # JUnit XML of the gates and the baseline comparison
    baseline: Path | None = None  # compare with this run directory after the run (a regression: exit 4)
    min_change_pct: float = 5.0  # loadlab.compare.DEFAULT_MIN_CHANGE_PCT
    remote_workers: int = 0  # Locust workers the user starts on other machines (loadlab.fleet)
    master_bind: str = DEFAULT_BIND  # where Locust's master listens for workers
    workers_timeout: float = fleet.DEFAULT_WORKERS_TIMEOUT_S  # for every worker to connect
    generator_sidecars: list[str] = field(default_factory=list)  # a sidecar on each load machine (loadlab.generators)


_LOG_PREFIX = re.compile(r"^\[[^]]*\] [^/]*/(ERROR|CRITICAL)/[^:]*: ")


def last_error(log_path: Path) -> str | None:
    """The last ERROR or CRITICAL message in a Locust log, without its `[time] host/LEVEL/logger: ` prefix."""
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        match = _LOG_PREFIX.match(line)
        if match:
            return line[match.end():].strip()
    return None


class ApiFailed(LabError):
    """The API answered the scenario's own requests wrongly before any load (the suite's preflight
    said so, and exited with EXIT_API_FAILED): there is nothing to measure."""


def out_dir_problem(out: Path) -> str | None:
    """Why run directories cannot be made in `out` (None when they can). Creates `out` if missing."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"--out {out} is a file, not a directory: give a directory (it is created if missing)"
    except NotADirectoryError:
        above = next((p for p in out.parents if p.is_file()), out.parent)
        return f"--out {out} lies under {above}, which is a file, not a directory: give another --out"
    except OSError as exc:
        return f"--out {out} cannot be created ({exc.strerror or exc}): give another --out"
    if not os.access(out, os.W_OK | os.X_OK):
        return f"--out {out} is not writable by this user: give another --out"
    return None


def new_run_dir(out: Path, scenario: str) -> Path:
    """reports/<timestamp>-<scenario>/, never an existing directory."""
    problem = out_dir_problem(out)
    if problem:
        raise LabError(problem)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = out / (f"{stamp}-{scenario}" if n == 1 else f"{stamp}-{scenario}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise LabError(f"{path}: cannot create the run directory ({exc.strerror or exc})") from None
    raise LabError(f"{out}: cannot create a new run directory (1000 exist for {stamp}-{scenario})")


class Lab:
    def __init__(self, opts: LabOptions, stream: TextIO = sys.stdout) -> None:
        if opts.locustfile is None and opts.scenario not in SCENARIOS:
            raise LabError(f"unknown scenario {opts.scenario!r}: choose one of {', '.join(SCENARIOS)}")
        self.opts = opts
        self.out = stream
        self.sup = Supervisor()
        self.sampler: Sampler | None = None
        self.profiler: StepProfiler | None = None
        self.live: LiveView | None = None  # `up` only: live.json for Locust's Lab tab
        self._run_dir: Path | None = None
        self.ports: dict[str, int] = {}
        self._locust_master: Component | None = None
        self.locust_workers: list[Component] = []
        self._worker_gone_at: dict[str, float] = {}
        self._missing_log: fleet.MissingLog | None = None  # --remote-workers: the master's word on a lost worker
        self.prometheus_bin: str | None = None
        self.meta: dict = {}
        self.remote: dict[str, str] = {}  # sources on the API's machine: name -> URL (loadlab.remote)
        self.remote_sidecar: RemoteSidecar | None = None
        self.no_target_metrics: str | None = None  # why the target's metrics are not read, when they are not
        self.target_metrics_problem: str | None = None  # they answer, but without the request histogram
        self.fleet_sidecars: dict[str, remote.RemoteSidecar] = {}  # the API's other machines (loadlab.targets)
        self._silent: dict[str, tuple[float, str, bool]] = {}  # remote source -> (since, error, said)
        # Chosen once for the whole run: the hunt (through the suite's variables), the live alerts
        # (rules generated for them) and the verdict all apply exactly these.
        try:
            self.thresholds: Thresholds = thresholds.resolve({**os.environ, **opts.env}, p95_ms=opts.slo_p95_ms,
                                                             error_ratio=opts.slo_error_ratio)
        except thresholds.ThresholdError as exc:
            raise LabError(str(exc)) from None

    @property
    def run_dir(self) -> Path:
        if self._run_dir is None:
            raise LabError("no run directory yet: the lab has not started")
        return self._run_dir

    @property
    def locust_master(self) -> Component:
        if self._locust_master is None:
            raise LabError("Locust has not been started")
        return self._locust_master

    # ------------------------------------------------------------------ checks

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def check(self) -> None:
        """Everything that can be known before starting anything: binaries, files, ports."""
        opts = self.opts
        if opts.locustfile is not None:
            opts.locustfile = own_locustfile.check(opts.locustfile, opts.locust_args)
        locustfile = own_locustfile.PLUGIN_FILE if opts.locustfile else SCENARIO_DIR / SCENARIOS[opts.scenario][0]
        if not locustfile.is_file():
            raise LabError(f"{locustfile}: the Locust suite's scenario file is missing; is this a complete checkout?")
        # The suite reads these when Locust loads it, after the target and sidecar started: check them now.
        contract = settings_problem({**os.environ, **opts.env})
        if contract:
            raise LabError(contract)
        if shutil.which("locust") is None and not (Path(sys.executable).parent / "locust").exists():
            # Installed without its script on PATH still works (we run `python -m locust`). Look it
            # up without importing it: importing Locust would gevent-patch the runner's own process.
            if importlib.util.find_spec("locust") is None:
                raise LabError("Locust is not installed: run `make setup` (or pip install -e '.[lab]')")
        if opts.prometheus != "off":
            self.prometheus_bin = shutil.which("prometheus")
            if self.prometheus_bin is None and opts.prometheus == "on":
                raise LabError("prometheus not found on PATH: install it (Debian: apt-get install prometheus, "
                               "or `make system-deps`), or run without --prometheus on")
        if opts.workers < 0:
            raise LabError(f"--workers must be 0 (one Locust process) or more, got {opts.workers}")
        self.check_fleet_flags()
        if opts.host and not opts.host.startswith(("http://", "https://")):
            raise LabError(f"--host {opts.host!r} is not a URL: give it like http://127.0.0.1:5000")
        if opts.host and not urllib.parse.urlsplit(opts.host).hostname:
            raise LabError(f"--host {opts.host!r} names no host: give it like http://127.0.0.1:5000")
        self.check_remote_flags()
        self.check_port_flags()
        self.check_baseline()
        self.allocate_ports()
        self.check_ports_distinct()
        self.check_remote_sources()
        problem = out_dir_problem(opts.out)  # last: nothing is created when an earlier check fails
        if problem:
            raise LabError(problem)

    def check_port_flags(self) -> None:
        """Two --*-port flags with the same port: refused, whether or not this run needs both."""
        seen: dict[int, str] = {}
        for name, port in self.opts.ports.items():
            if port in seen:
                raise LabError(f"{PORT_FLAGS[seen[port]]} and {PORT_FLAGS[name]} are both {port}: "
                               f"give each component its own port")
            seen[port] = name

    def check_ports_distinct(self) -> None:
        """A flag's port equal to another component's usual one (`up`: --web-port 5000)."""
        seen: dict[int, str] = {}
        for name, port in self.ports.items():
            if port in seen:
                first, second = sorted((seen[port], name), key=lambda n: n in self.opts.ports)
                raise LabError(f"port {port} of {WHAT[second]} ({PORT_FLAGS[second]}) is also the usual port of "
                               f"{WHAT[first]}: choose another, or move that one with {PORT_FLAGS[first]}")
            seen[port] = name

    def needed_ports(self) -> list[str]:
        names = ["sidecar", "exporter"]
        if not self.opts.host:
            names += ["target", "target_metrics"]
        if self.prometheus_bin:
            names.append("prometheus")
        if self.opts.workers or self.opts.remote_workers:
            names.append("master")
        if self.opts.mode == "up":
            names.append("web")
        return names

    def allocate_ports(self) -> None:
        """Explicit ports must be free; `up` uses the well-known defaults, `run` free ones."""
        explicit_ports = set(self.opts.ports.values())
        for name in self.needed_ports():
            explicit = self.opts.ports.get(name)
            if explicit is None and (self.opts.mode == "run" or self.opts.free_ports):
                port = free_port()
                while port in explicit_ports or port in self.ports.values():  # never one given to another
                    port = free_port()
                self.ports[name] = port
                continue
            port = explicit if explicit is not None else DEFAULT_PORTS[name]
            if port_in_use(port):
                hint = f"choose another with {PORT_FLAGS[name]}" + ("" if explicit else " or pass --free-ports")
                raise LabError(f"port {port} for {WHAT[name]} is already in use{port_owner(port)}: "
                               f"stop that process or {hint}" + (remote.sidecar_hint(port) if name == "sidecar" else ""))
            self.ports[name] = port

    # ------------------------------------------------------------------ start

    def python(self, *args: str) -> list[str]:
        return [sys.executable, *args]

    def env(self) -> dict[str, str]:
        env = {**os.environ, **self.opts.env, **thresholds.to_env(self.thresholds)}
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self._run_dir is not None:  # where Locust's Lab tab finds live.json
            env[RUN_DIR_ENV] = str(self._run_dir.resolve())
        return env

    def component(self, name: str, args: list[str], ready_url: str | None = None,
                  exits_by_itself: bool = False, **kwargs) -> Component:
        return Component(name, args, self.run_dir / "logs" / f"{name}.log", env=self.env(), cwd=REPO_ROOT,
                         ready_url=ready_url, exits_by_itself=exits_by_itself, **kwargs)

    def target_url(self) -> str:
        return self.opts.host.rstrip("/") if self.opts.host else f"http://{DEFAULT_BIND}:{self.ports['target']}"

    def exporter_url(self) -> str:
        """Locust's exporter (on the master, or the one process)."""
        return f"http://{DEFAULT_BIND}:{self.ports['exporter']}/metrics"

    def locust_gauge(self, name: str, timeout: float = 2.0) -> float | None:
        """One of Locust's gauges as its exporter serves it now; None when it does not answer."""
        try:
            found = parse_metrics(scrape(self.exporter_url(), timeout=timeout), (name,))
        except (OSError, ValueError):
            return None
        return next((value for metric, _, value in found if metric == name), None)

    def target_metrics_url(self) -> str:
        """Where the target's metrics are read. A target we start serves them from the gunicorn
        arbiter on their own port, so scrapes never queue behind the load in the workers'
        accept queue; an external --host only has /metrics on its API port, unless --target-metrics
        (or --target-metrics-port, on the --host machine) says where its metrics are."""
        if self.opts.target_metrics:
            return self.opts.target_metrics
        if self.opts.host and self.opts.ports.get("target_metrics"):
            return remote.metrics_url_on_host(self.opts.host, self.opts.ports["target_metrics"])
        if self.opts.host:
            return f"{self.target_url()}/metrics"
        return f"http://{DEFAULT_BIND}:{self.ports['target_metrics']}/metrics"

    def start_target(self) -> int | None:
        if self.opts.host:
            return self.opts.target_pid
        workers = self.opts.target_workers or usable_cores()
        comp = self.component("target", self.python(
            "-m", "target_app", "--host", DEFAULT_BIND, "--port", str(self.ports["target"]),
            "--metrics-port", str(self.ports["target_metrics"]),
            "--workers", str(workers), "--db", str(self.run_dir / "target.db"),
            "--hash-profile", self.opts.hash_profile), ready_url=f"{self.target_url()}/healthz")
        self.sup.start(comp).wait_ready(timeout=60)
        self.say(f"target     {self.target_url()}  (gunicorn, {workers} workers, pid {comp.pid}, "
                 f"log {comp.log_path})")
        return comp.pid

    def locust_pid_files(self) -> list[Path]:
        names = ["locust"] + [f"locust-worker-{i}" for i in range(1, self.opts.workers + 1)]
        return [self.run_dir / "pids" / f"{n}.pid" for n in names]

    def start_sidecar(self, target_pid: int | None) -> None:
        args = self.python("-m", "monitoring.sidecar", "--host", DEFAULT_BIND, "--port", str(self.ports["sidecar"]))
        if target_pid:
            args += ["--group-pid", f"{TARGET_GROUP}={target_pid}"]
        for path in self.locust_pid_files():
            args += ["--pid-file", f"{GENERATOR_GROUP}={path}"]
        comp = self.component("sidecar", args, ready_url=f"http://{DEFAULT_BIND}:{self.ports['sidecar']}/metrics")
        self.sup.start(comp).wait_ready(timeout=30)
        self.say(f"sidecar    http://{DEFAULT_BIND}:{self.ports['sidecar']}/metrics  (pid {comp.pid})")

    def start_prometheus(self) -> None:
        if self.opts.prometheus == "off":
            self.say("prometheus off (--prometheus off); the lab samples the metrics itself")
            return
        if not self.prometheus_bin:
            self.say("prometheus not on PATH: skipped (the lab samples the metrics itself; "
                     "install Debian's prometheus for live alerts)")
            return
        from monitoring.prometheus_config import default_rule_files, render

        prom_dir = self.run_dir / "prometheus"
        (prom_dir / "data").mkdir(parents=True)
        if self.thresholds == DEFAULT_THRESHOLDS:
            rules = [r for r in default_rule_files() if Path(r).is_file()]
        else:  # the live alerts must judge by the run's own SLO, as the hunt and the verdict do
            from monitoring.generate import write_rules

            rules = write_rules(prom_dir / "rules", self.thresholds)
        scrape_targets, aliases = self.prometheus_targets()
        config = prom_dir / "prometheus.yml"
        config.write_text(render(scrape_targets, rules, self.thresholds.scrape_interval_seconds, group_aliases=aliases))
        url = f"http://{DEFAULT_BIND}:{self.ports['prometheus']}"
        comp = self.component("prometheus", [
            self.prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={prom_dir / 'data'}",
            f"--web.listen-address={DEFAULT_BIND}:{self.ports['prometheus']}", "--storage.tsdb.retention.time=30d",
        ], ready_url=f"{url}/-/ready")
        self.sup.start(comp).wait_ready(timeout=60)
        self.say(f"prometheus {url}  (rules: {len(rules)} files, data in {prom_dir / 'data'})")

    def prometheus_targets(self) -> tuple[dict[str, str | list[str]], dict[str, dict[str, str]] | None]:
        """The scrape targets of the run's Prometheus (job -> targets) and the remote sidecars' group aliases."""
        # Every sidecar is its own `instance` of the one job: the lab's, each API machine's, each load machine's.
        api_sidecars = [url for url in (self.opts.target_sidecar, *self.opts.extra_target_sidecars) if url]
        scrape_targets: dict[str, str | list[str]] = {
            SIDECAR_JOB: [f"{DEFAULT_BIND}:{self.ports['sidecar']}", *api_sidecars, *self.opts.generator_sidecars],
            LOCUST_JOB: f"{DEFAULT_BIND}:{self.ports['exporter']}"}
        if not self.no_target_metrics:
            scrape_targets[TARGET_JOB] = [self.target_metrics_url(), *self.opts.extra_target_metrics]
        # A remote sidecar's group named otherwise reads as `target` in Prometheus, so rules and dashboards see it.
        aliases = ({url: {self.opts.target_group: TARGET_GROUP} for url in api_sidecars}
                   if api_sidecars and self.opts.target_group and self.opts.target_group != TARGET_GROUP
                   else None)
        return scrape_targets, aliases

    def locust_args(self) -> list[str]:
        if self.opts.locustfile is not None:  # the user's file, then the lab's plugins (loadlab.own_locustfile)
            f, preset = own_locustfile.f_argument(self.opts.locustfile), own_locustfile.STEP
        else:
            locustfile, preset = SCENARIOS[self.opts.scenario]
            f = str(SCENARIO_DIR / locustfile)
        args = ["-m", "locust", "-f", f, "--scenario", preset, "--host", self.target_url()]
        if self.opts.time_scale is not None:
            args += ["--time-scale", f"{self.opts.time_scale:g}"]
        return args

    def start_locust(self) -> None:
        base = self.locust_args()
        master = [*base, "--exporter-port", str(self.ports["exporter"]), "--exporter-linger", "3",
                  "--csv", str(self.run_dir / rundir.LOCUST_PREFIX), "--csv-full-history",
                  "--html", str(self.run_dir / "locust.html"), "--json-file", str(self.run_dir / "locust"),
                  # Failures are what a stress test is for; a non-zero exit must mean Locust itself failed.
                  "--exit-code-on-error", "0", "--stop-timeout", f"{STOP_TIMEOUT_S:g}"]
        if self.opts.mode == "run":
            master += ["--headless"]
        else:
            master += ["--web-host", DEFAULT_BIND, "--web-port", str(self.ports["web"])]
        if self.opts.workers or self.opts.remote_workers:
            master += ["--master", "--master-bind-host", self.opts.master_bind, "--master-bind-port",
                       str(self.ports["master"]), "--expect-workers", str(self.opts.workers + self.opts.remote_workers),
                       "--expect-workers-max-wait", f"{math.ceil(self.opts.workers_timeout) + fleet.LOCUST_WAIT_MARGIN_S:d}"
                       if self.opts.remote_workers else "60"]
        master += self.opts.locust_args
        pid_files = self.locust_pid_files()
        for path in pid_files:
            path.parent.mkdir(parents=True, exist_ok=True)
        # Workers first, so the master finds them when it starts (it waits for them anyway).
        for i in range(1, self.opts.workers + 1):
            worker = self.component(f"locust-worker-{i}", self.python(
                *base, "--worker", "--master-host", fleet.local_master_host(self.opts.master_bind),
                "--master-port", str(self.ports["master"]), *self.opts.locust_args), exits_by_itself=True, label=f"locust worker {i}")
            self.sup.start(worker)
            self.locust_workers.append(worker)
            pid_files[i].write_text(f"{worker.pid}\n")
        self.say_worker_command()
        # SIGINT, as Ctrl-C would: Locust then writes its --html and --json-file reports (SIGTERM skips the HTML).
        comp = self.component("locust", self.python(*master),
                              ready_url=self.exporter_url(),
                              exits_by_itself=self.opts.mode == "run", stop_signal=signal.SIGINT,
                              stop_timeout=LOCUST_STOP_S)
        self.sup.start(comp)
        pid_files[0].write_text(f"{comp.pid}\n")
        self._locust_master = comp
        try:
            comp.wait_ready(timeout=120)  # preflight + seeding happen before the exporter serves
            if self.opts.mode == "up":  # the web UI starts after the exporter: print its URL once it answers
                comp.ready_url = f"http://{DEFAULT_BIND}:{self.ports['web']}/"
                comp.wait_ready(timeout=120)
        except ComponentDied:
            failed = api_failed(comp)
            if failed:
                raise failed from None
            raise LocustStoppedEarly(self.locust_stopped_early(comp.poll())) from None
        self.wait_for_remote_workers()
        what = f"master + {self.opts.workers} workers" if self.opts.workers else "one process"
        if self.opts.remote_workers:
            what = f"master + {self.opts.workers} local and {self.opts.remote_workers} remote workers"
        file, preset = ((self.opts.locustfile.name, own_locustfile.STEP) if self.opts.locustfile
                        else SCENARIOS[self.opts.scenario])
        own_shape = own_locustfile.own_shape(comp.log_path) if self.opts.locustfile else None
        # Its own shape ran instead of the step hunt: the console does not name the hunt's preset then.
        self.say(f"locust     {file}{'' if own_shape else f' --scenario {preset}'} "
                 f"({what}, pid {comp.pid}); exporter {self.exporter_url()}")
        if own_shape:
            self.say(f"locust     {file}: {own_shape}")
            self.meta["step_hunt"] = False
        if self.opts.mode == "up":
            self.say(f"locust UI  http://{DEFAULT_BIND}:{self.ports['web']}")
            self.say(f"lab tab    http://{DEFAULT_BIND}:{self.ports['web']}/lab  (target and Locust CPU, "
                     f"memory, users, throughput and the live verdict)")

    def start_sampler(self) -> None:
        sources = {SIDECAR_JOB: f"http://{DEFAULT_BIND}:{self.ports['sidecar']}/metrics",
                   TARGET_JOB: self.target_metrics_url(),
                   LOCUST_JOB: self.exporter_url()}
        if self.no_target_metrics:  # an API without /metrics: nothing to sample (said once at start)
            del sources[TARGET_JOB]
        sources.update(self.remote)
        sources.update(generators.sources(self.opts.generator_sidecars))
        side = self.remote_sidecar
        self.sampler = Sampler(self.run_dir / rundir.SAMPLES, sources,
                               target=(remote.TARGET_SIDECAR_SOURCE, side.group) if side else (SIDECAR_JOB, TARGET_GROUP),
                               target_fleet=tuple(self.fleet_sidecars))
        self.sampler.start()

    def start_profiler(self, target_pid: int | None) -> None:
        """--profile: py-spy on the target's process tree during each step's hold. When it cannot
        attach, one line says why and the run goes on without profiles (the verdict says so)."""
        if not self.opts.profile:
            return
        info: dict = {"requested": True, "rate": self.opts.profile_rate, "pid": target_pid}
        sampler = self.sampler

        def users_now() -> float | None:
            users = sampler.progress()["users"] if sampler else None
            return users if isinstance(users, float) else None  # progress() also holds the hunt's phase

        side = self.remote_sidecar
        profiler: StepProfiler
        try:
            if not target_pid and side is not None:
                # The API on another machine: the sidecar beside it records, if started with --allow-profiling.
                url = info["sidecar"] = profile_url(side.url)
                check_remote(url)
                def users_live() -> float | None:
                    # From Locust's exporter itself: the sampler's reading can be a second old, and a
                    # recording's length is fixed when it starts.
                    return self.locust_gauge("locust_users", timeout=1.0)

                profiler = RemoteStepProfiler(self.run_dir, url, side.group, users_live,
                                              self.thresholds.step_transient_fraction, self.opts.profile_rate, self.say,
                                              poll_s=0.25, lag_s=0.5)
                where = f"py-spy by the sidecar at {url} on its group {side.group!r}, {self.opts.profile_rate} samples/s"
            elif target_pid:
                check_attach(target_pid)
                watchdog = self.sup.watchdog
                profiler = StepProfiler(self.run_dir, target_pid, users_now, self.thresholds.step_transient_fraction,
                                        self.opts.profile_rate, self.say,
                                        on_spawn=watchdog.watch if watchdog else None)
                where = f"py-spy on pid {target_pid} and its children, {self.opts.profile_rate} samples/s"
            else:
                raise ProfilerUnavailable("no target PID to profile: with --host, give --target-pid PID of your "
                                          "server's main process (on this machine), or --target-sidecar URL of a "
                                          "sidecar started with --allow-profiling beside it")
        except ProfilerUnavailable as exc:
            info["error"] = str(exc)
            self.say(f"profiler   off: {exc}; the run goes on without profiles")
        else:
            self.profiler = profiler
            profiler.start()
            self.say(f"profiler   {where}, each step's hold -> {self.run_dir / 'profiles'}")
        self.meta["profiling"] = info

    def start_live(self) -> None:
        """`up`: analyse the run so far every few seconds into live.json, for Locust's Lab tab."""
        if self.opts.mode != "up" or self.sampler is None:
            return
        self.live = LiveView(self.run_dir, self.sampler.sources, title=f"loadlab up: {self.scenario_label()}")
        self.live.start()

    def write_meta(self, **extra) -> None:
        self.meta.update(extra)
        self.meta["components"] = [
            {"name": c.name, "pid": c.pid, "args": c.args, "log": str(c.log_path)} for c in self.sup.components]
        (self.run_dir / rundir.RUN_META).write_text(json.dumps(self.meta, indent=2) + "\n")

    def start_all(self) -> None:
        self._run_dir = new_run_dir(self.opts.out, self.run_name())
        self.say(f"run directory {self.run_dir}")
        # First, so that from the first component on, a killed loadlab leaves nothing running.
        self.sup.watchdog = watchdog = Watchdog(self.run_dir / "logs" / "watchdog.log")
        self.meta = {
            "scenario": self.scenario_label(), "mode": self.opts.mode, "started_at": time.time(),
            "argv": sys.argv, "ports": self.ports, "host": self.target_url(),
            # With --host and no PID the lab cannot count the workers: only --target-workers tells them.
            "target_workers": self.opts.target_workers if self.opts.host and not self.opts.target_pid
            else (self.opts.target_workers or usable_cores()),
            "host_cores": usable_cores(), "generator_processes": max(1, self.opts.workers),
            "time_scale": self.opts.time_scale, "prometheus": bool(self.prometheus_bin),
            "thresholds": thresholds.as_dict(self.thresholds), "watchdog_pid": watchdog.pid,
        }
        self.meta.update(self.remote_meta())
        if self.opts.remote_workers:
            self.meta.update(remote_workers=self.opts.remote_workers, master_bind=self.opts.master_bind,
                             generator_sidecars=generators.sources(self.opts.generator_sidecars))
        self.write_meta()
        target_pid = self.start_target()
        self.start_sidecar(target_pid)
        self.say_remote()
        self.start_sampler()
        self.start_profiler(target_pid)
        self.start_live()
        self.start_prometheus()
        self.write_meta()
        self.start_locust()
        self.write_meta()

    # ------------------------------------------------------------------ watch

    def progress_line(self, started: float, levels: list[float]) -> str:
        p = self.sampler.progress() if self.sampler else {}
        users = p.get("users")
        if isinstance(users, float) and users and (not levels or users != levels[-1]):
            levels.append(users)

        def f(value, fmt):
            return "-" if value is None else format(value, fmt)

        elapsed = time.monotonic() - started
        step = p.get("step") if p.get("step") is not None else len(levels)
        offered = f"offered {p['offered']:g}/s  " if p.get("offered") is not None else ""  # open-model runs
        phase = f" ({p['hunt_phase']})" if p.get("hunt_phase") else ""  # the step hunt's, e.g. "refine"
        return (f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] step {step:.0f}{phase}  {offered}users {f(users, '.0f')}  "
                f"{f(p.get('rps'), '.1f')} req/s  p95 {f(p.get('p95_ms'), '.0f')} ms  "
                f"failures {f(p.get('fail_per_s'), '.1f')}/s  target CPU {f(p.get('target_cpu_cores'), '.2f')} cores  "
                f"{'master CPU' if self.opts.remote_workers else 'Locust CPU'} {f(p.get('generator_cpu_cores'), '.2f')}")

    def watch(self) -> int:
        """Until Locust ends (run) or forever (up); raises ComponentDied when a component dies."""
        started = time.monotonic()
        levels: list[float] = []
        tty = self.out.isatty()
        last_print = 0.0
        while True:
            code = self.locust_master.poll()
            if code is not None:
                if tty:
                    self.out.write("\n")
                if self.opts.mode == "up":
                    raise ComponentDied(self.locust_master.died_message(), self.locust_master.exit_summary())
                killed = next((w for w in self.locust_workers if (w.poll() or 0) < 0), None)
                if killed is not None:  # the master ended because a worker was killed
                    raise ComponentDied(killed.died_message(), killed.exit_summary())
                lost = self.lost_remote_worker(exited=True)
                if lost is not None:  # the master stopped its test when its last remote worker went missing
                    raise fleet.WorkerLost(lost, time.time() - fleet.MISSING_AFTER_S)
                return code
            dead = self.dead_worker()
            if dead is not None:
                raise ComponentDied(dead.died_message(), dead.exit_summary())
            lost = self.lost_remote_worker()
            if lost is not None:  # the partial verdict ends where the master last heard from it
                raise fleet.WorkerLost(lost, time.time() - fleet.MISSING_AFTER_S)
            self.sup.check_alive()
            self.report_remote_sources(tty)
            line = self.progress_line(started, levels)
            if tty:
                self.out.write("\r" + line[: shutil.get_terminal_size().columns - 1])
                self.out.flush()
            elif time.monotonic() - last_print >= 10:
                self.say(line)
                last_print = time.monotonic()
            time.sleep(1)

    def locust_test_running(self) -> bool:
        """Whether Locust's master says its test is running (spawning or running users), asked now."""
        return self.locust_gauge("locust_running") == 1

    def dead_worker(self) -> Component | None:
        """A Locust worker that exited while its master still runs. Workers exit by themselves only
        when the master ends the test and tells them to quit; so a worker killed by a signal, one
        gone while the master's test is still running, or one gone for WORKER_GONE_S has died.
        Without this the master only marks it "missing" and runs on with fewer users."""
        now = time.monotonic()
        for worker in self.locust_workers:
            code = worker.poll()
            if code is None:
                continue
            gone_at = self._worker_gone_at.setdefault(worker.name, now)
            if code < 0 or now - gone_at >= WORKER_GONE_S or self.locust_test_running():
                return worker
        return None

    def locust_stopped_early(self, code: int | None) -> str:
        """One line: Locust exited before any load, with the reason it logged last."""
        comp = self.locust_master
        why = (last_error(comp.log_path) or "see its log").rstrip(".")
        return f"Locust stopped before any load ({describe_exit(code)}): {why}; its log: {comp.log_path}"

    def recorded_load(self) -> bool:
        """Whether Locust's stats history has any row (Locust writes its header only once the test starts)."""
        history = self.run_dir / f"{rundir.LOCUST_PREFIX}{rundir.HISTORY_SUFFIX}"
        try:
            return bool(read_stats_history(history).rows)
        except (OSError, ValueError):
            return False

    # ------------------------------------------------------------------ your locustfile, a remote target

    def scenario_label(self) -> str:
        """What the run, the console and the report are named after: the scenario or the user's file."""
        return self.opts.locustfile.name if self.opts.locustfile else self.opts.scenario

    def run_name(self) -> str:
        return own_locustfile.run_name(self.opts.locustfile) if self.opts.locustfile else self.opts.scenario

    def check_remote_flags(self) -> None:
        """--target-sidecar/--target-metrics/--target-group: only with --host, one source per fact."""
        opts = self.opts
        if opts.target_sidecar is not None:
            if not opts.host:
                raise LabError("--target-sidecar needs --host: it reads a sidecar beside your API; without --host the "
                               "lab starts the bundled target and measures it itself")
            if opts.target_pid:
                raise LabError("--target-sidecar and --target-pid both say where the API's CPU is measured: give "
                               "--target-pid for a server on this machine, --target-sidecar for one elsewhere")
            opts.target_sidecar = remote.metrics_url(opts.target_sidecar, "--target-sidecar")
        if opts.target_group is not None:
            if not opts.target_sidecar:
                raise LabError("--target-group names a group of the sidecar given by --target-sidecar: pass that too")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", opts.target_group):
                raise LabError(f"--target-group {opts.target_group!r} is not a sidecar group name (letters, digits, "
                               f"'_', '.', '-'; not starting with a digit)")
        if opts.target_metrics is not None:
            if not opts.host:
                raise LabError("--target-metrics needs --host: the bundled target's metrics port is the lab's own "
                               "(--target-metrics-port)")
            if opts.ports.get("target_metrics"):
                raise LabError("--target-metrics and --target-metrics-port both say where the API's metrics are: "
                               "give one")
            opts.target_metrics = remote.metrics_url(opts.target_metrics, "--target-metrics")
        self.check_fleet_target_flags()

    def check_fleet_target_flags(self) -> None:
        """--target-sidecar and --target-metrics repeated (loadlab.targets): each URL once."""
        opts = self.opts
        for flag, first, extra in (("--target-sidecar", opts.target_sidecar, opts.extra_target_sidecars),
                                   ("--target-metrics", opts.target_metrics, opts.extra_target_metrics)):
            urls = [url for url in (first, *(remote.metrics_url(url, flag) for url in extra)) if url]
            twice = {url for url in urls if urls.count(url) > 1}
            if twice:
                raise LabError(f"{flag} {sorted(twice)[0]} is given twice: give each of the API's machines once")
        opts.extra_target_sidecars = [remote.metrics_url(url, "--target-sidecar") for url in opts.extra_target_sidecars]
        opts.extra_target_metrics = [remote.metrics_url(url, "--target-metrics") for url in opts.extra_target_metrics]

    def check_remote_sources(self) -> None:
        """The sources on the API's machine answer as they should, before anything starts."""
        opts = self.opts
        if opts.target_sidecar:
            self.remote_sidecar = remote.check_sidecar(opts.target_sidecar, opts.target_group or TARGET_GROUP)
            self.remote[remote.TARGET_SIDECAR_SOURCE] = opts.target_sidecar
        fleet_sidecars = targets.sidecar_sources([u for u in (opts.target_sidecar, *opts.extra_target_sidecars) if u])
        self.fleet_sidecars = {source: remote.check_sidecar(url, opts.target_group or TARGET_GROUP)
                               for source, url in list(fleet_sidecars.items())[1:]}
        self.remote.update({source: side.url for source, side in self.fleet_sidecars.items()})
        for source, url in list(targets.metrics_sources([opts.target_metrics or "", *opts.extra_target_metrics]).items())[1:]:
            problem = remote.check_target_metrics(url, "--target-metrics")
            if problem:
                raise LabError(f"--target-metrics {url}: {problem}: each of the API's machines must serve the request "
                               f"histogram, or the fleet's server-side latency would leave it out")
            self.remote[source] = url
        if opts.host:
            url = self.target_metrics_url()
            named = ("--target-metrics" if opts.target_metrics else
                     "--target-metrics-port" if opts.ports.get("target_metrics") else None)
            problem = remote.check_target_metrics(url, named)  # a URL you named must answer
            if problem and not named:
                self.no_target_metrics = problem
            else:
                self.remote[TARGET_JOB] = url
                self.target_metrics_problem = problem

    def remote_meta(self) -> dict:
        """What run.json records of the sources on the API's machine (the analysis reads it)."""
        out: dict = {"remote_sources": dict(self.remote)}
        if self.remote_sidecar is not None:
            out.update(target_sidecar=self.remote_sidecar.url, target_group=self.remote_sidecar.group,
                       target_host_cores=self.remote_sidecar.host_cores)
        if self.fleet_sidecars and self.remote_sidecar is not None:  # an API served by a fleet (loadlab.targets)
            sides = {remote.TARGET_SIDECAR_SOURCE: self.remote_sidecar, **self.fleet_sidecars}
            out.update(target_sidecars={source: side.url for source, side in sides.items()},
                       target_sidecar_cores={source: side.host_cores for source, side in sides.items()})
        if self.opts.host:
            out["target_metrics"] = None if self.no_target_metrics else self.target_metrics_url()
        return out

    def report_remote_sources(self, tty: bool) -> None:
        """Say when a source on the API's machines or a load machine's sidecar stops answering (once
        it has been silent for remote.MIN_NOTED_S: one slow scrape is no news) and when it answers
        again; the run goes on."""
        watched = {**self.remote, **generators.sources(self.opts.generator_sidecars)}
        lines = []
        for name, ok, since, error, _ in self.sampler.changes() if self.sampler else []:
            if name not in watched:
                continue
            if not ok:
                self._silent[name] = (since, error, False)
                continue
            was = self._silent.pop(name, None)
            if was is not None and was[2]:
                lines.append(remote.describe_change(name, watched[name], True, since, "", was[0]))
        for name, (since, error, announced) in self._silent.items():
            if not announced and time.time() - since >= remote.MIN_NOTED_S:
                self._silent[name] = (since, error, True)
                lines.append(remote.describe_change(name, watched[name], False, since, error, None))
        for line in lines:
            if tty:
                self.out.write("\n")
            self.say(line)

    def say_remote(self) -> None:
        side = self.remote_sidecar
        if side is not None:
            self.say(f"target sidecar {side.url}  (group {side.group}: {side.procs} processes on a {side.host_cores}-core "
                     f"host; the API's CPU and memory come from it, Locust's from the local sidecar)")
        for side in self.fleet_sidecars.values():
            self.say(f"target sidecar {side.url}  (group {side.group}: {side.procs} processes on a {side.host_cores}-core "
                     f"host; the verdict sums the API's machines and judges each on its own)")
        for url in self.opts.extra_target_metrics:
            self.say(f"target metrics {url}  (another machine of the API: server-side latency and rates summed)")
        if not self.opts.host:
            return
        if self.no_target_metrics:
            self.say(f"target metrics none ({self.no_target_metrics}): the report has no server-side latency; "
                     f"pass --target-metrics URL of your API's /metrics")
        elif self.target_metrics_problem:
            self.say(f"target metrics {self.target_metrics_url()}: {self.target_metrics_problem}, so no server-side "
                     f"latency")
        else:
            self.say(f"target metrics {self.target_metrics_url()}  (server-side latency, beside Locust's)")

    # ------------------------------------------------------------------ load generators on other machines

    def check_fleet_flags(self) -> None:
        """--remote-workers, --master-bind, --workers-timeout (loadlab.fleet)."""
        opts = self.opts
        if opts.remote_workers < 0:
            raise LabError(f"--remote-workers must be 0 or more, got {opts.remote_workers}")
        if not math.isfinite(opts.workers_timeout) or opts.workers_timeout <= 0:
            raise LabError(f"--workers-timeout must be a number of seconds above 0, got {opts.workers_timeout}")
        if opts.master_bind != DEFAULT_BIND:
            if not (opts.workers or opts.remote_workers):
                raise LabError("--master-bind is where Locust's master listens for workers: pass --remote-workers N")
            fleet.check_bind(opts.master_bind)
        if opts.generator_sidecars and not opts.remote_workers:
            raise LabError("--generator-sidecar reads a sidecar on a load machine of --remote-workers: pass "
                           "--remote-workers N (the local generator's CPU comes from the lab's own sidecar)")
        opts.generator_sidecars = [remote.metrics_url(url, "--generator-sidecar") for url in opts.generator_sidecars]
        twice = {url for url in opts.generator_sidecars if opts.generator_sidecars.count(url) > 1}
        if twice:
            raise LabError(f"--generator-sidecar {sorted(twice)[0]} is given twice: give each load machine's "
                           f"sidecar once")
        for url in opts.generator_sidecars:  # before anything starts; their workers start later
            generators.check(url, need_process=False)

    def remote_worker_command(self) -> str:
        """The command each load machine runs (printed, so that it is run exactly as the lab's own workers)."""
        env = fleet.worker_env({**os.environ, **self.opts.env}, thresholds.to_env(self.thresholds))
        return fleet.worker_command([*self.locust_args()[2:], *self.opts.locust_args], env,
                                    fleet.master_host(self.opts.master_bind), self.ports["master"], str(REPO_ROOT))

    def say_worker_command(self) -> None:
        n = self.opts.remote_workers
        if not n:
            return
        machines = "the load machine" if n == 1 else f"each of the {n} load machines"
        self.say(f"workers    run this on {machines}, in a checkout of this project at {REPO_ROOT} "
                 f"after `make setup`, with its .venv/bin on PATH:")
        self.say(f"worker     {self.remote_worker_command()}")
        if fleet.is_open(self.opts.master_bind):
            self.say(f"workers    note: {fleet.SECURITY_NOTE}")
        if not fleet.is_open(urllib.parse.urlsplit(self.target_url()).hostname or DEFAULT_BIND) and \
                fleet.is_open(self.opts.master_bind):
            self.say(f"workers    note: the workers send their load to {self.target_url()}, which on another "
                     f"machine is that machine itself: pass --host with an address the load machines reach")

    def wait_for_remote_workers(self) -> None:
        """Until Locust's master counts every worker; WorkersMissing (exit 1) after --workers-timeout."""
        if not self.opts.remote_workers:
            return
        n = self.opts.remote_workers
        loopback = fleet.loopback_note(self.opts.master_bind)
        if loopback:
            self.say(f"workers    note: {loopback}")
        self.say(f"workers    waiting up to {self.opts.workers_timeout:g} s for {n} remote worker{'s' if n > 1 else ''} "
                 f"at {fleet.master_host(self.opts.master_bind)}:{self.ports['master']} (--workers-timeout)")
        master = self.locust_master
        fleet.wait_for_workers(self.exporter_url(),
                               self.opts.workers + self.opts.remote_workers, self.opts.workers,
                               self.opts.workers_timeout, self.ports["master"],
                               lambda: master.poll() is not None, self.say)
        for url in self.opts.generator_sidecars:  # now each must see its worker, or its CPU would read as idle
            cores = generators.check(url, need_process=True)
            self.say(f"generator sidecar {url}  ({cores}-core load machine; its Locust worker's CPU)")

    def lost_remote_worker(self, exited: bool = False) -> str | None:
        """Why the run must stop: Locust's master counts fewer workers than it started with mid-test, or
        logged one missing. `exited`: the master has ended (only its log is left to read)."""
        if not self.opts.remote_workers:
            return None
        if self._missing_log is None:
            self._missing_log = fleet.MissingLog(self.locust_master.log_path)
        count = None if exited else fleet.master_count(self.exporter_url())
        return fleet.lost_worker(count, self.opts.workers + self.opts.remote_workers, self._missing_log.check())

    # ------------------------------------------------------------------ the two commands

    def finish(self) -> Verdict | None:
        """Stop sampling, analyze, print the verdict; None when there is no data to judge.
        A run that did not finish was recorded as such in run.json (`incomplete`), so the verdict
        is marked complete: false."""
        history = self.run_dir / f"{rundir.LOCUST_PREFIX}{rundir.HISTORY_SUFFIX}"
        if not history.is_file():
            return None
        verdict, _ = rundir.analyze(self.run_dir, title=f"loadlab {self.opts.mode}: {self.scenario_label()}",
                                    gates=self.opts.gates)
        self.say("")
        self.say("verdict:")
        for line in verdict.summary():
            self.say(f"  {line}")
        for result in verdict.gates or []:
            self.say(f"  {result.line()}")
        self.say(f"report: {self.run_dir / rundir.REPORT}")
        self.say(f"verdict: {self.run_dir / rundir.VERDICT}")
        return verdict

    def finish_partial(self) -> None:
        """The verdict of the part that ran, after a death or an interruption; never raises."""
        if not self._run_dir:
            return
        if not self.recorded_load():
            self.say("no verdict: Locust recorded no load before the run stopped")
            return
        try:
            verdict = self.finish()
        except Exception as err:  # a half-written CSV: the logs are still there
            self.say(f"no verdict: {err}")
            return
        if verdict is not None and not verdict.complete:
            self.say(f"the verdict is PARTIAL (complete: false in {rundir.VERDICT}): {verdict.incomplete_reason}")

    def execute(self) -> int:
        """Run the lab; returns the exit code. Always stops everything it started."""
        self.check()
        restore = install_signal_handlers()
        code = 1
        incomplete: dict = {}  # why and when the run did not finish, recorded in run.json for the verdict
        try:
            try:
                self.start_all()
                locust_code = self.watch()
                if self.opts.mode == "run" and locust_code != 0:
                    incomplete = {"incomplete": f"Locust exited with {describe_exit(locust_code)}"}
            except Interrupted as exc:
                if self.opts.mode == "run":  # `up` ends with Ctrl-C by design: its tests ran as the user chose
                    incomplete = {"incomplete": f"interrupted by {exc}", "incomplete_at": time.time()}
                self.say(f"\ninterrupted ({exc}): stopping every component this run started")
                raise
            except ComponentDied as exc:
                incomplete = {"incomplete": exc.reason, "incomplete_at": getattr(exc, "at", None) or time.time()}
                self.say(f"\nerror: {exc}\nstopping the other components")  # now: stopping takes a while
                raise
            finally:
                hold_signals()  # a second Ctrl-C must not cut the cleanup short
                if self.profiler:  # before the target stops: py-spy writes the last step's stacks
                    self.profiler.stop()
                if self.live:
                    self.live.stop()
                if self.sampler:
                    self.sampler.stop()
                self.sup.stop_all()
                if self._run_dir:
                    self.write_meta(ended_at=time.time(),
                                    pids=self.sup.all_pids() + (self.profiler.pids() if self.profiler else []),
                                    **incomplete)
            if self.opts.mode == "run" and locust_code != 0:
                failed = api_failed(self.locust_master)  # the preflight may end Locust after its exporter is up
                if failed:
                    raise failed
                if not self.recorded_load():
                    raise LocustStoppedEarly(self.locust_stopped_early(locust_code))
                self.say(f"error: {self.locust_master.name} exited with code {locust_code}; its log: "
                         f"{self.locust_master.log_path}\n{tail(self.locust_master.log_path)}")
                self.finish_partial()
                return 1
            for line in suite_errors(self.locust_master.log_path).splitlines():  # e.g. seeding failed
                self.say(f"locust: {line}")
            # E.g. the test accounts stay on your API (a target the lab started keeps them in the run directory).
            for line in suite_notes(self.locust_master.log_path) if self.opts.host else []:
                self.say(f"locust: {line}")
            verdict = self.finish()
            if verdict is None:
                self.say(f"error: Locust wrote no stats history; see {self.locust_master.log_path}")
                return 1
            if verdict.functional_failure is not None:
                return EXIT_API_FAILED
            code = self.after_checks(verdict)
            if code == 0 and verdict.resource_lost_to_outage:
                self.say("\nerror: the limiting resource is unknown because a source on the API's machine stopped "
                         "answering (see the verdict's notes): the capacity is measured, what ran out is not; "
                         "keep the sidecar running and run again")
                return EXIT_COMPONENT_FAILED
            return code
        except Interrupted:
            self.say("stopped every component this run started")
            self.finish_partial()
            code = 130
        except ApiFailed as exc:
            self.say(f"\nerror: {exc}\nno load was run; every component was stopped; run directory: {self._run_dir}")
            code = EXIT_API_FAILED
        except LocustStoppedEarly as exc:
            self.say(f"\nerror: {exc}")
            code = 1
        except ComponentDied:
            self.say(f"every other component was stopped; run directory: {self._run_dir}")
            self.finish_partial()
            code = 1
        except LabError as exc:
            self.say(f"\nerror: {exc}")
            code = 1
        finally:
            restore()
        return code

    # ------------------------------------------------------------------ CI checks (gates, --baseline)

    def check_baseline(self) -> None:
        """A --baseline must be a run this one can be compared with: said before anything starts."""
        if self.opts.baseline is None:
            return
        try:
            inputs = rundir.locate(self.opts.baseline)
        except FileNotFoundError as exc:
            raise LabError(f"--baseline: {exc}") from None
        scenario = inputs.meta.get("scenario")
        if scenario and scenario != self.scenario_label():
            raise LabError(f"--baseline {self.opts.baseline} ran {scenario}, this run is {self.scenario_label()}: "
                           "compare runs of the same scenario")

    def after_checks(self, verdict: Verdict) -> int:
        """Compare with --baseline, write --junit; 4 when a gate failed or the run regressed, 2 when
        the baseline could not be compared, else 0."""
        from loadlab import compare as comparing
        from loadlab import gates as gating

        code = EXIT_GATE if gating.failed(verdict.gates) else 0
        suites: list[tuple[str, list[gating.Case]]] = [("loadlab gates", gating.gate_cases(verdict.gates or []))]
        if self.opts.baseline is not None:
            self.say("")
            self.say(f"compared with the baseline {self.opts.baseline}:")
            try:
                base = comparing.load("BASE", self.opts.baseline, self.opts.slo_p95_ms, self.opts.slo_error_ratio)
                new = comparing.load("NEW", self.run_dir, verdict=verdict)
                result = comparing.compare(base, new, self.opts.min_change_pct)
            except comparing.CompareError as exc:
                self.say(f"  error: {exc}")
                code = EXIT_USAGE
            else:
                for line in comparing.table(result):
                    self.say(f"  {line}")
                page, _ = comparing.write(result, self.run_dir)
                self.say(f"compare: {page}")
                suites.append(("loadlab compare", comparing.junit_cases(result)))
                if result.regressions:
                    code = EXIT_GATE
        if self.opts.junit is not None:
            self.say(f"junit: {gating.write_junit(self.opts.junit, suites)}")
        return code


def api_failed(locust: Component) -> ApiFailed | None:
    """The preflight's word, when Locust ended because the API failed the scenario's own requests."""
    message = suite_errors(locust.log_path, "preflight") if locust.poll() == EXIT_API_FAILED else ""
    return ApiFailed(message) if message else None


def suite_errors(log_path: Path, plugin: str | None = None) -> str:
    """The Locust suite's own ERROR lines from a Locust log (e.g. "seeding: 3 of 100 test users could
    not be created ..."), message only; of one plugin (`preflight`, `seeding`, ...) when given."""
    marker = f"/ERROR/locust_tests.plugins.{plugin or ''}"
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(line.split(": ", 1)[1] for line in lines if marker in line and ": " in line)


def suite_notes(log_path: Path) -> list[str]:
    """The Locust suite's notes worth the console (`cleanup: note: the test accounts stay on ...`), once each."""
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return []
    notes = [line.split(": ", 1)[1] for line in lines if "/locust_tests.plugins." in line and ": note: " in line]
    return list(dict.fromkeys(notes))
