"""Issue 16's one proof on one machine: load machines the lab waits for, and an API served by a fleet,
in one run with one verdict.

Five simulated machines, each a loopback address: two API machines behind a small round-robin load
balancer (127.0.0.4 the fast one, 127.0.0.5 the slower one, three times the CPU per login), each with
its own sidecar; two load machines (127.0.0.2, 127.0.0.3), each running the `locust ... --worker`
command the lab printed, as a user would there, with its own sidecar; and the lab's machine, which
runs `loadlab run --remote-workers 2 --master-bind 127.0.0.6` with every sidecar and metrics endpoint:
its Locust master listens on its own address, as on a LAN (its other servers and the balancer stay on
127.0.0.1), so the workers reach it only through the `--master-host 127.0.0.6` the lab printed.
What this does not prove: separate kernels, clocks and networks (every "machine" shares this host's
2 cores).
"""

from __future__ import annotations

import csv
import json

import pytest

from loadlab.contract.scenarios import DEFAULT_STEP_TIME_S
from loadlab.history import read_samples, scrape_value, series
from tests.loadlab.conftest import (
    LOADLAB,
    api_machine,
    assert_all_gone,
    lab_pids,
    load_balancer,
    run_remote_workers,
    start_machine_sidecar,
    step_table,
)
from tests.loadlab.served import FLEET_TOLERANCE, fleet_truth
from tests.loadlab.test_fleet import ENV, FAST_MS, SLOW_MS

LOAD_MACHINES = ("127.0.0.2", "127.0.0.3")
FAST_API, SLOW_API = "127.0.0.4", "127.0.0.5"
LAB_MACHINE = "127.0.0.6"  # where the lab's Locust master listens for the load machines (--master-bind)
# The truth is the fleet's throughput once saturated (its plateau). The default 500 ms SLO breaks
# at the knee on a busy host (a p95 of 725 ms at 6 users was seen), and the capacity is then the
# last step under it, below the plateau; 5 s holds over the whole hunt (12 users: R = N/X - Z, about 1 s).
SLO_P95_MS = 5000
# test_fleet.py's hunt with 8 s steps: with five "machines" and a sampler that falls behind on a busy
# host, 5 s steps left holds of 2 s and a handful of logins on the slower machine. Time-scaled as a
# user shortens a hunt: --time-scale multiplies the step hunt's hold (150 s by default) and a preset's
# duration, nothing else (not the think time, not the SLO), so 8/150 gives the same 8 s steps.
STEP_S = 8.0
TIME_SCALE = STEP_S / DEFAULT_STEP_TIME_S
LOCUST = ["--step-users", "2", "--max-users", "12", "--no-stop-on-break"]


