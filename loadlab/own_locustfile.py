"""`loadlab run --locustfile PATH` (and `up`): a locustfile of your own through the whole lab.

Locust takes several files in one `-f`, comma-separated (`locust.argument_parser.get_locustfiles_locally`
splits it, `locust.main.merge_locustfiles_content` loads each file and merges their User classes
and LoadTestShapes). The lab passes `-f YOURS,locust_tests/loadlab_plugins.py`: your file first
(Locust names the run after the first file), then the lab's plugin file, which imports the
suite's plugins that make sense for any API (exporter, step hunt, run id, reachability
preflight) and defines no User. So your file needs no import from this project.

`--scenario step` is passed as for the bundled scenarios, so the step hunt runs with its flags
after `--` (`--step-users`, `--step-time`, `--max-users`, `--no-stop-on-break`, `--time-scale`).
A concrete LoadTestShape in your file wins: Locust runs it, the shapes plugin logs that no step
hunt runs, and the lab says so (`own_shape`).
"""

from __future__ import annotations

import re
from pathlib import Path

from loadlab.processes import LabError

REPO_ROOT = Path(__file__).resolve().parent.parent
PLUGIN_FILE = REPO_ROOT / "locust_tests" / "loadlab_plugins.py"
STEP = "step"
# The shapes plugin's log line when a locustfile's own LoadTestShape runs (locust_tests.plugins.shapes.OWN_SHAPE).
OWN_SHAPE = "the locustfile defines its own LoadTestShape"


def check(path: Path, locust_args: list[str]) -> Path:
    """The locustfile as an absolute path, or LabError with what to fix."""
    if any(arg in ("-f", "--locustfile") or arg.startswith(("--locustfile=", "-f=")) for arg in locust_args):
        raise LabError("--locustfile gives Locust its -f already: leave -f/--locustfile out of the arguments after --")
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise LabError(f"--locustfile {path}: no such file")
    if not path.is_file():
        raise LabError(f"--locustfile {path} is not a file: give the .py file that defines your User classes")
    if path.suffix != ".py":
        raise LabError(f"--locustfile {path}: Locust loads only .py files: rename it to end with .py")
    if "," in str(path):
        raise LabError(f"--locustfile {path}: the path has a comma, which Locust's -f takes as a separator: "
                       f"move or rename it")
    if path.stem == PLUGIN_FILE.stem:
        raise LabError(f"--locustfile {path}: the lab's own plugin file has that name: rename yours")
    try:
        path.read_bytes()
    except OSError as exc:
        raise LabError(f"--locustfile {path}: cannot read it ({exc.strerror or exc})") from None
    return path


def run_name(path: Path) -> str:
    """The run directory's name part: the file's stem, in characters safe in a path."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-.") or "locustfile"


def f_argument(path: Path) -> str:
    """Locust's -f value: the user's file first, then the lab's plugins."""
    return f"{path},{PLUGIN_FILE}"


def own_shape(log_path: Path) -> str | None:
    """The shapes plugin's line saying the locustfile's own LoadTestShape runs (no step hunt), if it said so."""
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if OWN_SHAPE in line:
            return line[line.index(OWN_SHAPE):].strip()
    return None
