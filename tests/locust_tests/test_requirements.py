"""locust_tests/requirements.txt agrees with pyproject.toml and covers what the suite imports."""

from __future__ import annotations

import ast
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import REPO_ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

SUITE = REPO_ROOT / "locust_tests"
# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"prometheus_client": "prometheus-client", "yaml": "PyYAML"}
FIRST_PARTY = {"locust_tests", "loadlab"}


def requirements_txt() -> dict[str, Requirement]:
    lines = (SUITE / "requirements.txt").read_text().splitlines()
    reqs = [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]
    return {canonicalize_name(r.name): r for r in reqs}


def pyproject_dependencies() -> dict[str, Requirement]:
    """The base dependencies and the `lab` extra's, where the suite's are."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(r.name): r
            for r in map(Requirement, project["dependencies"] + project["optional-dependencies"]["lab"])}


def test_every_requirement_has_the_same_range_as_pyproject():
    project = pyproject_dependencies()
    for name, req in requirements_txt().items():
        assert name in project, f"{name} is in locust_tests/requirements.txt but not in pyproject.toml"
        assert req.specifier == project[name].specifier, (
            f"{name}: requirements.txt says {req.specifier}, pyproject.toml says {project[name].specifier}")


def test_requirements_cover_every_third_party_import_of_the_suite():
    imported: set[str] = set()
    for path in SUITE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - FIRST_PARTY
    required = set(requirements_txt())
    missing = {m for m in third_party if canonicalize_name(DISTRIBUTIONS.get(m, m)) not in required}
    assert not missing, f"imported by locust_tests/ but not in its requirements.txt: {sorted(missing)}"
