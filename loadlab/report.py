"""report.html: one self-contained file with the verdict, the charts and the step table.

Charts are drawn with matplotlib (Agg, no display needed) and embedded as base64 PNG, so
the report opens anywhere without network access. Every chart shares the same time axis
(seconds since the run started, identical limits and margins) and marks the knee and the
break, so a reader can look straight down the page from a latency jump to the CPU behind it.
"""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the headless backend)

from loadlab.analysis import step_judgement  # noqa: E402
from loadlab.history import LocustHistory  # noqa: E402
from loadlab.profiling import report_section  # noqa: E402
from loadlab.steps import ResourceSeries, resource_timeline  # noqa: E402
from loadlab.verdict import StepPoint, Verdict  # noqa: E402

FIG_SIZE = (11, 2.6)
MARGINS = {"left": 0.07, "right": 0.92, "top": 0.86, "bottom": 0.2}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def csv_series(history: LocustHistory) -> dict[str, list[tuple[float, float]]]:
    """Per-second series from Locust's history: users, req/s and failures/s (counter deltas), p50 and p95."""
    rows = history.rows
    out: dict[str, list[tuple[float, float]]] = {"users": [(r.t, r.users) for r in rows], "rps": [], "fail_per_s": [],
                                                 "p50_ms": [], "p95_ms": []}
    for a, b in zip(rows, rows[1:]):
        dt = b.t - a.t
        if dt > 0 and b.requests >= a.requests:
            out["rps"].append((b.t, (b.requests - a.requests) / dt))
            out["fail_per_s"].append((b.t, max(0, b.failures - a.failures) / dt))
    for r in rows:
        if r.p50_ms is not None and r.requests:
            out["p50_ms"].append((r.t, r.p50_ms))
        if r.p95_ms is not None and r.requests:
            out["p95_ms"].append((r.t, r.p95_ms))
    return out


class _Charts:
    """Figures on one time axis: x = seconds since `t0`, limits [0, span]."""

    def __init__(self, t0: float, span: float, verdict: Verdict) -> None:
        self.t0, self.span, self.verdict = t0, max(span, 1.0), verdict

    def line(self, ax, points, scale: float = 1.0, **style):
        """Plot [(unix time, value)] against seconds since t0, values multiplied by `scale`."""
        return ax.plot([t - self.t0 for t, _ in points], [v * scale for _, v in points], **style)

    def figure(self, title: str, ylabel: str):
        fig, ax = plt.subplots(figsize=FIG_SIZE)
        fig.subplots_adjust(**MARGINS)
        ax.set_title(title, loc="left", fontsize=10)
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, self.span)
        ax.grid(alpha=0.3)
        ax.set_xlabel("seconds since start")
        return fig, ax

    def mark(self, ax) -> None:
        """The knee and the break, on every chart, plus the measured holds shaded."""
        for step in self.verdict.steps:
            ax.axvspan(step.hold_start - self.t0, step.end - self.t0, color="0.85", alpha=0.35, lw=0)
        marks: tuple[tuple[str, StepPoint | None, str], ...] = (
            ("knee", self.verdict.knee, "tab:orange"), ("break", self.verdict.brk, "tab:red"))
        for key, point, color in marks:
            if point:
                x = point.time - self.t0
                ax.axvline(x, color=color, ls="--", lw=1.5)
                rate = getattr(point, "rate", None)  # an open-model break is a rate, not users
                label = f"{key} {rate:g} arrivals/s" if rate is not None else f"{key} {point.users:g} users"
                ax.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"),
                            xytext=(3, -12), textcoords="offset points", color=color, fontsize=8)

    def cpu(self, title: str, timeline: dict[str, list[tuple[float, float]]], role: str, color: str, label: str,
            missing: str, extra=None):
        """CPU of one process group in cores against the cores it can use (the saturation line);
        `extra(ax)` adds what only that chart shows."""
        fig, ax = self.figure(title, "CPU (cores)")
        points = timeline.get(f"{role}_cpu_cores")
        if points:
            self.line(ax, points, color=color, label=label)
            handles = extra(ax) if extra else []
            avail = next((getattr(s, f"{role}_cores_available") for s in self.verdict.steps
                          if getattr(s, f"{role}_cores_available")), None)
            if avail:
                ax.axhline(avail, color=color, ls=":", lw=1, label=f"usable cores ({avail:g})")
            ax.legend(handles=ax.get_lines() + handles, loc="upper left", fontsize=8)
        else:
            ax.text(0.5, 0.5, missing, transform=ax.transAxes, ha="center", color="0.4")
        ax.set_ylim(bottom=0)
        self.mark(ax)
        return fig


