"""The Lab tab's page: a live view (see `loadlab.contract.live`) drawn as HTML with inline SVG charts.

Under the lab, the lab runner draws the panel (`live.html`) beside `live.json`, so Locust's process
only serves it; without the lab, the Lab plugin draws it from Locust's own numbers.

Server-side SVG: no JavaScript library, nothing fetched from a CDN, so the page works on an
offline machine. A few lines of inline script fetch the panel again every few seconds and swap
it in. Every chart shares one time axis; a chart with no points says why instead of staying
empty. This module does not import Locust (the plugin `labtab.py` does), so tests and tools can
render a view without gevent's monkey patching.
"""

from __future__ import annotations

import html
import math
import textwrap
import time
from collections.abc import Sequence
from typing import Any

from loadlab.contract.live import REFRESH_S, SERIES

WIDTH, HEIGHT = 960, 170
LEFT, RIGHT, TOP, BOTTOM = 62, 62, 22, 26
COLORS = {"users": "#1f77b4", "rps": "#2ca02c", "p95_ms": "#9467bd", "target_cpu_cores": "#ff7f0e",
          "target_memory_bytes": "#7f7f7f", "generator_cpu_cores": "#8c564b"}
MIB = 2**20
esc = html.escape


def nice_max(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k at or above `value` (an axis top)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    return next(m * exp for m in (1, 2, 2.5, 5, 10) if m * exp >= value * 0.999)


def _num(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.2g}"


class Chart:
    """One SVG chart on the shared time axis [t0, t1] (x labels: seconds since t0)."""

    def __init__(self, chart_id: str, title: str, t0: float, t1: float) -> None:
        self.id, self.title = chart_id, title
        self.t0, self.span = t0, max(t1 - t0, 1.0)
        self.parts: list[str] = []
        self.legend: list[tuple[str, str]] = []

    def x(self, t: float) -> float:
        return LEFT + (t - self.t0) / self.span * (WIDTH - LEFT - RIGHT)

    @staticmethod
    def y(value: float, top: float) -> float:
        return HEIGHT - BOTTOM - min(max(value / top, 0.0), 1.05) * (HEIGHT - TOP - BOTTOM)

    def line(self, key: str, points: Sequence[Sequence[float]], top: float, scale: float = 1.0,
             label: str | None = None, dash: str = "") -> None:
        coords = " ".join(f"{self.x(t):.1f},{self.y(v * scale, top):.1f}" for t, v in points)
        style = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<polyline class="series" data-key="{esc(key)}" data-points="{len(points)}" '
                          f'fill="none" stroke="{COLORS.get(key, "#333")}" stroke-width="1.6"{style} '
                          f'points="{coords}"/>')
        self.legend.append((COLORS.get(key, "#333"), label or SERIES.get(key, (key, ""))[0]))

    def hline(self, value: float, top: float, color: str, label: str) -> None:
        y = self.y(value, top)
        self.parts.append(f'<line class="limit" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                          f'stroke="{color}" stroke-dasharray="5 4" stroke-width="1.2"/>')
        self.legend.append((color, label))

    def axis(self, top: float, unit: str, right: bool = False) -> None:
        x = WIDTH - RIGHT + 6 if right else LEFT - 6
        anchor = "start" if right else "end"
        for frac in (0.0, 0.5, 1.0):
            y = self.y(top * frac, top)
            if not right:
                self.parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
            self.parts.append(f'<text x="{x}" y="{y + 4:.1f}" text-anchor="{anchor}" class="tick">'
                              f'{esc(_num(top * frac))}</text>')
        self.parts.append(f'<text x="{x}" y="{TOP - 8}" text-anchor="{anchor}" class="unit">{esc(unit)}</text>')

    def missing(self, text: str) -> None:
        """Why the chart (or part of it) is empty, in the chart itself, wrapped to its width."""
        lines = textwrap.wrap(text, 120)
        y = HEIGHT / 2 - 7 * (len(lines) - 1)
        spans = "".join(f'<tspan x="{WIDTH / 2}" dy="{0 if i == 0 else 14}">{esc(line)}</tspan>'
                        for i, line in enumerate(lines))
        self.parts.append(f'<text class="missing" x="{WIDTH / 2}" y="{y:.0f}" text-anchor="middle">{spans}</text>')

    def marks(self, view: dict[str, Any]) -> None:
        """Step starts (thin), the knee (orange) and the break (red), on every chart alike."""
        for step in view.get("steps") or []:
            if step.get("start"):
                x = self.x(step["start"])
                self.parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" stroke="#ddd"/>')
        for key, color in (("knee", "#ff7f0e"), ("break", "#d62728")):
            point = view.get(key)
            if point and point.get("time"):
                x = self.x(point["time"])
                self.parts.append(f'<line class="mark-{key}" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" '
                                  f'y2="{HEIGHT - BOTTOM}" stroke="{color}" stroke-dasharray="6 3"/>'
                                  f'<text x="{x + 3:.1f}" y="{TOP + 10}" class="mark" fill="{color}">'
                                  f'{key} {point["users"]:g} users</text>')

    def svg(self) -> str:
        ticks = []
        step = nice_max(self.span / 6)
        n = 0
        while n * step <= self.span + 1e-9:
            x = self.x(self.t0 + n * step)
            ticks.append(f'<text x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="middle" class="tick">{_num(n * step)}</text>')
            n += 1
        legend = "".join(f'<tspan fill="{c}">&#9644; </tspan><tspan>{esc(label)}&#160;&#160;</tspan>'
                         for c, label in self.legend)
        return (f'<svg class="chart" id="{esc(self.id)}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
                f'aria-label="{esc(self.title)}" xmlns="http://www.w3.org/2000/svg">'
                f'<text x="{LEFT}" y="13" class="title">{esc(self.title)}</text>'
                f'<text x="{WIDTH - RIGHT}" y="13" text-anchor="end" class="legend">{legend}</text>'
                f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{HEIGHT - TOP - BOTTOM}" '
                f'fill="none" stroke="#ccc"/>{"".join(self.parts)}{"".join(ticks)}'
                f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 8}" text-anchor="start" class="tick">&#160;s</text></svg>')


def _top(points: Sequence[Sequence[float]], *extra: float | None, scale: float = 1.0) -> float:
    values = [v * scale for _, v in points] + [e for e in extra if e]
    return nice_max(max(values, default=0.0))


def charts(view: dict[str, Any]) -> str:
    """The four charts of a view, on one time axis."""
    series: dict[str, list] = view.get("series") or {}
    missing: dict[str, str] = view.get("missing") or {}
    cores: dict[str, float | None] = view.get("cores_available") or {}
    t0 = view.get("t0") or time.time() - 120
    t1 = view.get("t1") or time.time()
    out = []

    def why(*keys: str) -> str:
        return "; ".join(f"no {names}: {reason}" for names, reason in grouped(missing, keys))

    chart = Chart("chart-load", "Users and throughput", t0, t1)
    users, rps = series.get("users") or [], series.get("rps") or []
    top_u, top_r = _top(users), _top(rps)
    chart.axis(top_u, "users")
    chart.axis(top_r, "req/s", right=True)
    for key, points, top in (("users", users, top_u), ("rps", rps, top_r)):
        if points:
            chart.line(key, points, top)
    if not users or not rps:
        chart.missing(why(*(k for k, p in (("users", users), ("rps", rps)) if not p)))
    chart.marks(view)
    out.append(chart.svg())

    for role, title in (("target", "Target CPU and resident memory"), ("generator", "Load generator (Locust) CPU")):
        key = f"{role}_cpu_cores"
        chart = Chart(f"chart-{role}", title, t0, t1)
        cpu, avail = series.get(key) or [], cores.get(role)
        top = _top(cpu, avail)
        chart.axis(top, "cores")
        if cpu:
            chart.line(key, cpu, top)
            if avail:
                chart.hline(avail, top, COLORS[key], f"cores available ({avail:g})")
        memory = (series.get("target_memory_bytes") or []) if role == "target" else []
        if memory:
            top_m = _top(memory, scale=1 / MIB)
            chart.axis(top_m, "MiB", right=True)
            chart.line("target_memory_bytes", memory, top_m, scale=1 / MIB, label="target RSS")
        gaps = [k for k in ([key, "target_memory_bytes"] if role == "target" else [key]) if not series.get(k)]
        if gaps:
            chart.missing(why(*gaps))
        chart.marks(view)
        out.append(chart.svg())

    chart = Chart("chart-latency", "p95 latency against the SLO", t0, t1)
    p95 = series.get("p95_ms") or []
    slo = (view.get("slo") or {}).get("latency_p95_ms")
    top = _top(p95, slo)
    chart.axis(top, "ms")
    if p95:
        chart.line("p95_ms", p95, top)
    else:
        chart.missing(why("p95_ms"))
    if slo:
        chart.hline(slo, top, "#d62728", f"SLO p95 {slo:g} ms")
    chart.marks(view)
    out.append(chart.svg())
    return "\n".join(out)


def _cores(used: float | None, avail: float | None) -> str:
    if used is None:
        return "–"
    return f"{used:.2f}" + (f" of {avail:g}" if avail else "")


def steps_table(view: dict[str, Any]) -> str:
    rows = []
    for s in view.get("steps") or []:
        p95 = "–" if s.get("p95_ms") is None else f"{s['p95_ms']:.0f}"
        slo = "met" if s.get("slo_met") else f"breached: {s.get('slo_detail') or ''}"
        rows.append(f'<tr class="{"ok" if s.get("slo_met") else "breach"}"><td>step {s["step"]}</td>'
                    f'<td>{s["users"]}</td><td>{s["rps"]:.1f}</td><td>{p95}</td><td>{s["error_ratio"]:.2%}</td>'
                    f'<td>{_cores(s.get("target_cpu_cores"), s.get("target_cores_available"))}</td>'
                    f'<td>{_cores(s.get("generator_cpu_cores"), s.get("generator_cores_available"))}</td>'
                    f'<td class="slo">{esc(slo)}</td></tr>')
    if not rows:
        return '<p class="muted" id="steps">No step has finished yet: each one appears here when it ends.</p>'
    head = ("<tr><th>step</th><th>users</th><th>req/s</th><th>p95 ms</th><th>errors</th>"
            "<th>target CPU (cores)</th><th>Locust CPU (cores)</th><th>SLO</th></tr>")
    return f'<table id="steps">{head}{"".join(rows)}</table>'


def now_line(view: dict[str, Any]) -> str:
    """The current step, or what state the test is in."""
    current, state = view.get("current"), view.get("state", "ready")
    if current:
        since = f", for {time.time() - current['since']:.0f} s" if current.get("since") else ""
        step = f"step {current['step']}, " if current.get("step") else ""
        return f"Now: {step}{current['users']} users{since}."
    if state == "ready":
        return "No test running yet: start one in Locust's UI."
    if state == "running":
        return "The test is starting: no user is running yet."
    return "The test has stopped." if state == "stopped" else f"State: {state}."


def step_line(s: dict[str, Any]) -> str:
    """One finished step as the judge saw it, in one line."""
    p95 = "–" if s.get("p95_ms") is None else f"{s['p95_ms']:.0f} ms"
    slo = "SLO met" if s.get("slo_met") else f"SLO breached ({s.get('slo_detail') or 'breach'})"
    cpu = ("" if s.get("target_cpu_cores") is None else
           f", target CPU {_cores(s['target_cpu_cores'], s.get('target_cores_available'))} cores")
    return f"{s['users']} users, {s['rps']:.1f} req/s, p95 {p95}, errors {s['error_ratio']:.2%}{cpu}: {slo}"


def grouped(missing: dict[str, str], keys: Sequence[str]) -> list[tuple[str, str]]:
    """[(series names, reason)] for `keys`, the series that share a reason named together."""
    by_reason: dict[str, list[str]] = {}
    for key in keys:
        by_reason.setdefault(missing.get(key) or "no data yet", []).append(SERIES.get(key, (key, ""))[0])
    return [(", ".join(names), reason) for reason, names in by_reason.items()]


def notes(view: dict[str, Any]) -> list[str]:
    """Which sources are missing or down, and why (each line once)."""
    missing = view.get("missing") or {}
    lines = list(view.get("notes") or [])
    lines += [f"no {names}: {reason}" for names, reason in grouped(missing, [k for k in SERIES if k in missing])]
    return list(dict.fromkeys(lines))


def panel(view: dict[str, Any], report_url: str | None = "lab/report") -> str:
    """The refreshable part of the page: the live verdict, the missing sources, the charts. Its links
    are relative to the page (`/lab`, under Locust's --web-base-path too)."""
    now = time.time()
    origin = ("the lab's analysis (loadlab up), by the final verdict's own code" if view.get("source") == "lab"
              else "Locust's own stats and the step hunt's SLO judge (no lab running)")
    state = view.get("state", "ready")
    steps = view.get("steps") or []
    summary = view.get("summary") or []
    if steps or (state == "stopped" and summary):  # a test that ended without a step says so, as the final verdict does
        verdict = "".join(f"<li>{esc(line)}</li>" for line in summary)
    else:
        verdict = "<li>no verdict yet: it starts with the first finished step</li>"
    missing = notes(view)
    notes_html = ('<ul id="notes">' + "".join(f"<li>{esc(n)}</li>" for n in missing) + "</ul>") if missing else ""
    report = (f'<p id="report">This test is over: <a href="{esc(report_url)}" target="_blank">its report '
              f'(report.html)</a> has every chart and the step table.</p>'
              if report_url and view.get("report") else "")
    generated = time.strftime("%H:%M:%S", time.localtime(view.get("generated_at") or now))
    return f"""<section id="live-verdict" data-state="{esc(state)}" data-steps="{len(steps)}">
<p class="origin">{esc(origin)} · as of {generated} · state {esc(state)}</p>
<p id="current">{esc(now_line(view))}</p>
<h2>Live verdict</h2>
<ul id="verdict">{verdict}</ul>
{report}
{steps_table(view)}
{notes_html}
</section>
<section id="charts">
{charts(view)}
</section>"""


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em auto; max-width: 1000px; color: #222; }
header { display: flex; gap: 1em; align-items: baseline; } header h1 { font-size: 1.3em; margin: 0; }
h2 { font-size: 1.05em; margin: 0.8em 0 0.2em; }
.origin, .muted { color: #666; font-size: 0.85em; } #current { font-weight: 600; }
#verdict li { font-family: ui-monospace, monospace; font-size: 0.9em; }
#notes li { color: #8a5a00; font-size: 0.9em; }
table { border-collapse: collapse; width: 100%; font-size: 0.85em; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #eee; padding: 0.2em 0.4em; text-align: right; }
td.slo, th:last-child { text-align: left; } tr.breach td { background: #fdecea; }
svg.chart { width: 100%; height: auto; display: block; margin: 0.2em 0; }
svg .title { font-size: 13px; font-weight: 600; fill: #333; } svg .legend, svg .tick, svg .unit { font-size: 11px; fill: #555; }
svg .missing { font-size: 12px; fill: #8a5a00; } svg .mark { font-size: 11px; }
"""

SCRIPT = """
(function () {
  var main = document.getElementById("lab"), status = document.getElementById("lab-status"), n = 0;
  function again() { setTimeout(refresh, %(ms)d); }
  function refresh() {
    fetch("%(panel)s", {credentials: "same-origin", cache: "no-store"}).then(function (r) {
      if (r.ok && !r.redirected) {
        return r.text().then(function (body) {
          main.innerHTML = body; main.dataset.refreshes = String(++n); status.textContent = "";
        });
      }
      status.textContent = r.redirected ? "signed out: reload to sign in" : "refresh failed: HTTP " + r.status;
    }).catch(function (e) { status.textContent = "refresh failed: " + e; }).then(again);
  }
  again();
})();
"""


def page(panel_html: str, refresh_s: float = REFRESH_S) -> str:
    """The whole Lab page around a `panel`, which refreshes itself from lab/panel every `refresh_s` seconds
    (relative links: the page is served at /lab, under Locust's --web-base-path too)."""
    script = SCRIPT % {"ms": int(refresh_s * 1000), "panel": "lab/panel"}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Lab · Locust</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body>
<header><h1>Lab</h1><a href="./">back to Locust</a>
<span class="muted">target CPU and memory, Locust CPU, users and throughput on one time axis;
the live verdict. Refreshes every {refresh_s:g} s.</span><span id="lab-status" class="muted"></span></header>
<main id="lab" data-refreshes="0">
{panel_html}
</main>
<script>{script}</script>
</body></html>
"""
