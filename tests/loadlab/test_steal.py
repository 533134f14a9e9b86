"""Steal time on a virtual machine: the hypervisor runs other guests on the host's CPUs, and the
kernel does not count that time as a process's CPU (only in the run delay of threads queued behind a
stolen vCPU). A worker that is always
runnable then reads ~0.84 of a core at 16% steal: judged against its whole core it looks idle
enough for a concurrency limit. The CPU judgement is made against the cores the hypervisor left
(`loadlab.contract.cores.cpu_limited`), per step, per role, per machine."""

from __future__ import annotations

import dataclasses
import time

import psutil
import pytest

from loadlab import generators, targets
from loadlab.analysis import analyze_steps
from loadlab.contract.cores import cpu_limited, obtainable_cores, steal_share
from loadlab.contract.thresholds import DEFAULT_THRESHOLDS
from loadlab.history import Samples, Scrape, read_samples
from loadlab.sampler import Sampler
from loadlab.steps import _resource_fields, resource_series
from tests.helpers import PYTHON, free_port, wait_for_http
from tests.loadlab.synthetic import model_steps

USERS = list(range(2, 24, 2))
STEAL = 0.16  # measured on this 2-core VM over 5 s: 162 of ~1004 jiffies


def verdict_of(steps) -> dict:
    return analyze_steps(steps, DEFAULT_THRESHOLDS).to_dict()


def burning_worker_on_a_vm(steal: float | None, wait: float = 0.0, got: float = 0.83) -> list:
    """One sync worker burning 50 ms of CPU per request that gets only `got` of its one core (the
    rest stolen): capacity got/S. The host is not saturated (1.3 of 2 cores busy), its run delay
    shows no wait beyond `wait`: only the steal explains the flat throughput."""
    steps = model_steps(USERS, workers=1, service_s=0.05 / got, think_s=0.5)
    return [dataclasses.replace(s, target_cpu_cores=min(got - wait, s.rps * 0.05), target_cores_available=1.0,
                                target_cpu_wait_cores=wait, generator_cpu_cores=0.1, generator_cores_available=1.0,
                                host_cpu_busy_cores=1.3, host_cores=2, host_cpu_steal_share=steal,
                                generator_host_cpu_steal_share=steal) for s in steps]


def test_the_contract_model_of_what_a_group_can_get():
    assert steal_share(0.32, 2) == pytest.approx(0.16) and steal_share(None, 2) is None and steal_share(0.1, None) is None
    assert steal_share(-0.01, 2) == 0.0 and steal_share(3.0, 2) == 1.0  # counter noise, clamped
    assert obtainable_cores(1.0, 0.16) == pytest.approx(0.84) and obtainable_cores(2.0, None) == 2.0
    assert cpu_limited(0.83, 0.0, 1.0, 0.16, 0.9) and not cpu_limited(0.83, 0.0, 1.0, 0.0, 0.9)
    assert not cpu_limited(None, 0.5, 1.0, 0.16, 0.9) and not cpu_limited(0.9, 0.0, None, 0.0, 0.9)


def test_a_cpu_bound_worker_that_the_hypervisor_starves_is_cpu_limited_not_concurrency():
    without = verdict_of(burning_worker_on_a_vm(steal=None))
    assert without["limiting_resource"] == "concurrency", without["limiting_resource_basis"]  # the wrong verdict
    verdict = verdict_of(burning_worker_on_a_vm(steal=STEAL))
    basis = verdict["limiting_resource_basis"]
    assert verdict["limiting_resource"] == "target_cpu", basis
    assert "the target used 0.83 of its 1 usable cores, of which the hypervisor took 16% (steal)" in basis, basis
    assert "0.84 it could get" in basis, basis
    assert any(s["signal"] == "target_cpu" for s in verdict["signals"])
    assert {s["host_cpu_steal_share"] for s in verdict["steps"]} == {STEAL}  # in verdict.json's steps


def test_used_plus_run_delay_is_judged_against_what_the_hypervisor_left():
    # 0.73 used + 0.10 waited = 0.83: under 90% of 1 core, over 90% of the 0.84 left.
    assert verdict_of(burning_worker_on_a_vm(steal=0.0, wait=0.1))["limiting_resource"] == "concurrency"
    verdict = verdict_of(burning_worker_on_a_vm(steal=STEAL, wait=0.1))
    basis = verdict["limiting_resource_basis"]
    assert verdict["limiting_resource"] == "target_cpu", basis
    assert "waited for a CPU another 0.10" in basis and "hypervisor took 16% (steal)" in basis, basis


