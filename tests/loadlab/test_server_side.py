"""The server side of your own API: `loadlab.instrument`, `gunicorn -c python:loadlab.gunicorn_conf`
and the sidecar, installed and run without Locust, gevent, matplotlib or Faker (issue 11, section 3).

Real gunicorn with two sync workers, a real sidecar, in processes where the lab extra's packages cannot
be imported (tests/loadlab/server_only.py), on a small app of a user's shape that is not the target.
"""

from __future__ import annotations

import ast
import glob
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prometheus_client.parser import text_string_to_metric_families

from loadlab.__main__ import LAB_PACKAGES
from loadlab.multiproc import MULTIPROC_PREFIX, memory_tmp_dir
from tests.helpers import PYTHON, REPO_ROOT, free_port, wait_for_http
from tests.loadlab import server_only

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

SERVER_ONLY = str(Path(__file__).resolve().parent / "server_only.py")
LAB_ONLY = {"locust", "gevent", "matplotlib", "faker"}
# What runs on the API's machine: the instrumentation, the gunicorn config and the sidecar, with
# the contract and the small libraries they stand on.
SERVER_FILES = [REPO_ROOT / "loadlab" / f for f in ("instrument.py", "gunicorn_conf.py", "multiproc.py", "stacks.py")] + \
    sorted((REPO_ROOT / "loadlab" / "contract").glob("*.py")) + sorted((REPO_ROOT / "monitoring" / "sidecar").glob("*.py"))
DISTRIBUTIONS = {"prometheus_client": "prometheus-client", "yaml": "PyYAML"}
FIRST_PARTY = {"loadlab", "monitoring"}
OPTIONAL = {"tomli"}  # the sidecar's TOML configs before Python 3.11; it says so when missing

MYAPI = '''
from flask import Flask

from loadlab.instrument import instrument

app = Flask("myapi")
instrument(app)


@app.get("/orders/<int:order_id>")
def order(order_id):
    return {"id": order_id}
'''


def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def test_a_plain_install_is_the_server_side_and_covers_its_imports():
    """`pip install .` installs the base dependencies: none of the lab's, and all the server side imports."""
    base, lab = names(pyproject()["dependencies"]), names(pyproject()["optional-dependencies"]["lab"])
    assert not base & (LAB_ONLY | lab), f"lab packages in the base dependencies: {sorted(base & (LAB_ONLY | lab))}"
    imported: set[str] = set()
    for path in SERVER_FILES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - FIRST_PARTY - OPTIONAL
    missing = {m for m in third_party if canonicalize_name(DISTRIBUTIONS.get(m, m)) not in base}
    assert not missing, f"imported on the server side but not in pyproject's dependencies: {sorted(missing)}"


def test_the_loadlab_command_knows_every_package_of_the_lab_extra():
    lab = names(pyproject()["optional-dependencies"]["lab"]) - {"py-spy"}  # a program, never imported
    assert {canonicalize_name(m) for m in LAB_PACKAGES} == {canonicalize_name(n) for n in lab}
    assert pyproject()["scripts"]["loadlab"] == "loadlab.__main__:main"
    assert set(server_only.BLOCKED) == LAB_PACKAGES  # the server-side tests block them all


