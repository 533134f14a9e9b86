"""The `loadlab` command: run, up, analyze, data, cleanup.

    loadlab run login-step --time-scale 0.1
    loadlab run login-stress --workers 2 -- --users 300        # after `--`: passed to Locust as is
    loadlab run login-step --remote-workers 2 --master-bind 10.0.0.9   # workers on other machines (prints how)
    loadlab run --locustfile mine.py --host http://127.0.0.1:8000 -- --step-users 5   # your own locustfile
    loadlab up                                                 # Locust web UI + the lab, until Ctrl-C
    loadlab analyze reports/20250101-120000-login-step         # or any Locust --csv prefix
    loadlab compare reports/BASE reports/NEW                   # did it get worse, and are we sure?
    loadlab run login-step --time-scale 0.1 --gate 'capacity_rps>=40' --baseline reports/BASE
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from loadlab import compare as comparing
from loadlab import gates as gating
from loadlab import rundir
from loadlab.contract.exits import COMPARE_REGRESSED as EXIT_REGRESSED
from loadlab.contract.exits import EXIT_API_FAILED, EXIT_COMPONENT_FAILED, EXIT_GATE, EXIT_USAGE
from loadlab.contract.names import DEFAULT_BIND, DEFAULT_PORTS
from loadlab.fleet import DEFAULT_WORKERS_TIMEOUT_S
from loadlab.history import Damage, DamagedInput
from loadlab.processes import LabError
from loadlab.runner import REPO_ROOT, SCENARIOS, Lab, LabOptions
from loadlab.stacks import DEFAULT_RATE as DEFAULT_PROFILE_RATE


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:  # nan and inf parse as floats: inf would hold step 1 forever
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, got {value}")
    return value


def _add_slo_options(p: argparse.ArgumentParser) -> None:
    # Checked by loadlab.contract.thresholds (one message for a flag and its variable alike).
    p.add_argument("--slo-p95-ms", type=float, metavar="MS",
                   help="the p95 latency SLO in ms (beats $SLO_P95_MS; default 500)")
    p.add_argument("--slo-error-ratio", type=float, metavar="R",
                   help="the error-ratio SLO, 0-1 (beats $SLO_ERROR_RATIO; default 0.01)")


def _min_change(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, got {text!r}") from None
    if not 0 <= value < 1000:
        raise argparse.ArgumentTypeError(f"a percentage from 0 up, got {text}")
    return value


def _add_check_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gate", action="append", default=[], metavar="EXPR",
                   help="fail (exit 4) unless the verdict meets EXPR, e.g. 'capacity_rps>=40', 'knee.users>=80', "
                        "'p95_ms@50users<=300', 'error_ratio<=0.01'; repeatable; results in verdict.json `gates`")
    p.add_argument("--junit", type=Path, metavar="FILE", help="write the gates (and comparisons) as JUnit XML")


def _add_lab_options(p: argparse.ArgumentParser, mode: str) -> None:
    p.add_argument("--locustfile", type=Path, metavar="PATH",
                   help="your own locustfile in place of a SCENARIO: the lab adds its plugins (exporter, step hunt) "
                        "beside it, so it needs no import from this project; the run is named after it")
    p.add_argument("--host", help="drive this API instead of starting the bundled target (e.g. http://127.0.0.1:8000)")
    p.add_argument("--target-pid", type=int,
                   help="with --host on this machine: PID of that server's main process, so the sidecar samples "
                        "its CPU and memory (it and its children)")
    p.add_argument("--target-sidecar", metavar="URL", action="append", default=[],
                   help="with --host: a sidecar you started on the API's machine (python -m monitoring.sidecar "
                        "--host 0.0.0.0 --group target=REGEX); the API's CPU and memory come from it; repeatable, "
                        "one per machine of a fleet: the verdict judges their sum and each machine")
    p.add_argument("--target-metrics", metavar="URL", action="append", default=[],
                   help="with --host: your API's own /metrics (server-side latency beside Locust's); default: "
                        "HOST/metrics when it answers; repeatable, one per machine (summed)")
    p.add_argument("--target-group", metavar="NAME",
                   help="with --target-sidecar: its group of the API's processes (default: target)")
    p.add_argument("--workers", type=int, default=0,
                   help="Locust workers (Locust's own master/worker mode); default 0 = one Locust process")
    p.add_argument("--remote-workers", type=int, default=0, metavar="N",
                   help="Locust workers you start on other machines with the command the lab prints; the master "
                        "waits for them (Locust's --expect-workers)")
    p.add_argument("--master-bind", default=DEFAULT_BIND, metavar="HOST",
                   help="address Locust's master listens on for workers (default: %(default)s; its port has no "
                        "authentication: open it only on a trusted network)")
    p.add_argument("--workers-timeout", type=_positive_float, default=DEFAULT_WORKERS_TIMEOUT_S, metavar="SECONDS",
                   help="with --remote-workers: stop (exit 1) unless every worker connects within this "
                        "(default: %(default)g)")
    p.add_argument("--generator-sidecar", action="append", default=[], metavar="URL",
                   help="with --remote-workers: a sidecar on a load machine (python -m monitoring.sidecar --host "
                        "0.0.0.0 --group 'locust=locust .*--worker'); repeatable, one per machine; the verdict "
                        "judges each machine's generator CPU")
    p.add_argument("--target-workers", type=int,
                   help="gunicorn workers of the bundled target (default: CPU count); with --host: how many "
                        "worker processes your server has, for the CPU verdict (default: its processes minus one, "
                        "as the sidecar counts them)")
    p.add_argument("--hash-profile", choices=("default", "lab"), default="default",
                   help="password hash cost of the bundled target (default: %(default)s)")
    p.add_argument("--time-scale", type=_positive_float,
                   help="scale the scenario's durations and step holds (the Locust suite's --time-scale)")
    p.add_argument("--out", type=Path, default=Path("reports"),
                   help="where run directories are created (default: %(default)s)")
    _add_slo_options(p)
    p.add_argument("--profile", action="store_true",
                   help="sample the target's Python stacks (py-spy) during each step's hold; name the hot spot at "
                        "the knee in the verdict and the report (needs ptrace: root or CAP_SYS_PTRACE)")
    p.add_argument("--profile-rate", type=_positive_int, default=DEFAULT_PROFILE_RATE, metavar="HZ",
                   help="py-spy samples per second with --profile (default: %(default)s)")
    p.add_argument("--prometheus", choices=("auto", "on", "off"), default="auto",
                   help="start Prometheus with the lab's rules: auto = when `prometheus` is on PATH (default)")
    for name, flag in (("target", "--target-port"), ("target_metrics", "--target-metrics-port"),
                       ("sidecar", "--sidecar-port"), ("exporter", "--exporter-port"),
                       ("prometheus", "--prometheus-port"), ("master", "--master-port")):
        default = "a free port" if mode == "run" else str(DEFAULT_PORTS[name])
        p.add_argument(flag, type=_port, dest=f"port_{name}", help=f"default: {default}")
    if mode == "up":
        p.add_argument("--web-port", type=_port, dest="port_web", help=f"Locust web UI (default {DEFAULT_PORTS['web']})")
        p.add_argument("--free-ports", action="store_true",
                       help="use free ports instead of the usual ones (5000, 9101, 8089, 9646, 9256, 9090) and print them")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loadlab", description=(
        "Run the load lab on this machine and answer: where does the API break, and what ran out first?"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a scenario headless, then print the verdict and write the report",
                         description="Arguments after `--` go to Locust unchanged (e.g. -- --step-users 5).")
    run.add_argument("scenario", nargs="?", choices=list(SCENARIOS), metavar="SCENARIO",
                     help=", ".join(SCENARIOS) + " (or --locustfile PATH)")
    _add_lab_options(run, "run")
    _add_check_options(run)
    run.add_argument("--baseline", type=Path, metavar="DIR",
                     help="after the run, compare it with this run directory (loadlab compare); a regression "
                          "exits 4 like a failed gate")
    run.add_argument("--min-change", type=_min_change, default=comparing.DEFAULT_MIN_CHANGE_PCT, metavar="PCT",
                     help="with --baseline: the smallest change in percent judged a regression (default: %(default)s)")

    up = sub.add_parser("up", help="the same components with Locust's web UI, until Ctrl-C; prints the URLs",
                        description="Arguments after `--` go to Locust unchanged.")
    up.add_argument("scenario", nargs="?", choices=list(SCENARIOS), metavar="SCENARIO",
                    help="locustfile and preset for the UI (default: login-step, unless --locustfile PATH)")
    _add_lab_options(up, "up")

    analyze = sub.add_parser("analyze", help="breaking-point verdict of a run directory or a Locust --csv prefix")
    analyze.add_argument("path", type=Path, help="run directory, Locust --csv PREFIX, or PREFIX_stats_history.csv")
    analyze.add_argument("--json", action="store_true", help="print verdict.json instead of the summary")
    analyze.add_argument("--no-write", action="store_true", help="print only; do not write verdict.json/report.html")
    analyze.add_argument("--lenient", action="store_true",
                         help="skip unreadable rows of the input files (counted in the verdict as skipped_rows, "
                              "and warned about) instead of refusing them (exit 2)")
    _add_slo_options(analyze)
    _add_check_options(analyze)
    analyze.epilog = "A run directory is judged by the thresholds its run recorded (run.json) unless a flag overrides them."

    comp = sub.add_parser("compare", help="did NEW get worse than BASE, beyond the noise? (exit 1: it regressed)",
                          description="Compares the capacity, the knee, the break, and the throughput and p95 at "
                                      "every step load both runs held, each with its change, a 95%% confidence "
                                      "interval and a judgement. Exit 0: no regression; 1: a regression beyond "
                                      "--min-change; 2: the runs cannot be compared (the reason is printed).")
    comp.add_argument("base", type=Path, metavar="BASE", help="run directory or Locust --csv prefix (the reference)")
    comp.add_argument("new", type=Path, metavar="NEW", help="run directory or Locust --csv prefix (the candidate)")
    comp.add_argument("--min-change", type=_min_change, default=comparing.DEFAULT_MIN_CHANGE_PCT, metavar="PCT",
                      help="the smallest change in percent worth judging (default: %(default)s)")
    comp.add_argument("--json", action="store_true", help="print the comparison as JSON instead of the table")
    comp.add_argument("--out", type=Path, metavar="DIR",
                      help="where compare.html and compare.json go (default: NEW's directory)")
    comp.add_argument("--no-write", action="store_true", help="print only; write no compare.html/compare.json")
    comp.add_argument("--junit", type=Path, metavar="FILE", help="write each figure's judgement as JUnit XML")
    _add_slo_options(comp)

    data = sub.add_parser("data", help="regenerate the test users file (python -m locust_tests.data)")
    data.add_argument("--count", type=int, help="number of users")
    data.add_argument("--seed", type=int, help="Faker seed")
    data.add_argument("--out", type=Path, help="output file")

    cleanup = sub.add_parser("cleanup", help="delete test users from a target that has LAB_ADMIN_TOKEN set")
    cleanup.add_argument("--host", default="http://127.0.0.1:5000", help="target URL (default: %(default)s)")
    cleanup.add_argument("--prefix", help="delete users whose username starts with this "
                                          "(default: lt_, the prefix of every user the Locust suite creates)")
    cleanup.add_argument("--token", default=os.environ.get("LAB_ADMIN_TOKEN"),
                         help="the target's admin token (default: $LAB_ADMIN_TOKEN)")
    return parser


def _lab_options(args: argparse.Namespace, mode: str, locust_args: list[str]) -> LabOptions:
    ports = {name: value for name, value in ((k[5:], v) for k, v in vars(args).items() if k.startswith("port_"))
             if value is not None}
    if args.scenario and args.locustfile:
        raise LabError(f"give a SCENARIO or --locustfile, not both ({args.scenario} and {args.locustfile})")
    if not args.scenario and not args.locustfile and mode == "run":
        raise LabError(f"give a SCENARIO ({', '.join(SCENARIOS)}) or --locustfile PATH")
    return LabOptions(scenario=args.scenario or ("" if args.locustfile else "login-step"), mode=mode, host=args.host,
                      workers=args.workers,
                      time_scale=args.time_scale, out=args.out, target_workers=args.target_workers,
                      target_pid=args.target_pid, hash_profile=args.hash_profile, ports=ports,
                      free_ports=getattr(args, "free_ports", False), prometheus=args.prometheus,
                      locust_args=locust_args, slo_p95_ms=args.slo_p95_ms, slo_error_ratio=args.slo_error_ratio,
                      profile=args.profile, profile_rate=args.profile_rate, locustfile=args.locustfile,
                      target_sidecar=(args.target_sidecar or [None])[0], target_metrics=(args.target_metrics or [None])[0],
                      extra_target_sidecars=args.target_sidecar[1:], extra_target_metrics=args.target_metrics[1:],
                      target_group=args.target_group,
                      gates=gating.parse_all(getattr(args, "gate", [])), junit=getattr(args, "junit", None),
                      baseline=getattr(args, "baseline", None),
                      min_change_pct=getattr(args, "min_change", comparing.DEFAULT_MIN_CHANGE_PCT),
                      remote_workers=args.remote_workers, master_bind=args.master_bind,
                      workers_timeout=args.workers_timeout, generator_sidecars=args.generator_sidecar)


def cmd_analyze(args: argparse.Namespace) -> int:
    try:
        gates = gating.parse_all(args.gate)
        located = rundir.locate(args.path, Damage(lenient=args.lenient))
        th = rundir.run_thresholds(located, os.environ, args.slo_p95_ms, args.slo_error_ratio)
        verdict, inputs = rundir.analyze(args.path, th, write=not args.no_write, lenient=args.lenient, gates=gates)
    except DamagedInput as exc:
        print(f"loadlab analyze: {exc}. The verdict would not be of the run's data: repair or remove that line, "
              f"or pass --lenient to skip unreadable rows (they are counted in the verdict)", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, ValueError) as exc:  # ThresholdError and GateError are ValueErrors
        print(f"loadlab analyze: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # a directory where a file should be, no permission...
        print(f"loadlab analyze: {exc.filename or args.path}: cannot read it ({exc.strerror or exc})", file=sys.stderr)
        return EXIT_USAGE
    if verdict.skipped_rows:
        print(f"loadlab analyze: warning: --lenient skipped {verdict.skipped_rows} unreadable rows; the verdict "
              f"is of the rest (skipped_rows in verdict.json):", file=sys.stderr)
        for where in inputs.skipped[:10]:
            print(f"  {where}", file=sys.stderr)
    if args.json:
        print(json.dumps(verdict.to_dict(), indent=2))
    else:
        for line in verdict.summary():
            print(line)
        for result in verdict.gates or []:
            print(result.line())
        if not args.no_write:
            print(f"verdict: {inputs.out_dir / rundir.VERDICT}")
            print(f"report: {inputs.out_dir / rundir.REPORT}")
    if args.junit:
        gating.write_junit(args.junit, [("loadlab gates", gating.gate_cases(verdict.gates or []))])
    if verdict.functional_failure is not None:
        return EXIT_API_FAILED
    if gating.failed(verdict.gates):
        return EXIT_GATE
    return EXIT_COMPONENT_FAILED if verdict.resource_lost_to_outage else 0


def cmd_compare(args: argparse.Namespace) -> int:
    try:
        comparing.precheck(args.base, args.new, args.slo_p95_ms, args.slo_error_ratio)
        base = comparing.load("BASE", args.base, args.slo_p95_ms, args.slo_error_ratio)
        new = comparing.load("NEW", args.new, args.slo_p95_ms, args.slo_error_ratio)
        result = comparing.compare(base, new, args.min_change)
    except comparing.CompareError as exc:
        print(f"loadlab compare: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        for line in comparing.table(result):
            print(line)
    if not args.no_write:
        page, _ = comparing.write(result, args.out or new.out_dir)
        if not args.json:
            print(f"compare: {page}")
    if args.junit:
        gating.write_junit(args.junit, [("loadlab compare", comparing.junit_cases(result))])
    return EXIT_REGRESSED if result.regressions else 0


def cmd_data(args: argparse.Namespace) -> int:
    argv = [sys.executable, "-m", "locust_tests.data"]
    if args.out is not None:
        args.out = args.out.absolute()  # the module runs in the checkout: --out is relative to where we are
    for flag in ("count", "seed", "out"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag}", str(getattr(args, flag))]
    return subprocess.call(argv, cwd=REPO_ROOT)


def cmd_cleanup(args: argparse.Namespace) -> int:
    if not args.token:
        print("loadlab cleanup: no admin token: pass --token or set LAB_ADMIN_TOKEN to the target's token",
              file=sys.stderr)
        return EXIT_USAGE
    from locust_tests.plugins.cleanup import CleanupError, delete_users
    from locust_tests.plugins.testdata import PREFIX

    prefix = args.prefix or PREFIX
    try:
        deleted = delete_users(args.host, prefix, args.token)
    except CleanupError as exc:
        print(f"loadlab cleanup: {exc}", file=sys.stderr)
        return 1
    print(f"deleted {deleted} users whose username starts with {prefix!r} from {args.host}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    if args.command == "analyze":
        return cmd_analyze(args)
    if args.command == "compare":
        return cmd_compare(args)
    if args.command == "data":
        return cmd_data(args)
    if args.command == "cleanup":
        return cmd_cleanup(args)
    try:
        lab = Lab(_lab_options(args, args.command, passthrough))
        return lab.execute()
    except gating.GateError as exc:
        print(f"loadlab {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LabError as exc:
        print(f"loadlab {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
