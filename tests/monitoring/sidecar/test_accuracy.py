"""The numbers are right: CPU and resident memory of known workloads, read through real scrapes."""

from __future__ import annotations

import os
import signal

import psutil

from .conftest import group_cpu, value, wait_until


def test_cpu_seconds_grow_by_the_cpu_time_the_children_really_used(sidecar, workload, tmp_path):
    children, burn = 2, 1.5
    root = workload("burn", "--children", str(children), "--cpu-seconds", str(burn), "--dir", str(tmp_path))
    car = sidecar("--group-pid", f"burners={root.pid}")
    wait_until(lambda: car.procs("burners") == children + 1, 15, "the root and its children to be tracked")

    before = group_cpu(car.scrape(), "burners")
    (tmp_path / "go").write_text("")
    done = [tmp_path / f"done-{i}" for i in range(children)]
    wait_until(lambda: all(path.exists() for path in done), 60, "the children to finish burning")
    after = group_cpu(car.scrape(), "burners")

    # What the children measured themselves (os.times around the burn), not wall clock:
    # the machine is shared, so wall time says nothing about CPU used.
    used = sum(float(path.read_text()) for path in done)
    assert used >= children * burn * 0.99
    grew = after - before
    assert abs(grew - used) <= 0.10 * used, f"counter grew {grew:.2f}s, children used {used:.2f}s"


def test_cpu_of_exited_members_is_kept_and_children_are_not_counted_twice(sidecar, workload, tmp_path):
    children, burn = 2, 0.6
    root = workload("burn", "--children", str(children), "--cpu-seconds", str(burn), "--dir", str(tmp_path))
    car = sidecar("--group-pid", f"burners={root.pid}")
    wait_until(lambda: car.procs("burners") == children + 1, 15, "the group to be tracked")
    (tmp_path / "go").write_text("")
    done = [tmp_path / f"done-{i}" for i in range(children)]
    wait_until(lambda: all(path.exists() for path in done), 60, "the children to finish burning")
    burned = group_cpu(car.scrape(), "burners")
    assert burned >= children * burn * 0.9

    # Kill the children; the root reaps them, so their CPU moves into its children_* times.
    kids = psutil.Process(root.pid).children()
    for kid in kids:
        os.kill(kid.pid, signal.SIGKILL)
    wait_until(lambda: car.procs("burners") == 1, 15, "the killed children to leave the group")
    after_exit = group_cpu(car.scrape(), "burners")
    assert after_exit >= burned  # exited CPU is kept...
    root_times = psutil.Process(root.pid).cpu_times()
    assert root_times.children_user + root_times.children_system >= children * burn * 0.9  # really reaped
    assert after_exit <= burned + 0.2  # ...and not added a second time through the parent


def test_resident_memory_of_a_known_allocation(sidecar, workload, tmp_path):
    mib = 200
    holder = workload("hold", "--mib", str(mib), "--dir", str(tmp_path))
    wait_until(lambda: (tmp_path / "ready").exists(), 30, "the 200 MiB allocation")
    baseline = int((tmp_path / "baseline").read_text())  # the interpreter's own RSS before allocating
    car = sidecar("--group-pid", f"holder={holder.pid}")
    samples = car.scrape()
    expected = baseline + mib * 1024 * 1024
    resident = value(samples, "namedprocess_namegroup_memory_bytes", groupname="holder", memtype="resident")
    assert abs(resident - expected) <= 0.10 * expected, f"resident {resident/2**20:.0f} MiB, expected {expected/2**20:.0f} MiB"
    virtual = value(samples, "namedprocess_namegroup_memory_bytes", groupname="holder", memtype="virtual")
    assert virtual >= resident
    assert value(samples, "namedprocess_namegroup_num_threads", groupname="holder") >= 1
    assert value(samples, "namedprocess_namegroup_open_filedesc", groupname="holder") >= 3  # stdin/out/err
    started = value(samples, "namedprocess_namegroup_oldest_start_time_seconds", groupname="holder")
    assert abs(started - psutil.Process(holder.pid).create_time()) < 0.05


def test_host_metrics_match_the_kernel(sidecar):
    car = sidecar("--group", "none=^no-such-program$")
    samples = car.scrape()
    cpus = {labels for (name, labels) in samples if name == "node_cpu_seconds_total"}
    modes = {dict(labels)["mode"] for labels in cpus}
    assert {"user", "system", "idle", "iowait"} <= modes
    assert len({dict(labels)["cpu"] for labels in cpus}) == psutil.cpu_count()
    meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines())
    total_kib = int(meminfo["MemTotal"].split()[0])
    assert value(samples, "node_memory_MemTotal_bytes") == total_kib * 1024
    assert 0 < value(samples, "node_memory_MemAvailable_bytes") <= total_kib * 1024
    assert value(samples, "node_network_receive_bytes_total", device="lo") > 0  # we just scraped over lo
    assert value(samples, "node_network_transmit_bytes_total", device="lo") > 0
    assert value(samples, "node_load1") >= 0
