"""Endpoints about the service itself: GET /healthz and GET /openapi.json."""

from __future__ import annotations

import json
import os
from importlib import resources
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from .db import get_storage

bp = Blueprint("meta", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    # Cheap on purpose (no hashing): it is the probe and the instrumentation benchmark's target.
    # pid tells which gunicorn worker answered, handy when checking load spreads over workers.
    try:
        database_ok = get_storage().ping()
    except Exception:  # an unreachable database is what this endpoint reports, not a 500
        database_ok = False
    body = {"status": "ok" if database_ok else "degraded", "database": "ok" if database_ok else "unreachable",
            "pid": os.getpid()}
    return jsonify(body), 200 if database_ok else 503


@bp.get("/openapi.json")
def openapi() -> Response:
    return Response(current_app.extensions["target_app_openapi"], mimetype="application/json")


def load_openapi() -> str:
    """The OpenAPI 3 document shipped with the package, as compact JSON text."""
    return json.dumps(json.loads(resources.files(__package__).joinpath("openapi.json").read_text()))


def init_app(app: Flask) -> None:
    app.extensions["target_app_openapi"] = load_openapi()
    app.register_blueprint(bp)
