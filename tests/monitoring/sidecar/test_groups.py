"""Group definitions: the default selectors, config files and flag parsing."""

from __future__ import annotations

import re

import pytest

from monitoring.sidecar.groups import (
    DEFAULT_LOCUST_REGEX,
    DEFAULT_TARGET_REGEX,
    GroupConfigError,
    GroupSelection,
    group_from_flag,
    load_config,
    resolve_groups,
)

VENV = "/work/main/.venv/bin"

TARGET_COMMANDS = [
    f"{VENV}/python {VENV}/gunicorn -b 127.0.0.1:5000 -w 4 target_app:create_app()",
    "gunicorn --workers 2 'target_app.wsgi:app'",
    "/usr/bin/python3.11 -m gunicorn target_app:create_app() --bind 127.0.0.1:5000",
    "python -m target_app --port 5000",
    "flask --app target_app run",
    "gunicorn: master [target_app:create_app()]",
    "gunicorn: worker [target_app:create_app()]",
]
LOCUST_COMMANDS = [
    f"{VENV}/python {VENV}/locust -f locust_tests/scenarios/login.py --headless -u 10",
    "locust --worker --master-host 127.0.0.1",
    "/usr/bin/python3 -m locust -f locustfile.py",
    "locust",
]
UNRELATED_COMMANDS = [
    f"{VENV}/python -m pytest tests/locust_tests -k locust",
    f"{VENV}/python {VENV}/pytest tests/target_app/test_api.py",
    f"{VENV}/python -m monitoring.sidecar --group locust=locust --group target=target_app",
    "vim target_app/app.py locust_tests/locustfile.py",
    "bash -c cd target_app && ls",
    "grep -r locust .",
    "python locust_tests/tools/seed.py",
]


@pytest.mark.parametrize("cmdline", TARGET_COMMANDS)
def test_default_target_regex_finds_the_bundled_target(cmdline):
    assert re.search(DEFAULT_TARGET_REGEX, cmdline)
    assert not re.search(DEFAULT_LOCUST_REGEX, cmdline)


@pytest.mark.parametrize("cmdline", LOCUST_COMMANDS)
def test_default_locust_regex_finds_locust(cmdline):
    assert re.search(DEFAULT_LOCUST_REGEX, cmdline)
    assert not re.search(DEFAULT_TARGET_REGEX, cmdline)


@pytest.mark.parametrize("cmdline", UNRELATED_COMMANDS)
def test_default_regexes_ignore_tools_that_only_mention_the_names(cmdline):
    assert not re.search(DEFAULT_TARGET_REGEX, cmdline)
    assert not re.search(DEFAULT_LOCUST_REGEX, cmdline)


def test_no_group_flags_means_the_two_defaults():
    groups = resolve_groups(GroupSelection())
    assert [g.name for g in groups] == ["target", "locust"]


def test_flags_with_the_same_name_are_merged_into_one_group():
    groups = resolve_groups(GroupSelection(regex=["web=gunicorn", "web=uwsgi"], pid=["web=42", "load=7"]))
    assert [g.name for g in groups] == ["web", "load"]
    web = groups[0]
    assert [p.pattern for p in web.cmdline] == ["gunicorn", "uwsgi"] and web.pids == (42,)
    assert web.matches_cmdline("/usr/bin/uwsgi --ini x") and not web.matches_cmdline("nginx")


@pytest.mark.parametrize("flag, text, message", [
    ("--group", "target=(unclosed", "regex '(unclosed' is invalid"),
    ("--group", "target", "expected NAME=VALUE"),
    ("--group", "=gunicorn", "expected NAME=VALUE"),
    ("--group", "bad name=x", "group name 'bad name' is not valid"),
    ("--group-pid", "target=abc", "'abc' is not a PID"),
    ("--group-pid", "target=-5", "'-5' is not a PID"),
])
def test_bad_group_flags_are_named_in_the_error(flag, text, message):
    with pytest.raises(GroupConfigError, match=re.escape(message)) as error:
        group_from_flag(flag, text)
    assert flag in str(error.value)


def test_yaml_config_file(tmp_path):
    path = tmp_path / "groups.yaml"
    path.write_text("groups:\n  target: 'gunicorn.*target_app'\n"
                    "  locust:\n    cmdline: ['^locust ', 'locust --worker']\n    pids: [1234]\n"
                    "    pid_files: [/run/locust.pid]\n")
    target, locust = load_config(path)
    assert target.name == "target" and target.matches_cmdline("gunicorn -w 2 target_app:app")
    assert locust.pids == (1234,) and str(locust.pid_files[0]) == "/run/locust.pid"
    assert len(locust.cmdline) == 2


def test_toml_config_file_merges_with_flags(tmp_path):
    path = tmp_path / "groups.toml"
    path.write_text('[groups.target]\ncmdline = "gunicorn.*target_app"\npids = [99]\n')
    (target,) = resolve_groups(GroupSelection(regex=["target=flask"], config=str(path)))
    assert target.pids == (99,) and [p.pattern for p in target.cmdline] == ["gunicorn.*target_app", "flask"]


@pytest.mark.parametrize("name, text, message", [
    ("g.yaml", "groups:\n  target: '(oops'\n", "group 'target': regex '(oops' is invalid"),
    ("g.yaml", "groups: [a, b]\n", "'groups' must be a non-empty mapping"),
    ("g.yaml", "target: x\n", "expected a top-level 'groups:' mapping"),
    ("g.yaml", "groups:\n  target:\n    regex: x\n", "unknown key(s) ['regex']"),
    ("g.yaml", "groups:\n  target:\n    pids: [abc]\n", "expected int"),
    ("g.yaml", "groups:\n  target: {}\n", "selects nothing"),
    ("g.yaml", "groups:\n  target: 'x\n", "not valid YAML"),
    ("g.toml", "[groups\n", "not valid TOML"),
    ("g.json", "{}", "unknown format"),
])
def test_bad_config_file_errors_name_the_file_and_the_problem(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(GroupConfigError, match=re.escape(message)) as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(GroupConfigError, match="cannot be read"):
        load_config(tmp_path / "nope.yaml")