def test_a_sleeping_pool_queued_behind_stolen_cpus_is_still_a_concurrency_limit():
    # A CI run at 34 % steal: 16 sleeping workers (S = 160 ms) used 0.2-0.27 cores, 2.9 ms of CPU a
    # login, and their run delay read 1.4-1.6 cores' worth: used plus waited passed the line of the
    # 1.33 cores the hypervisor left, and the verdict said target_cpu. Its logins are not CPU work.
    steps = [dataclasses.replace(s, target_cpu_cores=0.27, target_cpu_wait_cores=1.58, target_cores_available=2.0,
                                 generator_cpu_cores=0.2, generator_cores_available=1.0, host_cpu_busy_cores=1.1,
                                 host_cores=2, host_cpu_steal_share=0.34, generator_host_cpu_steal_share=0.34)
             for s in model_steps([10, 20, 40, 80, 108, 112, 121, 125, 160], workers=16, service_s=0.16, think_s=1.0)]
    verdict = verdict_of(steps)
    assert verdict["limiting_resource"] == "concurrency", verdict["limiting_resource_basis"]
    assert not any(s["signal"] == "target_cpu" for s in verdict["signals"])
    # A worker whose logins are CPU work, waiting as long, is CPU-bound (the test above, with wait).


def test_little_steal_does_not_make_an_idle_target_cpu_limited():
    steps = [dataclasses.replace(s, target_cpu_cores=0.3) for s in burning_worker_on_a_vm(steal=STEAL)]
    assert verdict_of(steps)["limiting_resource"] == "concurrency"


@pytest.mark.parametrize("target, generator, wait, busy", [
    (0.3, 0.2, None, None), (1.9, 0.2, None, None), (0.5, 0.95, None, None), (1.0, 0.2, 0.9, None),
    (0.6, 0.05, None, 1.95)])
def test_zero_steal_changes_nothing(target, generator, wait, busy):
    def steps(steal):
        return [dataclasses.replace(s, target_cpu_cores=target, target_cores_available=2.0, generator_cpu_cores=generator,
                                    generator_cores_available=1.0, target_cpu_wait_cores=wait,
                                    host_cpu_busy_cores=busy, host_cores=2, host_cpu_steal_share=steal,
                                    generator_host_cpu_steal_share=steal)
                for s in model_steps(list(range(4, 48, 4)))]
    unknown, zero = verdict_of(steps(None)), verdict_of(steps(0.0))
    for key in ("limiting_resource", "limiting_resource_basis", "signals", "knee", "capacity_rps", "measurement_valid"):
        assert zero[key] == unknown[key], key


def test_a_generator_the_hypervisor_starves_invalidates_the_measurement():
    def steps(steal):
        return [dataclasses.replace(s, target_cpu_cores=0.3, target_cores_available=2.0, generator_cpu_cores=0.8,
                                    generator_cores_available=1.0, host_cores=2, generator_host_cpu_steal_share=steal)
                for s in model_steps(list(range(4, 48, 4)))]
    assert verdict_of(steps(0.0))["measurement_valid"] is True
    verdict = verdict_of(steps(0.2))
    assert verdict["limiting_resource"] == "generator_cpu" and verdict["measurement_valid"] is False
    assert "usable cores, of which the hypervisor took 20% (steal)" in verdict["limiting_resource_basis"]


def test_a_load_machine_and_an_api_machine_are_judged_by_their_own_steal():
    steps = model_steps(list(range(4, 48, 4)), target_cpu_cores=0.5, target_cores_available=2.0,
                        generator_cpu_cores=1.0, generator_cores_available=2.0)
    for step in steps:
        step.generator_machines = [{"instance": generators.MASTER, "cpu_cores": 0.1, "cores_available": 1.0,
                                    "host_cpu_steal_share": 0.0},
                                   {"instance": "http://10.0.0.7:9256/metrics", "cpu_cores": 0.8, "cores_available": 1.0,
                                    "host_cpu_steal_share": 0.15}]
    verdict = verdict_of(steps)
    assert verdict["limiting_resource"] == "generator_cpu", verdict["limiting_resource_basis"]
    assert "10.0.0.7" in verdict["limiting_resource_basis"] and "15% (steal)" in verdict["limiting_resource_basis"]
    for step in steps:  # the same figures on the API's side, the load machines idle
        step.generator_machines = None
        step.generator_cpu_cores = 0.1
        step.target_machines = [{"instance": "http://10.0.0.5:9256/metrics", "cpu_cores": 0.3, "cores_available": 1.0,
                                 "host_cpu_steal_share": 0.0},
                                {"instance": "http://10.0.0.6:9256/metrics", "cpu_cores": 0.8, "cores_available": 1.0,
                                 "host_cpu_steal_share": 0.15}]
    basis = verdict_of(steps)["limiting_resource_basis"]
    assert "target machine http://10.0.0.6:9256/metrics used 0.80 of its 1 usable cores, of which the hypervisor " \
           "took 15% (steal)" in basis, basis
    for step in steps:
        step.target_machines[1]["host_cpu_steal_share"] = 0.0
    assert verdict_of(steps)["limiting_resource"] == "concurrency"