def test_the_loadlab_command_without_the_lab_is_one_line_not_a_traceback(tmp_path):
    run = subprocess.run([PYTHON, SERVER_ONLY, "loadlab", "run", "login-step"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if not line.startswith("server_only: blocked import")]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert lines[0].startswith("loadlab: the lab needs the `lab` extra, not installed here (no module ")
    assert lines[0].endswith("in a checkout of this project run `make setup` or `pip install '.[lab]'`")


def test_the_blocker_really_blocks(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import locust\n")
    run = subprocess.run([PYTHON, SERVER_ONLY, "probe"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert run.returncode != 0 and "blocked import of locust" in run.stderr, run.stderr


def total(url: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def multiproc_dirs(arbiter_pid: int) -> list[str]:
    return glob.glob(os.path.join(memory_tmp_dir() or tempfile.gettempdir(), f"{MULTIPROC_PREFIX}{arbiter_pid}-*"))


def wait_for_workers(pid: int, count: int, exclude: set[int] = frozenset()) -> set[int]:  # type: ignore[assignment]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        workers = {p.pid for p in psutil.Process(pid).children()} - exclude
        if len(workers) >= count:
            return workers
        time.sleep(0.05)
    pytest.fail(f"gunicorn {pid} did not have {count} new workers within 20 s")


@pytest.mark.timeout(90)
def test_your_gunicorn_with_the_config_module_and_the_sidecar_run_without_the_lab_packages(spawn, tmp_path):
    (tmp_path / "myapi.py").write_text(MYAPI)
    port, metrics_port, sidecar_port = free_port(), free_port(), free_port()
    # Your own settings (-w, -b, --timeout) on the command line, the lab's config module beside them.
    gunicorn = spawn([PYTHON, SERVER_ONLY, "gunicorn", "-c", "python:loadlab.gunicorn_conf", "-w", "2",
                      "-b", f"127.0.0.1:{port}", "--timeout", "20", "myapi:app"], name="gunicorn", cwd=tmp_path,
                     env={"LOADLAB_METRICS_PORT": str(metrics_port)})
    api, merged = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    wait_for_http(f"{api}/orders/1", timeout=30, proc=gunicorn)
    wait_for_http(merged, timeout=30, proc=gunicorn)
    sidecar = spawn([PYTHON, SERVER_ONLY, "monitoring.sidecar", "--port", str(sidecar_port),
                     "--group", rf"target=server_only\.py gunicorn .*-b 127\.0\.0\.1:{port} "], name="sidecar")
    sidecar_url = f"http://127.0.0.1:{sidecar_port}/metrics"
    wait_for_http(sidecar_url, timeout=30, proc=sidecar)
    workers = wait_for_workers(gunicorn.pid, 2)
    [directory] = multiproc_dirs(gunicorn.pid)  # made by the config module, named after the arbiter

    before = total(merged, "http_requests_total")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: urllib.request.urlopen(f"{api}/orders/{i}", timeout=10).read(), range(150)))
    assert total(merged, "http_requests_total") == before + 150
    assert total(f"{api}/metrics", "http_requests_total", endpoint="/orders/<int:order_id>") == before + 150

    # A worker that dies is replaced (child_exit marks it dead); its requests stay in the totals.
    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for_workers(gunicorn.pid, 2, exclude={victim})
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: urllib.request.urlopen(f"{api}/orders/{i}", timeout=10).read(), range(20)))
    assert total(merged, "http_requests_total") == before + 170

    # The sidecar on the same machine finds arbiter + 2 workers by the command line.
    assert total(sidecar_url, "namedprocess_namegroup_num_procs", groupname="target") == 3
    for proc in (gunicorn, sidecar):
        assert "blocked import" not in proc.log(), proc.log()[-2000:]

    os.kill(gunicorn.pid, signal.SIGTERM)  # gunicorn's graceful stop: on_exit removes the directory
    assert gunicorn.wait(timeout=30) == 0, gunicorn.log()[-2000:]
    assert not os.path.exists(directory)


def test_a_bad_metrics_port_is_one_line_before_anything_starts(tmp_path):
    (tmp_path / "myapi.py").write_text(MYAPI)
    run = subprocess.run([PYTHON, "-m", "gunicorn", "-c", "python:loadlab.gunicorn_conf", "-b", f"127.0.0.1:{free_port()}",
                          "myapi:app"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "LOADLAB_METRICS_PORT": "91O1"})
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1] == ("LOADLAB_METRICS_PORT='91O1' is not a port number: "
                                                   "set it to a free port (1-65535) or unset it")


@pytest.mark.timeout(60)
def test_a_taken_metrics_port_stops_gunicorn_with_one_clear_line(spawn, tmp_path):
    (tmp_path / "myapi.py").write_text(MYAPI)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics_port = taken.getsockname()[1]
        gunicorn = spawn([PYTHON, "-m", "gunicorn", "-c", "python:loadlab.gunicorn_conf", "-b",
                          f"127.0.0.1:{free_port()}", "myapi:app"], name="gunicorn", cwd=tmp_path,
                         env={"LOADLAB_METRICS_PORT": str(metrics_port)})
        assert gunicorn.wait(timeout=30) == 2
    assert (f"LOADLAB_METRICS_PORT: port {metrics_port} on 127.0.0.1 is already in use: stop the process "
            "listening there or choose another LOADLAB_METRICS_PORT") in gunicorn.log()
    assert not multiproc_dirs(gunicorn.pid)  # removed on the way out
