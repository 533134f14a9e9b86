"""The Lab tab in Locust's web UI: the target's resources next to the load, and the live verdict.

    from locust_tests.plugins import labtab  # noqa: F401

On the master (or the one standalone process), when there is a web UI:
- `/lab`: a page with target CPU against the cores it can use, target resident memory, Locust's
  CPU against its cores, users, throughput and p95 on one time axis, and the live verdict; it
  refreshes itself every few seconds (`/lab/panel`). `/lab/data` is the same view as JSON, and
  `/lab/report` the run's report.html once the lab wrote one.
- a **Lab** tab in Locust's own UI (its extended tabs) with the live verdict as a table, and a
  link to `/lab` under "Download Data". The tab's rows ride on the stats request the UI already
  makes every 2 s; nothing new is polled.
Every route is protected like the rest of the UI (`auth_required_if_enabled`, so `--web-login`
covers it), and the page loads nothing from the network.

Where the data comes from:
- under the lab (`loadlab up` sets `LOADLAB_RUN_DIR`): `live.json`, which the lab writes from
  what it already samples (sidecar, target, exporter) with the final verdict's own code;
- without it: Locust's own stats history (users, throughput, p95) and the step hunt's per-step
  judgements (the contract's SLO judge). CPU and memory then need the lab's sidecar, and the tab
  says so.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import locust.stats
from flask import Blueprint, Response, jsonify, request, send_file
from locust import events
from locust.env import Environment

from loadlab.contract.live import LIVE_FILE, LIVE_PANEL_FILE, RUN_DIR_ENV, SCHEMA, STALE_AFTER_S

from . import labview
from .roles import is_coordinator

logger = logging.getLogger(__name__)

REPORT = "report.html"  # what the lab writes into its run directory when a test stops
LEAD_S = 5.0
NO_SIDECAR = ("no sidecar: this Locust runs without the lab, which samples CPU and memory; start it with "
              "`loadlab up` (or `loadlab up --host URL --target-pid PID` for your own API)")


def _epoch(stamp: str) -> float:
    """Locust's history timestamps ("2025-01-01T12:00:00Z") as Unix seconds."""
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def _state(runner: Any) -> str:
    state = getattr(runner, "state", "ready")
    if state in ("spawning", "running"):
        return "running"
    return "ready" if state == "ready" else "stopped"


def locust_view(environment: Environment) -> dict[str, Any]:
    """The view from Locust's own knowledge: its stats history (every 5 s while a test runs) and
    the step hunt's results, as the hunt's SLO judge gave them."""
    from locust_tests.config import test_config

    runner = environment.runner
    history = list(runner.stats.history) if runner is not None else []

    def points(key: str) -> list[list[float]]:
        return [[_epoch(h[key][0]), float(h[key][1] or 0)] for h in history if key in h]

    series = {"users": points("user_count"), "rps": points("current_rps"),
              "p95_ms": points("response_time_percentile_0.95")}
    state = _state(runner)
    now = time.time()
    times = [t for t, _ in series["users"]]
    t0 = times[0] - LEAD_S if times else now - 120.0
    t1 = min(now, times[-1] + 3 * LEAD_S) if times and state == "stopped" else now
    missing = {"target_cpu_cores": NO_SIDECAR, "target_memory_bytes": NO_SIDECAR, "generator_cpu_cores": NO_SIDECAR}
    for key in ("users", "rps", "p95_ms"):
        if not series[key]:
            missing[key] = ("no test has run yet: start one" if state == "ready" else
                            "Locust records its history every 5 s: the first point comes shortly")
    hunt = getattr(environment.shape_class, "hunt", None)
    steps, summary = [], []
    th = hunt.thresholds if hunt is not None else test_config.THRESHOLDS
    if hunt is not None:
        for r in hunt.results:
            steps.append({"step": r.step, "users": r.users, "start": None, "rps": round(r.rps, 2),
                          "p95_ms": None if r.p95_ms is None else round(r.p95_ms, 1),
                          "error_ratio": round(r.error_ratio, 4), "target_cpu_cores": None,
                          "target_cores_available": None, "generator_cpu_cores": None,
                          "generator_cores_available": None, "slo_met": not r.breached, "slo_detail": r.reason})
        if hunt.break_step is not None:
            summary.append(f"break: step {hunt.break_step + 1} ({hunt.plan.users(hunt.break_step)} users) breached "
                           f"the SLO")
        elif hunt.done:
            summary.append(f"breaking point not reached: the SLO held up to {hunt.plan.max_users} users")
        summary.append("knee, capacity and limiting resource: the lab's analysis finds them from throughput and "
                       "CPU; run the test with `loadlab up` to see them here")
    notes = [] if hunt is not None else [
        "no step hunt in this test: per-step SLO judgements come with --scenario step"]
    current = None
    if state == "running":
        current = {"step": hunt.current_step if hunt is not None else None,
                   "users": runner.user_count if runner is not None else 0, "since": None}
    return {"schema": SCHEMA, "source": "locust", "generated_at": now, "state": state, "current": current,
            "steps": steps, "summary": summary, "knee": None, "break": None, "series": series,
            "cores_available": {}, "missing": missing, "notes": notes,
            "slo": {"latency_p95_ms": th.latency_p95_ms, "error_ratio": th.error_ratio}, "report": None,
            "t0": t0, "t1": t1}