@pytest.mark.serial  # capacity and CPU per machine against a known truth: run alone
@pytest.mark.timeout(240)
def test_remote_workers_against_a_fleet_give_one_verdict_naming_the_slower_machine(spawn, ground_truth, tmp_path):
    fast, fast_sidecar, fast_metrics = api_machine(spawn, ground_truth, FAST_API, FAST_MS)
    slow, slow_sidecar, slow_metrics = api_machine(spawn, ground_truth, SLOW_API, SLOW_MS)
    host = load_balancer(spawn, [fast, slow], max_seconds=240)
    pid_files = [tmp_path / f"worker-{i}.pid" for i in (1, 2)]
    loaders = [start_machine_sidecar(spawn, address, pid_file) for address, pid_file in zip(LOAD_MACHINES, pid_files)]

    sidecars = [arg for url in loaders for arg in ("--generator-sidecar", url)]
    sidecars += ["--target-sidecar", fast_sidecar, "--target-sidecar", slow_sidecar,
                 "--target-metrics", fast_metrics, "--target-metrics", slow_metrics]
    lab = spawn([*LOADLAB, "run", "login-step", "--host", host, "--out", str(tmp_path / "reports"),
                 "--time-scale", str(TIME_SCALE), "--remote-workers", "2", "--master-bind", LAB_MACHINE,
                 "--workers-timeout", "60", *sidecars, "--target-workers", "1", "--prometheus", "off",
                 "--slo-p95-ms", str(SLO_P95_MS), "--", *LOCUST], name="loadlab", env={**ENV, "PYTHONUNBUFFERED": "1"})
    # The workers start from the printed command; spawn stops them by PID at the end.
    command, workers, run_dir = run_remote_workers(spawn, lab, pid_files)
    output = lab.log()
    assert f" --worker --master-host {LAB_MACHINE} --master-port " in command, command
    assert f"for 2 remote workers at {LAB_MACHINE}:" in output, output
    verdict = json.loads((run_dir / "verdict.json").read_text())
    detail = f"{step_table(verdict)}\n{output[-3000:]}"
    assert verdict["complete"] is True and verdict["measurement_valid"] is True, detail
    for worker in workers:
        assert worker.wait(timeout=30) == 0, worker.log()  # told to quit by the master at the end
    assert_all_gone(lab_pids(run_dir))

    # The exporter on the master counted every request of both workers: its totals equal the CSV.
    samples = read_samples(run_dir / "samples.jsonl")
    with open(run_dir / "locust_stats.csv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["Name"] == "Aggregated")
    last = samples.scrapes("locust")[-1]
    assert int(row["Request Count"]) > 0
    assert scrape_value(last, "locust_requests_total") == int(row["Request Count"]), detail
    assert (scrape_value(last, "locust_request_failures_total") or 0) == int(row["Failure Count"]), detail

    # Every step has each load machine's CPU and each API machine's, and none was cut from the CSV's
    # rows after Locust's test had stopped (the master's stale user count while its workers quit).
    running = series(samples.scrapes("locust"), "locust_running")
    began = next(t for t, value in running if value == 1)
    stopped_at = next(t for t, value in running if value == 0 and t > began)
    for s in verdict["steps"]:
        assert s["end"] < stopped_at and s["requests"] > 0, detail
        assert set(loaders) <= {m["instance"] for m in s["generator_machines"]}, detail
        assert {m["instance"] for m in s["target_machines"]} == {fast_sidecar, slow_sidecar}, detail

    # A bound that needs no measurement: round robin gives each machine half the logins, and the slower
    # one's single sync worker burns SLOW_MS of CPU on each, at most one core: the fleet serves at most
    # 2 / 0.120 s = 16.7 req/s. It holds as an upper bound only: on this shared VM the slower machine
    # gets less than a core (steal, five "machines" on 2 cores; measured: 0.4-0.9 of one), so the
    # capacity is often well below it (65-73 % of it in two runs), which the histogram truth below
    # accounts for. 5 % over it allows for counting: a step's rate counts the logins that end in its
    # hold (4-5 s: at most ~35-40 per machine at the bound), and one per machine may have begun before it.
    bound = 2 / (SLOW_MS / 1000)
    print(f"capacity {verdict['capacity_rps']:.1f} req/s: {verdict['capacity_rps'] / bound:.0%} of the CPU bound "
          f"{bound:.1f} req/s")
    assert 0 < verdict["capacity_rps"] <= bound * 1.05, f"bound {bound:.1f} req/s\n{detail}"

    # The verdict's capacity is the fleet's truth: twice the slower machine's (tests/loadlab/served.py).
    truth = fleet_truth(samples, verdict, "target_metrics_2")
    assert truth is not None, detail
    error = verdict["capacity_rps"] / truth - 1
    print(f"capacity {verdict['capacity_rps']:.1f} req/s, truth {truth:.1f} req/s ({error:+.1%}); "
          f"limiting: {verdict['limiting_resource']}: {verdict['limiting_resource_basis']}")
    assert verdict["capacity_rps"] == pytest.approx(truth, rel=FLEET_TOLERANCE), f"truth {truth:.1f} req/s\n{detail}"
    # The limiting resource is the slower API machine's CPU, and the verdict names it, not the fast one.
    assert verdict["limiting_resource"] == "target_cpu", detail
    assert f"target machine {slow_sidecar} used" in verdict["limiting_resource_basis"], detail
    assert "imbalance" in verdict["limiting_resource_basis"], detail
    assert fast_sidecar not in verdict["limiting_resource_basis"], detail
