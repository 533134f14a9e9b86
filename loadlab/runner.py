"""`loadlab run` and `loadlab up`: start the lab's components in order, watch them, stop them all.

Order: the target (unless --host), the sidecar, the lab's own sampler, Prometheus (when
installed), then Locust (master + workers with --workers). Each is waited for until it
answers. The sidecar finds Locust through PID files written as each Locust process starts,
so it never has to guess by name. Everything started is stopped on success, on failure, on
Ctrl-C and on SIGTERM, in reverse order, by PID.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from loadlab import rundir
from loadlab.contract import thresholds
from loadlab.contract.cores import usable_cores
from loadlab.contract.names import DEFAULT_BIND, DEFAULT_PORTS, GENERATOR_GROUP, LOCUST_JOB, SIDECAR_JOB, TARGET_GROUP, TARGET_JOB
from loadlab.contract.scenarios import lab_scenarios
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS, Thresholds
from loadlab.processes import (
    Component,
    ComponentDied,
    Interrupted,
    LabError,
    Supervisor,
    free_port,
    hold_signals,
    install_signal_handlers,
    port_in_use,
    port_owner,
    tail,
)
from loadlab.sampler import Sampler
from loadlab.verdict import Verdict

REPO_ROOT = Path(__file__).resolve().parent.parent
SCENARIO_DIR = REPO_ROOT / "locust_tests" / "scenarios"

# `loadlab run` scenario name -> (locustfile, the suite's --scenario value).
SCENARIOS: dict[str, tuple[str, str]] = lab_scenarios()

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


def new_run_dir(out: Path, scenario: str) -> Path:
    """reports/<timestamp>-<scenario>/, never an existing directory."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = out / (f"{stamp}-{scenario}" if n == 1 else f"{stamp}-{scenario}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise LabError(f"{out}: cannot create a new run directory (1000 exist for {stamp}-{scenario})")


