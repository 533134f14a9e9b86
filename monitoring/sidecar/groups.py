"""Process groups: what the sidecar watches, and where the definitions come from.

A group is named (the `groupname` label) and selects processes three ways, any
combination of which may be used: a regex searched in the command line (argv
joined with spaces, as process-exporter does), fixed PIDs, and PID files re-read
at every scrape. Every descendant of a selected process belongs to the group too;
that rule lives in `tracker.py`, this module only describes the selection.

Groups come from `--group/--group-pid/--pid-file` flags and from a YAML or TOML
file; definitions with the same name are merged. With no group given at all,
`default_groups()` finds the bundled target and Locust.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loadlab.contract.names import GENERATOR_GROUP, TARGET_GROUP

# Group names become label values; keep them to something a PromQL user can type.
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")

# Default selectors. Both are anchored on the *program* being run, not on any word
# in the arguments, so `pytest tests/locust_tests -k locust`, an editor with
# target_app/app.py open, and the sidecar's own `--group locust=...` flags do not
# match. Children (gunicorn workers, `locust --processes` children) join through
# the process tree, so only the parent has to match.
#
# Target: gunicorn or flask (run directly, through a python interpreter, or
# `python -m gunicorn`) with `target_app` among its arguments; `python -m target_app`;
# and gunicorn's setproctitle form `gunicorn: master [target_app...]`.
DEFAULT_TARGET_REGEX = (
    r"^(?:\S*/)?(?:python[\d.]*\s+(?:-m\s+)?(?:\S*/)?)?(?:gunicorn|flask)\s.*\btarget_app\b"
    r"|^(?:\S*/)?python[\d.]*\s+-m\s+target_app\b"
    r"|^gunicorn: (?:master|worker) \[target_app\b"
)
# Locust: the `locust` program itself (console script, `python .../locust`, or
# `python -m locust`), master, workers and standalone alike.
DEFAULT_LOCUST_REGEX = r"^(?:\S*/)?(?:python[\d.]*\s+(?:-m\s+)?(?:\S*/)?)?locust(?:\s|$)"


class GroupConfigError(ValueError):
    """A group definition (flag or config file) that cannot be used; the message says why."""


@dataclass(frozen=True)
class GroupSpec:
    """One named group: processes whose command line matches any of `cmdline`,
    the processes in `pids` and in `pid_files`, and all of their descendants."""

    name: str
    cmdline: tuple[re.Pattern[str], ...] = ()
    pids: tuple[int, ...] = ()
    pid_files: tuple[Path, ...] = ()

    def matches_cmdline(self, cmdline: str) -> bool:
        return any(pattern.search(cmdline) for pattern in self.cmdline)

    def merged(self, other: GroupSpec) -> GroupSpec:
        return GroupSpec(self.name, self.cmdline + other.cmdline, self.pids + other.pids,
                         self.pid_files + other.pid_files)


def check_name(name: str, where: str) -> str:
    if not _NAME_RE.match(name):
        raise GroupConfigError(
            f"{where}: group name {name!r} is not valid: use letters, digits, '_', '.', '-' "
            "and start with a letter or '_'")
    return name


def compile_regex(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise GroupConfigError(f"{where}: regex {pattern!r} is invalid: {exc}") from None


def parse_pid(text: str, where: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        pid = 0
    if pid <= 0:
        raise GroupConfigError(f"{where}: {text!r} is not a PID (a positive integer)")
    return pid


def split_assignment(text: str, flag: str) -> tuple[str, str]:
    """Split a `NAME=VALUE` flag value, checking both halves."""
    name, sep, value = text.partition("=")
    if not sep or not value or not name:
        raise GroupConfigError(f"{flag} {text!r}: expected NAME=VALUE, e.g. {flag} target=...")
    return check_name(name, f"{flag} {text!r}"), value


def group_from_flag(flag: str, text: str) -> GroupSpec:
    """One `--group`, `--group-pid` or `--pid-file` flag value as a GroupSpec."""
    name, value = split_assignment(text, flag)
    where = f"{flag} {text!r}"
    if flag == "--group":
        return GroupSpec(name, cmdline=(compile_regex(value, where),))
    if flag == "--group-pid":
        return GroupSpec(name, pids=(parse_pid(value, where),))
    if flag == "--pid-file":
        return GroupSpec(name, pid_files=(Path(value),))
    raise ValueError(f"unknown group flag {flag}")


def merge_groups(specs: Iterable[GroupSpec]) -> list[GroupSpec]:
    """Merge definitions that share a name, keeping first-seen order."""
    merged: dict[str, GroupSpec] = {}
    for spec in specs:
        merged[spec.name] = merged[spec.name].merged(spec) if spec.name in merged else spec
    return list(merged.values())


def default_groups() -> list[GroupSpec]:
    """The bundled target (gunicorn + workers) and Locust (master, workers, children)."""
    return [
        GroupSpec(TARGET_GROUP, cmdline=(re.compile(DEFAULT_TARGET_REGEX),)),
        GroupSpec(GENERATOR_GROUP, cmdline=(re.compile(DEFAULT_LOCUST_REGEX),)),
    ]


_GROUP_KEYS = {"cmdline", "pids", "pid_files"}


def _as_list(value: Any, where: str, kind: type) -> list[Any]:
    items = value if isinstance(value, list) else [value]
    for item in items:
        # bool is an int subclass; `pids: true` is a mistake, not PID 1.
        if not isinstance(item, kind) or isinstance(item, bool):
            raise GroupConfigError(f"{where}: expected {kind.__name__} or a list of them, got {item!r}")
    return items


def groups_from_mapping(data: Any, source: str) -> list[GroupSpec]:
    """Groups from a parsed config document.

    Shape (YAML shown; TOML is the same tables)::

        groups:
          target: 'gunicorn.*target_app'      # shorthand: one cmdline regex
          locust:
            cmdline: ['^locust ', 'locust --worker']
            pids: [1234]
            pid_files: [/run/locust.pid]
    """
    if not isinstance(data, Mapping) or "groups" not in data:
        raise GroupConfigError(f"{source}: expected a top-level 'groups:' mapping of name -> definition")
    unknown_top = set(data) - {"groups"}
    if unknown_top:
        raise GroupConfigError(f"{source}: unknown top-level key(s) {sorted(unknown_top)}; only 'groups' is read")
    groups = data["groups"]
    if not isinstance(groups, Mapping) or not groups:
        raise GroupConfigError(f"{source}: 'groups' must be a non-empty mapping of name -> definition")
    specs: list[GroupSpec] = []
    for name, body in groups.items():
        where = f"{source}: group {name!r}"
        check_name(str(name), where)
        if isinstance(body, str):
            body = {"cmdline": body}
        if not isinstance(body, Mapping):
            raise GroupConfigError(f"{where}: expected a regex string or a mapping with {sorted(_GROUP_KEYS)}")
        unknown = set(body) - _GROUP_KEYS
        if unknown:
            raise GroupConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_GROUP_KEYS)}")
        if not any(body.get(key) for key in _GROUP_KEYS):
            raise GroupConfigError(f"{where}: selects nothing; give cmdline, pids or pid_files")
        spec = GroupSpec(
            str(name),
            cmdline=tuple(compile_regex(p, where) for p in _as_list(body.get("cmdline", []), where, str)),
            pids=tuple(parse_pid(str(p), where) for p in _as_list(body.get("pids", []), where, int)),
            pid_files=tuple(Path(p) for p in _as_list(body.get("pid_files", []), where, str)),
        )
        specs.append(spec)
    return specs


def load_config(path: str | Path) -> list[GroupSpec]:
    """Groups from a `.yaml`/`.yml` or `.toml` file; GroupConfigError names the file and the problem."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in {".yaml", ".yml", ".toml"}:
        raise GroupConfigError(f"config file {path}: unknown format; name it *.yaml, *.yml or *.toml")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GroupConfigError(f"config file {path}: cannot be read: {exc.strerror or exc}") from None
    try:
        if suffix == ".toml":
            data = _load_toml(text)
        else:
            data = yaml.safe_load(text)
    except GroupConfigError:
        raise
    except Exception as exc:  # yaml.YAMLError / tomllib.TOMLDecodeError: show the parser's position
        raise GroupConfigError(f"config file {path}: not valid {suffix[1:].upper()}: {exc}") from None
    return groups_from_mapping(data, f"config file {path}")


def _load_toml(text: str) -> Any:
    try:
        import tomllib  # Python 3.11+
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise GroupConfigError(
                "TOML config files need Python 3.11+ or `pip install tomli`; or use a .yaml file") from None
    return tomllib.loads(text)


@dataclass
class GroupSelection:
    """Flag values as argparse collected them, before validation."""

    regex: list[str] = field(default_factory=list)
    pid: list[str] = field(default_factory=list)
    pid_file: list[str] = field(default_factory=list)
    config: str | None = None


def resolve_groups(selection: GroupSelection) -> list[GroupSpec]:
    """All groups from a config file and flags (merged by name), or the defaults if none is given."""
    specs: list[GroupSpec] = []
    if selection.config:
        specs.extend(load_config(selection.config))
    specs.extend(group_from_flag("--group", text) for text in selection.regex)
    specs.extend(group_from_flag("--group-pid", text) for text in selection.pid)
    specs.extend(group_from_flag("--pid-file", text) for text in selection.pid_file)
    return merge_groups(specs) if specs else default_groups()
