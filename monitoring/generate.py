"""Write every generated monitoring file from `loadlab/contract/thresholds.py`.

    python -m monitoring.generate            # rewrite the committed files in this checkout
    python -m monitoring.generate --check    # exit 1 and name the files that are out of date
    python -m monitoring.generate --out DIR  # write the same tree under DIR

Generated: both Prometheus configs, the recording and alert rules, the promtool rule tests, the
Grafana datasource and the dashboards. The files are committed; a test fails when running this
would change any of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from loadlab.contract.thresholds import DEFAULT_THRESHOLDS, Thresholds
from monitoring import dashboards, prometheus_config, rule_tests, rules

REPO_ROOT = Path(__file__).resolve().parent.parent
HEADER = prometheus_config.GENERATED_HEADER


class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    # Multi-line PromQL reads best as a literal block.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def dump_yaml(data: Any) -> str:
    return HEADER + yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                              width=4096, allow_unicode=True)


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def render_all(t: Thresholds = DEFAULT_THRESHOLDS) -> dict[str, str]:
    """Relative path -> file content, for every generated file."""
    files = {
        "monitoring/prometheus/prometheus.yml": prometheus_config.render_native(t.scrape_interval_seconds),
        "monitoring/prometheus/prometheus.compose.yml": prometheus_config.render_compose(t.scrape_interval_seconds),
        "monitoring/prometheus/rules/recording.yml": dump_yaml({"groups": rules.recording_groups(t)}),
        "monitoring/prometheus/rules/alerts.yml": dump_yaml({"groups": rules.alert_rules(t)}),
        "grafana/provisioning/datasources/prometheus.yml": dump_yaml(dashboards.datasource_provisioning(t)),
    }
    for name, test in rule_tests.rule_test_files(t).items():
        files[f"monitoring/prometheus/tests/{name}"] = dump_yaml(test)
    for name, board in dashboards.all_dashboards(t).items():
        files[f"grafana/dashboards/{name}"] = dump_json(board)
    return files


def rule_files(t: Thresholds) -> dict[str, str]:
    """File name -> content of the recording and alert rules for thresholds `t`."""
    return {Path(rel).name: text for rel, text in render_all(t).items() if rel.startswith("monitoring/prometheus/rules/")}


def write_rules(directory: Path, t: Thresholds) -> list[str]:
    """Write the rules for `t` into `directory` (a run's own thresholds); their absolute paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in rule_files(t).items():
        (directory / name).write_text(text, encoding="utf-8")
        paths.append(str(directory / name))
    return paths


def write_all(root: Path, t: Thresholds = DEFAULT_THRESHOLDS) -> list[Path]:
    written = []
    for rel, text in render_all(t).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale_files(root: Path = REPO_ROOT, t: Thresholds = DEFAULT_THRESHOLDS) -> list[str]:
    """Generated files under `root` that are missing or differ from what would be generated."""
    stale = []
    for rel, text in render_all(t).items():
        path = root / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(rel)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="root to write under (default: this checkout)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.out)
        for rel in stale:
            print(f"out of date: {rel}", file=sys.stderr)
        if stale:
            print("run `python -m monitoring.generate` and commit the result", file=sys.stderr)
            return 1
        print("all generated monitoring files are up to date")
        return 0
    for path in write_all(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