class LabTab:
    """The view behind the routes, recomputed only when its inputs changed (at most once per
    live.json the lab writes, or per Locust history point), however many browsers refresh."""

    def __init__(self, environment: Environment, run_dir: Path | None, base: str = "") -> None:
        self.environment = environment
        self.run_dir = run_dir
        self.base = base.rstrip("/")
        self._key: Any = None
        self._view: dict[str, Any] = {}
        self._panel: tuple[Any, str] = (None, "")  # (the view's key, the HTML): rendered only when asked for
        self._drawn: tuple[Any, str] = (None, "")  # (live.html's mtime and size, its text)
        self._rows: tuple[Any, list[dict[str, str]]] = (None, [])

    def _inputs_key(self) -> Any:
        runner = self.environment.runner
        hunt = getattr(self.environment.shape_class, "hunt", None)
        key: tuple[Any, ...] = (int(time.time() // 2), getattr(runner, "state", None),
                                len(runner.stats.history) if runner else 0, len(hunt.results) if hunt else 0)
        if self.run_dir is not None:
            try:
                st = (self.run_dir / LIVE_FILE).stat()
                key = (st.st_mtime_ns, st.st_size, int(time.time() // 10))
            except OSError:
                pass
        return key

    def view(self) -> dict[str, Any]:
        key = self._inputs_key()
        if key == self._key:
            return self._view
        view = self._read_live() if self.run_dir is not None else None
        if view is None:
            view = locust_view(self.environment)
            if self.run_dir is not None:
                view["notes"].insert(0, f"the lab has not written {self.run_dir / LIVE_FILE} yet: its first "
                                        f"analysis comes within a few seconds (meanwhile, Locust's own numbers)")
        self._key, self._view = key, view
        return view

    def _read_live(self) -> dict[str, Any] | None:
        assert self.run_dir is not None
        try:
            view = json.loads((self.run_dir / LIVE_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(view, dict) or view.get("schema") != SCHEMA:
            return None
        age = time.time() - float(view.get("generated_at") or 0)
        if age > STALE_AFTER_S:
            view["stale"] = True
            view.setdefault("notes", []).insert(0, f"the lab's live analysis is {age:.0f} s old: it has stopped "
                                                   f"(is `loadlab up` still running?)")
        return view

    def panel(self) -> str:
        drawn = self._drawn_by_lab()
        if drawn is not None:
            return drawn
        view = self.view()  # no lab, or its analysis stopped: draw here (and say why in the panel)
        if self._panel[0] != self._key:
            self._panel = (self._key, labview.panel(view))
        return self._panel[1]

    def _drawn_by_lab(self) -> str | None:
        """The panel the lab drew (live.html), while the lab keeps it fresh; the file is only read when
        it changed, and never parsed: serving it is all Locust's process does."""
        if self.run_dir is None:
            return None
        try:
            st = (self.run_dir / LIVE_PANEL_FILE).stat()
            if time.time() - st.st_mtime > STALE_AFTER_S:
                return None
            key = (st.st_mtime_ns, st.st_size)
            if self._drawn[0] != key:
                self._drawn = (key, (self.run_dir / LIVE_PANEL_FILE).read_text())
        except OSError:
            return None
        return self._drawn[1]

    def rows(self) -> list[dict[str, str]]:
        view = self.view()
        if self._rows[0] != self._key:
            self._rows = (self._key, tab_rows(view, self.base))
        return self._rows[1]

    def page(self) -> str:
        return labview.page(self.panel())

    def report_path(self) -> Path | None:
        if self.run_dir is None or not (self.run_dir / REPORT).is_file():
            return None
        return self.run_dir / REPORT


def tab_rows(view: dict[str, Any], base: str = "") -> list[dict[str, str]]:
    """The live verdict as rows of Locust's extended-tab table (item, value)."""
    rows = [{"item": "now", "value": labview.now_line(view)}]
    rows += [{"item": f"step {s['step']}", "value": labview.step_line(s)} for s in view.get("steps") or []]
    if view.get("steps"):
        rows += [{"item": "verdict", "value": line} for line in view.get("summary") or []]
    rows += [{"item": "note", "value": line} for line in labview.notes(view)]
    rows.append({"item": "charts", "value": f"{base}/lab: target CPU and memory, Locust CPU, users and throughput "
                                            f"on one time axis"})
    if view.get("report"):
        rows.append({"item": "report", "value": f"{base}/lab/report"})
    return rows


def add_routes(web_ui: Any, tab: LabTab, base: str) -> None:
    lab = Blueprint("loadlab_lab", __name__, url_prefix=base or None)
    protect = web_ui.auth_required_if_enabled

    @lab.route("/lab")
    @protect
    def lab_page() -> Response:
        return Response(tab.page(), mimetype="text/html")

    @lab.route("/lab/panel")
    @protect
    def lab_panel() -> Response:
        return Response(tab.panel(), mimetype="text/html", headers={"Cache-Control": "no-store"})

    @lab.route("/lab/data")
    @protect
    def lab_data() -> Response:
        return jsonify(tab.view())

    @lab.route("/lab/report")
    @protect
    def lab_report() -> Response:
        path = tab.report_path()
        if path is None:
            return Response("no report yet: the lab writes report.html when a test stops (only under "
                            "`loadlab up`)\n", status=404, mimetype="text/plain")
        return send_file(path.resolve(), mimetype="text/html")

    web_ui.app.register_blueprint(lab)

    @web_ui.app.after_request
    def add_tab_rows(response: Response) -> Response:
        # The extended tab's rows travel with the stats request Locust's UI makes anyway.
        if request.endpoint != "locust.request_stats" or response.status_code != 200 or not response.is_json:
            return response
        data = response.get_json(silent=True)
        if isinstance(data, dict):
            data["extended_stats"] = [{"key": "lab", "data": tab.rows()}]
            response.set_data(json.dumps(data))
        return response

    web_ui.template_args["extended_tabs"] = [{"title": "Lab", "key": "lab"}]
    web_ui.template_args["extended_tables"] = [{"key": "lab", "structure": [
        {"key": "item", "title": "Lab"}, {"key": "value", "title": f"live verdict (charts: {base}/lab)"}]}]
    # Locust's UI has no slot for a plain link; the "Download Data" tab lists these as links.
    web_ui.template_args["extended_csv_files"] = [
        {"href": f"{base}/lab", "title": "Lab: target CPU and memory, Locust CPU, users, throughput, live verdict"}]


@events.init.add_listener
def _on_init(environment: Environment, web_ui: Any = None, **_: Any) -> None:
    if web_ui is None or not is_coordinator(environment):
        return
    run_dir = os.environ.get(RUN_DIR_ENV)
    if run_dir:
        # The lab reads Locust's CSV history every few seconds: have Locust flush it every second
        # (Locust's documented knob; its default is 5 s) so the live verdict is not 5 s behind.
        locust.stats.CSV_STATS_FLUSH_INTERVAL_SEC = 1
    options = environment.parsed_options
    base = (getattr(options, "web_base_path", None) or "") if options else ""
    add_routes(web_ui, LabTab(environment, Path(run_dir) if run_dir else None, base), base)
    logger.info("lab tab: %s/lab on the web UI (%s)", base,
                f"the lab's live analysis in {run_dir}" if run_dir else "Locust's own numbers; no lab running")
