"""`gunicorn -c python:loadlab.gunicorn_conf` with your own gunicorn settings, and the one
implementation of its hooks (loadlab.multiproc.GunicornHooks) that the bundled target runs too.

Real gunicorn with two sync workers: your config file's settings and hooks (named by
LOADLAB_GUNICORN_CONFIG, or ./gunicorn.conf.py), GUNICORN_CMD_ARGS and the command line apply, and
our hooks still run (exact totals, mark_process_dead, the directory removed at exit).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from prometheus_client import values

from loadlab import multiproc
from tests.helpers import PYTHON, free_port, wait_for_http
from tests.loadlab.test_server_side import multiproc_dirs, total, wait_for_workers

# Your API: instrumented, with a gauge of its own that each worker sets to 1 (livesum: the sum over
# live processes, so a dead worker not marked with mark_process_dead would still count).
MYAPI = '''
import os

from flask import Flask
from prometheus_client import Gauge

from loadlab.instrument import instrument

app = Flask("myapi")
instrument(app)
Gauge("myapi_workers", "workers alive", multiprocess_mode="livesum").set(1)


@app.get("/orders/<int:order_id>")
def order(order_id):
    return {"id": order_id, "pid": os.getpid()}
'''

# Your gunicorn config, with hooks of its own: each leaves a line in $MARKS.
MYCONF = '''
import os

workers = {workers}
timeout = 20


def mark(line):
    with open(os.environ["MARKS"], "a") as marks:
        marks.write(line + "\\n")


def post_fork(server, worker):
    mark(f"post_fork {{os.getpid()}}")


def child_exit(server, worker):
    mark(f"child_exit {{worker.pid}}")


def on_exit(server):
    mark(f"on_exit directory_still_there={{os.path.isdir(os.environ['PROMETHEUS_MULTIPROC_DIR'])}}")
'''


def marks(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def listening_ports(pid: int) -> set[int]:
    return {c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}


@pytest.mark.timeout(90)
def test_your_config_files_settings_and_hooks_run_and_ours_still_do(spawn, tmp_path):
    (tmp_path / "myapi.py").write_text(MYAPI)
    (tmp_path / "myconf.py").write_text(MYCONF.format(workers=2))
    port, metrics_port, marks_file = free_port(), free_port(), tmp_path / "marks"
    # No -w: the 2 workers come from your config.
    gunicorn = spawn([PYTHON, "-m", "gunicorn", "-c", "python:loadlab.gunicorn_conf", "-b", f"127.0.0.1:{port}",
                      "myapi:app"], name="gunicorn", cwd=tmp_path,
                     env={"LOADLAB_GUNICORN_CONFIG": str(tmp_path / "myconf.py"), "MARKS": str(marks_file),
                          "LOADLAB_METRICS_PORT": str(metrics_port)})
    api, merged = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    wait_for_http(f"{api}/orders/1", timeout=30, proc=gunicorn)
    wait_for_http(merged, timeout=30, proc=gunicorn)
    workers = wait_for_workers(gunicorn.pid, 2)
    assert len(psutil.Process(gunicorn.pid).children()) == 2
    [directory] = multiproc_dirs(gunicorn.pid)

    # Yours ran in each worker; ours too (each worker closed its copy of the metrics port).
    assert sorted(marks(marks_file)) == sorted(f"post_fork {pid}" for pid in workers)
    assert metrics_port in listening_ports(gunicorn.pid)
    assert not any(metrics_port in listening_ports(pid) for pid in workers)

    before = total(merged, "http_requests_total")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: json.load(urllib.request.urlopen(f"{api}/orders/{i}", timeout=10)), range(150)))
    assert {answer["pid"] for answer in answers} == workers
    assert total(merged, "http_requests_total") == before + 150
    assert total(merged, "myapi_workers") == 2

    # A killed worker: your child_exit ran, and ours (mark_process_dead: its gauge no longer counts
    # once its replacement has loaded the app).
    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)
    [replacement] = wait_for_workers(gunicorn.pid, 2, exclude={victim}) - workers
    deadline = time.monotonic() + 20
    while not glob.glob(os.path.join(directory, f"gauge_livesum_{replacement}.db")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"child_exit {victim}" in marks(marks_file)
    assert total(merged, "myapi_workers") == 2  # 3 if the victim's gauge were still counted
    assert total(merged, "http_requests_total") == before + 150  # its requests stay in the totals

    os.kill(gunicorn.pid, signal.SIGTERM)
    assert gunicorn.wait(timeout=30) == 0, gunicorn.log()[-2000:]
    assert "on_exit directory_still_there=True" in marks(marks_file)  # yours first, then ours removes it
    assert not os.path.exists(directory)


@pytest.mark.timeout(60)
def test_gunicorn_conf_py_is_read_and_gunicorn_cmd_args_and_the_command_line_beat_it(spawn, tmp_path):
    """./gunicorn.conf.py, which gunicorn reads when -c is not given, is read with -c python:loadlab.gunicorn_conf
    too; GUNICORN_CMD_ARGS (-w 2) beats its `workers = 1`, and -b on the command line applies."""
    (tmp_path / "myapi.py").write_text(MYAPI)
    (tmp_path / "gunicorn.conf.py").write_text(MYCONF.format(workers=1))
    port, marks_file = free_port(), tmp_path / "marks"
    gunicorn = spawn([PYTHON, "-m", "gunicorn", "-c", "python:loadlab.gunicorn_conf", "-b", f"127.0.0.1:{port}",
                      "myapi:app"], name="gunicorn", cwd=tmp_path,
                     env={"GUNICORN_CMD_ARGS": "-w 2 --graceful-timeout 5", "MARKS": str(marks_file)})
    wait_for_http(f"http://127.0.0.1:{port}/orders/1", timeout=30, proc=gunicorn)
    workers = wait_for_workers(gunicorn.pid, 2)
    assert sorted(marks(marks_file)) == sorted(f"post_fork {pid}" for pid in workers)
    [directory] = multiproc_dirs(gunicorn.pid)
    os.kill(gunicorn.pid, signal.SIGTERM)
    assert gunicorn.wait(timeout=30) == 0, gunicorn.log()[-2000:]
    assert not os.path.exists(directory)


@pytest.mark.parametrize("location, expected", [
    ("nowhere.py", "LOADLAB_GUNICORN_CONFIG='nowhere.py': no such file; name your gunicorn config as a file path "
                   "or python:MODULE"),
    ("python:nowhere", "LOADLAB_GUNICORN_CONFIG='python:nowhere': no module 'nowhere' on the path; "
                       "name your gunicorn config as python:MODULE or a file path"),
])
def test_a_config_that_is_not_there_is_one_line_and_leaves_no_directory(tmp_path, location, expected):
    (tmp_path / "myapi.py").write_text(MYAPI)
    proc = subprocess.Popen([PYTHON, "-m", "gunicorn", "-c", "python:loadlab.gunicorn_conf", "-b",
                             f"127.0.0.1:{free_port()}", "myapi:app"], cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LOADLAB_GUNICORN_CONFIG": location})
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert stderr.strip().splitlines()[-1] == expected, stderr
    assert not multiproc_dirs(proc.pid)


def test_a_config_that_imports_ours_gets_our_hooks_once_not_chained_with_themselves(tmp_path):
    (tmp_path / "starconf.py").write_text("from loadlab.gunicorn_conf import *  # noqa\nworkers = 3\n")
    check = ("import loadlab.gunicorn_conf as g\n"
             "assert g.workers == 3\n"
             "for name, hook in g._hooks.hooks().items():\n"
             "    assert getattr(g, name) is g._ours[name], name\n"
             "g._hooks.cleanup()\n")
    run = subprocess.run([PYTHON, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "LOADLAB_GUNICORN_CONFIG": "python:starconf", "PYTHONPATH": str(tmp_path)})
    assert run.returncode == 0, run.stderr


# --- one implementation: the bundled target installs the same hooks --------------------------

@pytest.fixture
def multiprocess_mode_undone(monkeypatch):
    """GunicornHooks enables multiprocess mode in this process: undo it after the test."""
    monkeypatch.setenv(multiproc.ENV, "")
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)


def test_the_bundled_target_installs_the_hooks_of_loadlab_gunicorn_conf(monkeypatch, tmp_path, multiprocess_mode_undone):
    from target_app import server

    options: dict = {}
    monkeypatch.setattr(server._Gunicorn, "run", lambda self: options.update(self.options))
    server.serve(lambda: None, "127.0.0.1", free_port(), 2, metrics_port=free_port())  # type: ignore[arg-type, return-value]
    for name in ("when_ready", "post_fork", "child_exit", "on_exit"):
        assert options[name].__func__ is getattr(multiproc.GunicornHooks, name), name
    assert not os.path.exists(options["child_exit"].__self__.directory)  # cleaned up as serve() returned

    conf = subprocess.run([PYTHON, "-c", "import loadlab.gunicorn_conf as g, loadlab.multiproc as m\n"
                           "print(all(getattr(g, n).__func__ is getattr(m.GunicornHooks, n) for n in g._hooks.hooks()))"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert conf.stdout.strip() == "True", conf.stderr


def test_a_taken_metrics_port_halts_with_the_callers_message_and_is_kept_for_the_caller(tmp_path,
                                                                                         multiprocess_mode_undone):
    class Arbiter:
        halted: tuple[str, int] | None = None

        def halt(self, reason: str, exit_status: int) -> None:
            self.halted = (reason, exit_status)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        hooks = multiproc.GunicornHooks(str(tmp_path), "127.0.0.1", port, lambda exc: f"port {port}: {exc.strerror}")
        arbiter = Arbiter()
        hooks.when_ready(arbiter)
    assert arbiter.halted == (f"port {port}: Address already in use", 2)
    assert hooks.failure == f"port {port}: Address already in use"
    hooks.cleanup()
    assert tmp_path.is_dir(), "a directory given (PROMETHEUS_MULTIPROC_DIR of your own) is kept"