def render_charts(verdict: Verdict, history: LocustHistory, resources: ResourceSeries | None,
                  server_p95: list[tuple[float, float]] | None = None) -> list[tuple[str, str]]:
    """[(title, base64 PNG)] for the five charts, and each machine's CPU when the run had several (one
    chart per role); `resources` is the run's `steps.resource_series`, `server_p95` the API's own p95
    over time (`server_latency.p95_series`), drawn beside Locust's."""
    locust = csv_series(history)
    timeline = resource_timeline(resources)
    times = [r.t for r in history.rows]
    t0 = times[0] if times else time.time()
    charts = _Charts(t0, (times[-1] - t0) if times else 1.0, verdict)
    steps = verdict.steps
    slo_ms = verdict.thresholds.latency_p95_ms
    out = []

    fig, ax = charts.figure("Users and throughput", "users")
    charts.line(ax, locust["users"], color="tab:blue", label="users")
    ax2 = ax.twinx()
    charts.line(ax2, locust["rps"], color="tab:green", lw=1, label="req/s")
    ax2.scatter([s.hold_start - t0 for s in steps], [s.rps for s in steps], color="tab:green", s=14, zorder=3)
    if verdict.capacity_rps and verdict.breaking_point_reached:
        ax2.axhline(verdict.capacity_rps, color="tab:green", ls=":", lw=1)
    ax2.set_ylabel("req/s")
    ax.legend(handles=ax.get_lines() + ax2.get_lines()[:1], loc="upper left", fontsize=8)
    charts.mark(ax)
    out.append(("Users and throughput", _png(fig)))

    fig, ax = charts.figure("Failures", "failures/s")
    charts.line(ax, locust["fail_per_s"], color="tab:red")
    ax.set_ylim(bottom=0)
    charts.mark(ax)
    out.append(("Failures", _png(fig)))

    fig, ax = charts.figure("Latency (Locust, ~10 s window) with the SLO", "ms")
    charts.line(ax, locust["p50_ms"], color="tab:blue", label="p50")
    charts.line(ax, locust["p95_ms"], color="tab:purple", label="p95")
    if server_p95:  # the gap to the client's p95 is the network plus the queue in front of the app
        charts.line(ax, server_p95, color="tab:cyan", lw=1, label="server-side p95 (the API's own metrics)")
    ax.scatter([s.hold_start - t0 for s in steps if s.p95_ms is not None],
               [s.p95_ms for s in steps if s.p95_ms is not None], color="tab:purple", s=14, zorder=3,
               label="p95 per step (hold)")
    ax.axhline(slo_ms, color="tab:red", ls=":", label=f"SLO p95 {slo_ms:g} ms")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    charts.mark(ax)
    out.append(("Latency", _png(fig)))

    def target_memory(ax) -> list:
        # RSS is on a twin axis: its line is handed back so the legend names the grey line too.
        ax2 = ax.twinx()
        charts.line(ax2, timeline.get("target_memory_bytes", []), scale=1 / 2**20, color="tab:gray", lw=1,
                    label="target RSS")
        ax2.set_ylabel("RSS (MiB)")
        return ax2.get_lines()

    def host_busy(ax) -> list:
        # With a remote target, the generator's own machine (host_cpu_busy_cores is the target's then).
        busy = timeline.get("generator_host_cpu_busy_cores", timeline.get("host_cpu_busy_cores", []))
        charts.line(ax, busy, color="0.6", lw=1, label="host busy (all processes)")
        return []

    out.append(("Target CPU and memory", _png(charts.cpu(
        "Target CPU and memory", timeline, "target", "tab:orange", "target CPU",
        "no target CPU samples (plain Locust CSV or --host target)", target_memory))))
    out.append(("Generator CPU", _png(charts.cpu(
        "Load generator (Locust) CPU", timeline, "generator", "tab:brown", "Locust CPU",
        "no generator CPU samples (plain Locust CSV)", host_busy))))
    for role, what in (("generator", "Load generator"), ("target", "Target")):
        fig = machine_cpu_chart(charts, role, f"{what} CPU per machine (per step's hold)")
        if fig is not None:
            out.append((f"{what} CPU per machine", _png(fig)))
    return out


