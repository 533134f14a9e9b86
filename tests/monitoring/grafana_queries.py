"""Read a Grafana dashboard's queries and substitute its variables the way Grafana does, so
tests can run every panel's PromQL against Prometheus (or promtool)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any


def panel_targets(board: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of every panel, rows' nested panels included."""
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner, target


def rows(board: dict[str, Any]) -> dict[int, str]:
    """Panel id -> the title of the row it sits under ("" above the first row)."""
    out, current = {}, ""
    for panel in board["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
        out[panel["id"]] = current
    return out


def rate_interval(interval_s: float, scrape_interval_s: float) -> float:
    """Grafana's $__rate_interval: max($__interval + scrape interval, 4 x scrape interval)."""
    return max(interval_s + scrape_interval_s, 4 * scrape_interval_s)


def _format_multi(values: list[str]) -> str:
    # Grafana's Prometheus datasource (prometheusSpecialRegexEscape): each value regex-escaped
    # with a doubled backslash, because the regex sits inside a PromQL string literal; one value
    # as is, several as an alternation.
    escaped = [re.sub(r"([$^*{}\[\]'+?.()|])", r"\\\\\1", v.replace("\\", "\\\\\\\\")) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(expr: str, variables: Mapping[str, list[str] | str], *, interval_s: float,
               scrape_interval_s: float, range_s: float) -> str:
    """`expr` with $__rate_interval, $__interval, $__range and template variables replaced."""
    builtins = {
        "__rate_interval": f"{int(rate_interval(interval_s, scrape_interval_s))}s",
        "__interval": f"{int(interval_s)}s",
        "__range": f"{int(range_s)}s",
    }

    def value(name: str) -> str:
        if name in builtins:
            return builtins[name]
        if name not in variables:
            raise KeyError(f"dashboard uses ${name}, which is neither a built-in nor a variable")
        chosen = variables[name]
        return chosen if isinstance(chosen, str) else _format_multi(chosen)

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: value(m[1] or m[2]), expr)
