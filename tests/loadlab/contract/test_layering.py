"""Nothing imports upward: the contract stands on nothing of the project's, and the parts a
user deploys (the target, the sidecar, the Locust suite) and the monitoring generators stand
only on the contract and the small server-side libraries beside it, never on the lab runner
(runner, analysis, report, sampler, ...)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

PROJECT = ("loadlab", "target_app", "locust_tests", "monitoring")
# Libraries beside the contract that a server runs (the sidecar records stacks with `stacks`; your
# app and the target use `instrument`, your gunicorn `gunicorn_conf`, both on `multiproc`).
# They stand on the contract and each other only, like everything deployed.
SERVER_LIBRARIES = ("loadlab.stacks", "loadlab.instrument", "loadlab.gunicorn_conf", "loadlab.multiproc")
GROUND = ("loadlab.contract", *SERVER_LIBRARIES)


def on_ground(name: str) -> bool:
    return any(name == g or name.startswith(g + ".") for g in GROUND) or name == "loadlab"


def project_imports(path: Path) -> set[str]:
    """Every project module `path` imports (absolute names; relative imports resolved)."""
    return imports_in(path.read_text(), ".".join(path.relative_to(REPO_ROOT).parts[:-1]))


def imports_in(source: str, package: str) -> set[str]:
    tree = ast.parse(source)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in PROJECT}


def modules(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO_ROOT / folder).rglob("*.py"))


def test_the_contract_imports_no_other_part_of_the_project():
    files = modules("loadlab/contract")
    assert files
    for path in files:
        outside = {n for n in project_imports(path) if not n.startswith("loadlab.contract")}
        assert not outside, f"{path.relative_to(REPO_ROOT)} imports {sorted(outside)}"


@pytest.mark.parametrize("folder", ["target_app", "monitoring", "locust_tests"])
def test_deployed_parts_and_generators_stand_only_on_the_contract(folder):
    files = modules(folder)
    assert files
    for path in files:
        lab = {n for n in project_imports(path) if n.startswith("loadlab") and not on_ground(n)}
        assert not lab, f"{path.relative_to(REPO_ROOT)} imports the lab runner's {sorted(lab)}"


@pytest.mark.parametrize("library", SERVER_LIBRARIES)
def test_server_libraries_stand_only_on_the_contract(library):
    path = REPO_ROOT / (library.replace(".", "/") + ".py")
    outside = {n for n in project_imports(path) if not on_ground(n)}
    assert not outside, f"{library} imports {sorted(outside)}"


@pytest.mark.parametrize("library", SERVER_LIBRARIES)
def test_server_libraries_import_nothing_of_the_lab_generator(library):
    # Installed on the API's machine without Locust, gevent, matplotlib or Faker
    # (tests/loadlab/test_server_side.py runs them so).
    path = REPO_ROOT / (library.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not roots & {"locust", "gevent", "matplotlib", "faker"}, f"{library} imports {sorted(roots)}"


def test_the_layering_check_sees_absolute_and_relative_imports():
    source = "import os\nfrom ..analysis import analyze_steps\nfrom loadlab.report import write_report\n"
    assert imports_in(source, "loadlab.contract") >= {"loadlab.analysis", "loadlab.report"}