def machine_cpu_chart(charts: _Charts, role: str, title: str):
    """Each machine's CPU per step against its usable cores (its dotted line, same colour), from the
    steps' `generator_machines` (--remote-workers) or `target_machines` (several --target-sidecar);
    None for a run on one machine. A step without a machine's samples leaves a gap in its line."""
    by_machine: dict[str, list[tuple[float, float | None, float | None]]] = {}
    for step in charts.verdict.steps:
        for m in getattr(step, f"{role}_machines") or []:
            by_machine.setdefault(m["instance"], []).append(
                ((step.hold_start + step.end) / 2, m.get("cpu_cores"), m.get("cores_available")))
    if not by_machine:
        return None
    fig, ax = charts.figure(title, "CPU (cores)")
    for i, (instance, points) in enumerate(by_machine.items()):
        color = f"C{i % 10}"
        xs = [t - charts.t0 for t, _, _ in points]
        ax.plot(xs, [float("nan") if v is None else v for _, v, _ in points], color=color, marker="o", ms=3,
                label=instance)
        usable = next((a for _, _, a in points if a), None)
        if usable:
            ax.axhline(usable, color=color, ls=":", lw=1)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=7)
    charts.mark(ax)
    return fig


def render_open_charts(verdict: Verdict, history: LocustHistory, series: dict[str, list[tuple[float, float]]]
                       ) -> list[tuple[str, str]]:
    """The open model's two charts: offered rate vs achieved throughput with late and dropped
    arrivals, and per step the corrected latency quantiles beside the uncorrected ones."""
    times = [r.t for r in history.rows]
    t0 = times[0] if times else time.time()
    charts = _Charts(t0, (times[-1] - t0) if times else 1.0, verdict)
    out = []
    fig, ax = charts.figure("Offered rate vs achieved throughput (open model)", "per second")
    charts.line(ax, series.get("offered", []), color="tab:blue", label="offered (target rate)")
    charts.line(ax, series.get("scheduled", []), color="tab:cyan", lw=1, label="arrivals scheduled")
    charts.line(ax, series.get("achieved", []), color="tab:green", lw=1, label="achieved (completed)")
    if verdict.capacity_rps is not None:
        ax.axhline(verdict.capacity_rps, color="tab:green", ls=":", lw=1, label=f"capacity {verdict.capacity_rps:g}")
    ax2 = ax.twinx()
    charts.line(ax2, series.get("late", []), color="tab:orange", lw=1, label="late/s")
    charts.line(ax2, series.get("dropped", []), color="tab:red", lw=1, label="dropped/s")
    ax2.set_ylabel("late, dropped per s")
    ax.set_ylim(bottom=0)
    ax2.set_ylim(bottom=0)
    ax.legend(handles=ax.get_lines() + ax2.get_lines(), loc="upper left", fontsize=8)
    charts.mark(ax)
    out.append(("Offered vs achieved", _png(fig)))

    fig, ax = charts.figure("Latency per step: corrected (from the scheduled start) vs uncorrected", "ms")
    steps = verdict.rate_steps
    for attr, color, label in (("corrected_p50_ms", "tab:blue", "corrected p50"),
                               ("corrected_p95_ms", "tab:purple", "corrected p95"),
                               ("corrected_p99_ms", "tab:red", "corrected p99"),
                               ("p95_ms", "tab:gray", "uncorrected p95 (as Locust measures)")):
        points = [(s.hold_start, getattr(s, attr)) for s in steps if getattr(s, attr) is not None]
        charts.line(ax, points, color=color, marker="o", ms=3, lw=1, label=label,
                    ls="--" if attr == "p95_ms" else "-")
    slo_ms = verdict.thresholds.latency_p95_ms
    ax.axhline(slo_ms, color="tab:red", ls=":", label=f"SLO p95 {slo_ms:g} ms")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    charts.mark(ax)
    out.append(("Corrected vs uncorrected latency", _png(fig)))
    return out