class Lab:
    def __init__(self, opts: LabOptions, stream: TextIO = sys.stdout) -> None:
        if opts.scenario not in SCENARIOS:
            raise LabError(f"unknown scenario {opts.scenario!r}: choose one of {', '.join(SCENARIOS)}")
        self.opts = opts
        self.out = stream
        self.sup = Supervisor()
        self.sampler: Sampler | None = None
        self._run_dir: Path | None = None
        self.ports: dict[str, int] = {}
        self._locust_master: Component | None = None
        self.prometheus_bin: str | None = None
        self.meta: dict = {}
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
        locustfile = SCENARIO_DIR / SCENARIOS[opts.scenario][0]
        if not locustfile.is_file():
            raise LabError(f"{locustfile}: the Locust suite's scenario file is missing; is this a complete checkout?")
        if shutil.which("locust") is None and not (Path(sys.executable).parent / "locust").exists():
            # Installed without its script on PATH still works (we run `python -m locust`). Look it
            # up without importing it: importing Locust would gevent-patch the runner's own process.
            if importlib.util.find_spec("locust") is None:
                raise LabError("Locust is not installed: run `make setup` (or pip install -e .)")
        if opts.prometheus != "off":
            self.prometheus_bin = shutil.which("prometheus")
            if self.prometheus_bin is None and opts.prometheus == "on":
                raise LabError("prometheus not found on PATH: install it (Debian: apt-get install prometheus, "
                               "or `make system-deps`), or run without --prometheus on")
        if opts.workers < 0:
            raise LabError(f"--workers must be 0 (one Locust process) or more, got {opts.workers}")
        if opts.host and not opts.host.startswith(("http://", "https://")):
            raise LabError(f"--host {opts.host!r} is not a URL: give it like http://127.0.0.1:5000")
        self.allocate_ports()

    def needed_ports(self) -> list[str]:
        names = ["sidecar", "exporter"]
        if not self.opts.host:
            names += ["target", "target_metrics"]
        if self.prometheus_bin:
            names.append("prometheus")
        if self.opts.workers:
            names.append("master")
        if self.opts.mode == "up":
            names.append("web")
        return names

    def allocate_ports(self) -> None:
        """Explicit ports must be free; `up` uses the well-known defaults, `run` free ones."""
        for name in self.needed_ports():
            explicit = self.opts.ports.get(name)
            if explicit is None and (self.opts.mode == "run" or self.opts.free_ports):
                self.ports[name] = free_port()
                continue
            port = explicit if explicit is not None else DEFAULT_PORTS[name]
            if port_in_use(port):
                hint = f"choose another with {PORT_FLAGS[name]}" + ("" if explicit else " or pass --free-ports")
                raise LabError(f"port {port} for {WHAT[name]} is already in use{port_owner(port)}: "
                               f"stop that process or {hint}")
            self.ports[name] = port

    # ------------------------------------------------------------------ start

    def python(self, *args: str) -> list[str]:
        return [sys.executable, *args]

    def env(self) -> dict[str, str]:
        env = {**os.environ, **self.opts.env, **thresholds.to_env(self.thresholds)}
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def component(self, name: str, args: list[str], ready_url: str | None = None,
                  exits_by_itself: bool = False) -> Component:
        return Component(name, args, self.run_dir / "logs" / f"{name}.log", env=self.env(), cwd=REPO_ROOT,
                         ready_url=ready_url, exits_by_itself=exits_by_itself)

    def target_url(self) -> str:
        return self.opts.host.rstrip("/") if self.opts.host else f"http://{DEFAULT_BIND}:{self.ports['target']}"

    def target_metrics_url(self) -> str:
        """Where the target's metrics are read. A target we start serves them from the gunicorn
        arbiter on their own port, so scrapes never queue behind the load in the workers'
        accept queue; an external --host only has /metrics on its API port."""
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
        targets = {SIDECAR_JOB: f"{DEFAULT_BIND}:{self.ports['sidecar']}",
                   LOCUST_JOB: f"{DEFAULT_BIND}:{self.ports['exporter']}",
                   TARGET_JOB: self.target_metrics_url().split("://", 1)[1].split("/", 1)[0]}
        config = prom_dir / "prometheus.yml"
        config.write_text(render(targets, rules, self.thresholds.scrape_interval_seconds))
        url = f"http://{DEFAULT_BIND}:{self.ports['prometheus']}"
        comp = self.component("prometheus", [
            self.prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={prom_dir / 'data'}",
            f"--web.listen-address={DEFAULT_BIND}:{self.ports['prometheus']}", "--storage.tsdb.retention.time=30d",
        ], ready_url=f"{url}/-/ready")
        self.sup.start(comp).wait_ready(timeout=60)
        self.say(f"prometheus {url}  (rules: {len(rules)} files, data in {prom_dir / 'data'})")

    def locust_args(self) -> list[str]:
        locustfile, preset = SCENARIOS[self.opts.scenario]
        args = ["-m", "locust", "-f", str(SCENARIO_DIR / locustfile), "--scenario", preset,
                "--host", self.target_url()]
        if self.opts.time_scale is not None:
            args += ["--time-scale", f"{self.opts.time_scale:g}"]
        return args

    def start_locust(self) -> None:
        base = self.locust_args()
        master = [*base, "--exporter-port", str(self.ports["exporter"]), "--exporter-linger", "3",
                  "--csv", str(self.run_dir / rundir.LOCUST_PREFIX), "--csv-full-history",
                  "--html", str(self.run_dir / "locust.html"), "--json-file", str(self.run_dir / "locust"),
                  # Failures are what a stress test is for; a non-zero exit must mean Locust itself failed.
                  "--exit-code-on-error", "0"]
        if self.opts.mode == "run":
            master += ["--headless"]
        else:
            master += ["--web-host", DEFAULT_BIND, "--web-port", str(self.ports["web"])]
        if self.opts.workers:
            master += ["--master", "--master-bind-host", DEFAULT_BIND, "--master-bind-port", str(self.ports["master"]),
                       "--expect-workers", str(self.opts.workers), "--expect-workers-max-wait", "60"]
        master += self.opts.locust_args
        pid_files = self.locust_pid_files()
        for path in pid_files:
            path.parent.mkdir(parents=True, exist_ok=True)
        # Workers first, so the master finds them when it starts (it waits for them anyway).
        for i in range(1, self.opts.workers + 1):
            worker = self.component(f"locust-worker-{i}", self.python(
                *base, "--worker", "--master-host", DEFAULT_BIND, "--master-port", str(self.ports["master"]),
                *self.opts.locust_args), exits_by_itself=True)
            self.sup.start(worker)
            pid_files[i].write_text(f"{worker.pid}\n")
        comp = self.component("locust", self.python(*master),
                              ready_url=f"http://{DEFAULT_BIND}:{self.ports['exporter']}/metrics",
                              exits_by_itself=self.opts.mode == "run")
        self.sup.start(comp)
        pid_files[0].write_text(f"{comp.pid}\n")
        self._locust_master = comp
        comp.wait_ready(timeout=120)  # preflight + seeding happen before the exporter serves
        what = f"master + {self.opts.workers} workers" if self.opts.workers else "one process"
        self.say(f"locust     {SCENARIOS[self.opts.scenario][0]} --scenario {SCENARIOS[self.opts.scenario][1]} "
                 f"({what}, pid {comp.pid}); exporter http://{DEFAULT_BIND}:{self.ports['exporter']}/metrics")
        if self.opts.mode == "up":
            self.say(f"locust UI  http://{DEFAULT_BIND}:{self.ports['web']}")

    def start_sampler(self) -> None:
        sources = {SIDECAR_JOB: f"http://{DEFAULT_BIND}:{self.ports['sidecar']}/metrics",
                   TARGET_JOB: self.target_metrics_url(),
                   LOCUST_JOB: f"http://{DEFAULT_BIND}:{self.ports['exporter']}/metrics"}
        self.sampler = Sampler(self.run_dir / rundir.SAMPLES, sources)
        self.sampler.start()

    def write_meta(self, **extra) -> None:
        self.meta.update(extra)
        self.meta["components"] = [
            {"name": c.name, "pid": c.pid, "args": c.args, "log": str(c.log_path)} for c in self.sup.components]
        (self.run_dir / rundir.RUN_META).write_text(json.dumps(self.meta, indent=2) + "\n")

    def start_all(self) -> None:
        self._run_dir = new_run_dir(self.opts.out, self.opts.scenario)
        self.say(f"run directory {self.run_dir}")
        self.meta = {
            "scenario": self.opts.scenario, "mode": self.opts.mode, "started_at": time.time(),
            "argv": sys.argv, "ports": self.ports, "host": self.target_url(),
            "target_workers": None if self.opts.host and not self.opts.target_pid
            else (self.opts.target_workers or usable_cores()),
            "host_cores": usable_cores(), "generator_processes": max(1, self.opts.workers),
            "time_scale": self.opts.time_scale, "prometheus": bool(self.prometheus_bin),
            "thresholds": thresholds.as_dict(self.thresholds),
        }
        self.write_meta()
        target_pid = self.start_target()
        self.start_sidecar(target_pid)
        self.start_sampler()
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
        phase = f" ({p['hunt_phase']})" if p.get("hunt_phase") else ""  # the step hunt's, e.g. "refine"
        return (f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] step {step:.0f}{phase}  users {f(users, '.0f')}  "
                f"{f(p.get('rps'), '.1f')} req/s  p95 {f(p.get('p95_ms'), '.0f')} ms  "
                f"failures {f(p.get('fail_per_s'), '.1f')}/s  target CPU {f(p.get('target_cpu_cores'), '.2f')} cores  "
                f"Locust CPU {f(p.get('generator_cpu_cores'), '.2f')}")

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
                    raise ComponentDied(self.locust_master.died_message())
                return code
            self.sup.check_alive()
            line = self.progress_line(started, levels)
            if tty:
                self.out.write("\r" + line[: shutil.get_terminal_size().columns - 1])
                self.out.flush()
            elif time.monotonic() - last_print >= 10:
                self.say(line)
                last_print = time.monotonic()
            time.sleep(1)

    # ------------------------------------------------------------------ the two commands

    def finish(self) -> Verdict | None:
        """Stop sampling, analyze, print the verdict; None when there is no data to judge."""
        history = self.run_dir / f"{rundir.LOCUST_PREFIX}{rundir.HISTORY_SUFFIX}"
        if not history.is_file():
            return None
        verdict, _ = rundir.analyze(self.run_dir, title=f"loadlab {self.opts.mode}: {self.opts.scenario}")
        self.say("")
        self.say("verdict:")
        for line in verdict.summary():
            self.say(f"  {line}")
        self.say(f"report: {self.run_dir / rundir.REPORT}")
        self.say(f"verdict: {self.run_dir / rundir.VERDICT}")
        return verdict

    def execute(self) -> int:
        """Run the lab; returns the exit code. Always stops everything it started."""
        self.check()
        restore = install_signal_handlers()
        code = 1
        try:
            try:
                self.start_all()
                locust_code = self.watch()
            finally:
                hold_signals()  # a second Ctrl-C must not cut the cleanup short
                if self.sampler:
                    self.sampler.stop()
                self.sup.stop_all()
                if self._run_dir:
                    self.write_meta(ended_at=time.time(), pids=self.sup.all_pids())
            if self.opts.mode == "run" and locust_code != 0:
                self.say(f"error: {self.locust_master.name} exited with code {locust_code}; its log: "
                         f"{self.locust_master.log_path}\n{tail(self.locust_master.log_path)}")
                self.finish()
                return 1
            verdict = self.finish()
            if verdict is None:
                self.say(f"error: Locust wrote no stats history; see {self.locust_master.log_path}")
                return 1
            return 0
        except Interrupted as exc:
            self.say(f"\ninterrupted ({exc}): stopped every component this run started")
            if self._run_dir:
                try:
                    self.finish()
                except Exception as err:  # a half-written CSV: the logs are still there
                    self.say(f"(no verdict: {err})")
            code = 130
        except ComponentDied as exc:
            self.say(f"\nerror: {exc}\nevery other component was stopped; run directory: {self._run_dir}")
            code = 1
        except LabError as exc:
            self.say(f"\nerror: {exc}")
            code = 1
        finally:
            restore()
        return code