def _host(t: float, cores: int, steal_per_core: float | None) -> list:
    """node_cpu_seconds_total of `cores` CPUs at time t, each stealing `steal_per_core` of its time."""
    out = []
    for c in range(cores):
        out += [("node_cpu_seconds_total", {"cpu": str(c), "mode": "idle"}, t * 0.2),
                ("node_cpu_seconds_total", {"cpu": str(c), "mode": "user"}, t * (0.8 - (steal_per_core or 0.0)))]
        if steal_per_core is not None:
            out.append(("node_cpu_seconds_total", {"cpu": str(c), "mode": "steal"}, t * steal_per_core))
    return out


def test_steps_read_the_share_of_each_host_and_of_each_machine_of_a_fleet():
    local = [Scrape(float(t), "sidecar", _host(t, 2, 0.1)) for t in range(12)]
    remote = [Scrape(float(t), "target_sidecar", _host(t, 4, 0.25)) for t in range(12)]
    same = _resource_fields(resource_series(Samples({"sidecar": local}), {}), 2.0, 10.0, {})
    assert same["host_cpu_steal_share"] == pytest.approx(0.1) and same["generator_host_cpu_steal_share"] == pytest.approx(0.1)
    two = _resource_fields(resource_series(Samples({"sidecar": local, "target_sidecar": remote}),
                                           {"target_sidecar": "http://10.0.0.5:9256/metrics"}), 2.0, 10.0, {})
    assert two["host_cpu_steal_share"] == pytest.approx(0.25) and two["generator_host_cpu_steal_share"] == pytest.approx(0.1)
    no_steal = [Scrape(float(t), "sidecar", _host(t, 2, None)) for t in range(12)]  # a kernel without the mode
    assert _resource_fields(resource_series(Samples({"sidecar": no_steal}), {}), 2.0, 10.0, {})["host_cpu_steal_share"] is None
    # A fleet: each machine's share, and the step's the machines' weighted by their usable cores.
    sources = targets.sidecar_sources(["http://10.0.0.5:9256/metrics", "http://10.0.0.6:9256/metrics"])
    shares = dict(zip(sources, (0.0, 0.2)))
    samples = Samples({s: [Scrape(float(t), s, _host(t, 2, shares[s]) + [
        ("namedprocess_namegroup_cpu_seconds_total", {"groupname": "target"}, 0.5 * t),
        ("namedprocess_namegroup_num_procs", {"groupname": "target"}, 2.0)]) for t in range(21)] for s in sources})
    steps = model_steps([4, 8], step_s=10.0, t0=0.0)
    targets.apply(steps, samples, {"target_sidecars": sources})
    for step in steps:
        assert [m["host_cpu_steal_share"] for m in step.target_machines] == pytest.approx([0.0, 0.2])
        assert step.host_cpu_steal_share == pytest.approx(0.1)


def test_the_steps_read_a_real_sidecars_steal_series(spawn, tmp_path):
    """The real sidecar's node_cpu_seconds_total{mode="steal"}, sampled by the lab's sampler, read
    by the steps: a share in [0, 1] that agrees with the kernel's own counter over the same window."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = spawn([PYTHON, "-m", "monitoring.sidecar", "--port", str(port)], name="sidecar")
    wait_for_http(url, timeout=20, proc=proc)
    sampler = Sampler(tmp_path / "samples.jsonl", {"sidecar": url})
    try:
        before = psutil.cpu_times().steal
        sampler.sample_once()
        for _ in range(3):
            time.sleep(1.0)
            sampler.sample_once()
        after = psutil.cpu_times().steal
    finally:
        sampler.stop()
    samples = read_samples(tmp_path / "samples.jsonl")
    scrapes = samples.scrapes("sidecar")
    assert len(scrapes) == 4
    start, end = scrapes[0].t, scrapes[-1].t
    fields = _resource_fields(resource_series(samples, {}), start, end, {})
    share = fields["host_cpu_steal_share"]
    assert isinstance(share, float) and 0.0 <= share <= 1.0, fields
    kernel = (after - before) / (end - start) / psutil.cpu_count()
    print(f"steal share read by the steps {share:.3f}, by psutil around it {kernel:.3f}")
    assert share == pytest.approx(kernel, abs=0.05)