def _rate_step_table(verdict: Verdict) -> str:
    esc = html.escape
    head = ("<tr><th>step</th><th>offered /s</th><th>scheduled /s</th><th>achieved req/s</th><th>late</th>"
            "<th>dropped</th><th>p50 ms corr. (uncorr.)</th><th>p95 ms corr. (uncorr.)</th>"
            "<th>p99 ms corr. (uncorr.)</th><th>errors</th><th>target CPU</th><th>Locust CPU</th>"
            "<th>sustained</th></tr>")
    rows = []
    break_time = verdict.brk.time if verdict.brk else None
    for step, summary in zip(verdict.rate_steps, verdict.steps):
        mark = " break" if step.start == break_time else ""
        quantiles = "".join(f"<td>{_fmt(getattr(step, 'corrected_' + q), 0)} ({_fmt(getattr(step, q), 0)})</td>"
                            for q in ("p50_ms", "p95_ms", "p99_ms"))
        sustained = "yes" if step.sustained else f"no: {esc(step.detail)}"
        rows.append(f'<tr class="{mark.strip()}"><td>{step.index}{esc(mark)}</td><td>{step.offered_rps:g}</td>'
                    f"<td>{step.scheduled_rps:.1f}</td><td>{step.achieved_rps:.1f}</td><td>{step.late}</td>"
                    f"<td>{step.dropped}</td>{quantiles}<td>{step.error_ratio:.2%}</td>"
                    f"<td>{_fmt(summary.target_cpu_cores, 2)}</td><td>{_fmt(summary.generator_cpu_cores, 2)}</td>"
                    f'<td style="text-align:left">{sustained}</td></tr>')
    return f'<table id="rate-steps">{head}{"".join(rows)}</table>'
