"""`/profile?seconds=N`: off unless --allow-profiling; with it, real py-spy stacks of the group."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request

import psutil
import pytest

from loadlab import stacks
from monitoring.sidecar.profile import ProfileEndpoint, ProfileError

from .conftest import wait_until


def get(url: str, timeout: float = 60) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def profile_url(car, query: str) -> str:
    return car.url.rsplit("/", 1)[0] + "/profile?" + query


def test_profile_is_off_unless_allowed(sidecar, workload):
    member = workload("tree", "--children", "1")
    car = sidecar("--group-pid", f"target={member.pid}")
    status, body = get(profile_url(car, "seconds=1"))
    assert status == 403 and "--allow-profiling" in body["error"]
    assert car.procs("target") >= 1  # /metrics is served as before


def test_profile_samples_the_group_on_cpu_and_idle(sidecar, workload, tmp_path):
    # One child burns CPU in burn_cpu; the parent sleeps in idle_forever.
    member = workload("burn", "--children", "1", "--cpu-seconds", "60", "--dir", str(tmp_path))
    car = sidecar("--group-pid", f"target={member.pid}", "--allow-profiling")
    wait_until(lambda: car.procs("target") == 2, 15, "the parent and its child")
    (tmp_path / "go").write_text("")
    status, body = get(profile_url(car, "seconds=2&rate=50"))
    assert status == 200 and body["rate"] == 50, body
    children = [c.pid for c in psutil.Process(member.pid).children()]
    assert body["group"] == "target" and body["pids"] == sorted([member.pid, *children]) and body["seconds"] == 2
    cpu_leaves = [line.rsplit(" ", 1)[0].split(";")[-1] for line in body["cpu"].splitlines()]
    all_text = body["all"]
    assert cpu_leaves and all(leaf.startswith("burn_cpu (") for leaf in cpu_leaves), body["cpu"]
    assert "idle_forever" in all_text and "idle_forever" not in body["cpu"]  # idle only with --idle
    assert ':"' not in all_text + body["cpu"]  # no command line in any stack
    cpu_samples = sum(int(line.rsplit(" ", 1)[1]) for line in body["cpu"].splitlines())
    assert cpu_samples >= 0.5 * 2 * body["rate"], body["cpu"]  # one busy thread for 2 s (py-spy starts late)


def test_profile_refuses_bad_input_and_a_second_recording(sidecar, workload):
    member = workload("tree", "--children", "1")
    car = sidecar("--group-pid", f"target={member.pid}", "--allow-profiling")
    for query in ("seconds=0", "seconds=abc", "", "seconds=100000"):
        status, body = get(profile_url(car, query))
        assert status == 400 and "seconds=" in body["error"], (query, body)
    for query in ("seconds=1&rate=0", "seconds=1&rate=abc", "seconds=1&rate=5000"):
        status, body = get(profile_url(car, query))
        assert status == 400 and "rate=" in body["error"], (query, body)
    status, body = get(profile_url(car, "seconds=1&group=nope"))
    assert status == 404 and "target" in body["error"]
    first: dict = {}
    thread = threading.Thread(target=lambda: first.update(zip(("status", "body"), get(profile_url(car, "seconds=3")))))
    thread.start()
    try:
        time.sleep(1)  # the first takes 3 s and more; its request is in by now
        status, body = get(profile_url(car, "seconds=1"))
        assert status == 409 and "already" in body["error"]
    finally:
        thread.join(timeout=60)
    assert first["status"] == 200, first


def test_without_py_spy_profile_is_503_saying_once_how_to_install_it(monkeypatch):
    """py-spy is optional on a server (the `profile` extra): /profile says what to install, once for the group."""
    monkeypatch.setattr(stacks, "pyspy_binary", lambda: None)
    endpoint = ProfileEndpoint(lambda environ, start_response: [], [], allowed=True)
    with pytest.raises(ProfileError) as error:
        endpoint.record("target", [os.getpid(), os.getppid()], 1, 100)
    assert error.value.status == "503 Service Unavailable"
    assert str(error.value) == "py-spy is not installed: pip install py-spy (in a checkout of this project: make setup)"