def render_load_curve(verdict: Verdict) -> str:
    """Throughput against users (base64 PNG): every step as a dot numbered in the order it ran, so
    an adaptive hunt's uneven, out-of-order steps read as one curve X(N); with the linear asymptote
    g0 x N and the capacity, which meet at the knee, and the break."""
    fig, ax = plt.subplots(figsize=FIG_SIZE)
    fig.subplots_adjust(**MARGINS)
    ax.set_title("Throughput against users (each step numbered in the order it ran)", loc="left", fontsize=10)
    ax.set_xlabel("users")
    ax.set_ylabel("req/s")
    ax.grid(alpha=0.3)
    steps = verdict.steps
    th = verdict.thresholds
    ok = [s for s in steps if not step_judgement(s, th).breached]
    over = [s for s in steps if step_judgement(s, th).breached]
    ax.scatter([s.users for s in ok], [s.rps for s in ok], color="tab:green", s=18, zorder=3, label="step within the SLO")
    ax.scatter([s.users for s in over], [s.rps for s in over], color="tab:red", marker="x", s=24, zorder=3,
               label="step over the SLO")
    for order, s in enumerate(steps, start=1):
        ax.annotate(str(order), (s.users, s.rps), xytext=(3, 3), textcoords="offset points", fontsize=7, color="0.35")
    top = max((s.users for s in steps), default=1)
    knee, cap = verdict.knee, verdict.capacity_rps
    if knee is not None and knee.light_load_rps_per_user:
        ax.plot([0, knee.users], [0, knee.users * knee.light_load_rps_per_user], color="tab:blue", ls="--", lw=1,
                label="light load: g0 x users")
        ax.axvline(knee.users, color="tab:orange", ls="--", lw=1.5, label=f"knee {knee.users:g} users")
    if cap and verdict.breaking_point_reached:
        ax.axhline(cap, color="tab:green", ls=":", lw=1, label=f"capacity {cap:g} req/s")
    if verdict.brk is not None:
        ax.axvline(verdict.brk.users, color="tab:red", ls="--", lw=1.5, label=f"break {verdict.brk.users:g} users")
    ax.set_xlim(0, top * 1.05)
    ax.set_ylim(0, 1.2 * max([s.rps for s in steps] + [cap or 0.0, 1.0]))
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def load_curve_section(verdict: Verdict) -> str:
    """The closed model's X(N) chart; an open-model run's users are request slots, not load."""
    return ('<h2>Against users</h2>\n<figure><img class="chart" alt="Throughput against users" '
            f'src="data:image/png;base64,{render_load_curve(verdict)}"></figure>')


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_html(verdict: Verdict, history: LocustHistory, resources: ResourceSeries | None, title: str,
                open_series: dict[str, list[tuple[float, float]]] | None = None,
                server_p95: list[tuple[float, float]] | None = None) -> str:
    th = verdict.thresholds
    slo_ms = th.latency_p95_ms
    charts = render_charts(verdict, history, resources, server_p95)
    if verdict.open_model:  # offered vs achieved first: in an open model that is the headline
        charts = render_open_charts(verdict, history, open_series or {}) + charts
    esc = html.escape
    t0 = history.rows[0].t if history.rows else 0.0
    summary = "".join(f"<li>{esc(line)}</li>" for line in verdict.summary())
    status = ("breaking point reached" if verdict.breaking_point_reached else "breaking point not reached")
    if verdict.functional_failure is not None:
        status = "the API failed functionally: no capacity result"
    cards = [
        ("knee (users)", _fmt(verdict.knee.users) if verdict.knee else "none"),
        ("break (users)", _fmt(verdict.brk.users) if verdict.brk else "none"),
        ("capacity (req/s)", ("≥ " if verdict.capacity_is_lower_bound else "") + _fmt(verdict.capacity_rps)),
        ("limiting resource", verdict.limiting_resource or "unknown"),
    ]
    if verdict.open_model:
        cards = [
            ("break (arrivals/s offered)", _fmt(verdict.brk.rate) if verdict.brk and verdict.brk.rate else "none"),
            ("capacity (req/s)", _fmt(verdict.capacity_rps)),
            ("max sustained rate (/s)", _fmt(verdict.max_sustained_rate)),
            ("limiting resource", verdict.limiting_resource or "unknown"),
        ]
    card_html = "".join(f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div></div>'
                        for k, v in cards)
    images = "".join(
        f'<figure><img class="chart" alt="{esc(name)}" src="data:image/png;base64,{data}"></figure>'
        for name, data in charts)
    head = ("<tr><th>step</th><th>users</th><th>t (s)</th><th>hold (s)</th><th>req/s</th><th>p50 ms</th>"
            "<th>p95 ms</th><th>server p95 ms</th><th>errors</th><th>target CPU</th><th>target RSS MiB</th><th>Locust CPU</th>"
            "<th>SLO</th></tr>")
    rows = []
    break_time = verdict.brk.time if verdict.brk else None
    knee_time = verdict.knee.time if verdict.knee else None
    for s in verdict.steps:
        mark = " knee" if s.start == knee_time else ""
        mark += " break" if s.start == break_time else ""
        slo_ok = not step_judgement(s, th).breached
        mem = s.target_memory_bytes
        rows.append(
            f'<tr class="{mark.strip()}"><td>{s.index}{esc(mark)}</td><td>{s.users}</td>'
            f'<td>{s.start - t0:.0f}</td><td>{s.end - s.hold_start:.0f}</td><td>{s.rps:.1f}</td>'
            f'<td>{_fmt(s.p50_ms, 0)}</td><td>{_fmt(s.p95_ms, 0)}</td><td>{_fmt(s.server_p95_ms, 0)}</td>'
            f'<td>{s.error_ratio:.2%}</td>'
            f'<td>{_fmt(s.target_cpu_cores, 2)}</td><td>{_fmt(None if mem is None else mem / 2**20, 0)}</td>'
            f'<td>{_fmt(s.generator_cpu_cores, 2)}</td><td>{"ok" if slo_ok else "breach"}</td></tr>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1020px; color: #222; }}
h1 {{ font-size: 1.4em; margin-bottom: 0.2em; }} .status {{ color: #555; margin-top: 0; }}
.cards {{ display: flex; gap: 0.8em; margin: 1em 0; }}
.card {{ border: 1px solid #ddd; border-radius: 6px; padding: 0.5em 0.9em; flex: 1; }}
.card .k {{ font-size: 0.8em; color: #666; }} .card .v {{ font-size: 1.3em; font-weight: 600; }}
figure {{ margin: 0.3em 0; }} img.chart {{ width: 100%; display: block; }}
table {{ border-collapse: collapse; width: 100%; font-size: 0.85em; }}
th, td {{ border-bottom: 1px solid #eee; padding: 0.25em 0.4em; text-align: right; }}
tr.knee td {{ background: #fff3e0; }} tr.break td {{ background: #fdecea; }}
.muted {{ color: #777; font-size: 0.85em; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p class="status" id="verdict-status">{esc(status)}</p>
<ul id="verdict">{summary}</ul>
<div class="cards">{card_html}</div>
<h2>On one time axis</h2>
<p class="muted">Dashed lines: knee (orange) and break (red). Grey bands: the part of each step the verdict
measures (the hold, after the transient). Dots: the per-step values the verdict uses.</p>
{images}
{"" if verdict.open_model else load_curve_section(verdict)}
{report_section(verdict)}
<h2>Steps</h2>
{_rate_step_table(verdict) if verdict.open_model else f'<table id="steps">{head}{"".join(rows)}</table>'}
<p class="muted">SLO: p95 &le; {slo_ms:g} ms and errors &le; {th.error_ratio:.0%}
(the thresholds this run was judged by). p95 per step: {esc(', '.join(sorted({s.p95_source for s in verdict.steps})) or '–')}.
Server p95: the API's own request histogram over the same hold (its metrics, when the lab read them); the gap to
Locust's p95 is the network plus the queue in front of the app.
Generated {esc(time.strftime('%Y-%m-%d %H:%M:%S'))} by loadlab.</p>
<script>
// Mark each chart that decoded (a browser check of the report, and a visible hint if one did not).
window.addEventListener("load", () => {{
  for (const img of document.querySelectorAll("img.chart")) {{
    img.classList.add(img.naturalWidth > 0 ? "decoded" : "broken");
  }}
}});
</script>
</body></html>
"""


def write_report(path: Path, verdict: Verdict, history: LocustHistory, resources: ResourceSeries | None,
                 title: str, open_series: dict[str, list[tuple[float, float]]] | None = None,
                 server_p95: list[tuple[float, float]] | None = None) -> Path:
    """`open_series`: an open-model run's `openmodel.timeline` (offered, scheduled, achieved, late, dropped);
    `server_p95`: the API's own p95 over time, from its metrics."""
    path = Path(path)
    path.write_text(render_html(verdict, history, resources, title, open_series, server_p95))
    return path
