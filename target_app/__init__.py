"""The instrumented Flask API that the load lab drives (registration and login).

`create_app(config)` builds a fresh app (no global app object), as in the Flask tutorial;
`python -m target_app` serves it under gunicorn (see server.py). Its HTTP metrics come from
`loadlab.instrument.instrument(app)`, the library any Flask app uses the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

__all__ = ["create_app", "instrument"]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """A new app configured from DEFAULTS, then the environment (TARGET_APP_*, LAB_ADMIN_TOKEN),
    then `config`. Raises config.ConfigError or db.StorageError with a one-line message if the
    configuration or the database file is unusable."""
    # Imported here, not at module level, so `python -m target_app` can set
    # PROMETHEUS_MULTIPROC_DIR before prometheus_client is first imported.
    from loadlab.instrument import instrument

    from . import admin, app_metrics, auth, db, errors, meta
    from .config import resolve

    app = Flask(__name__)
    app.config.from_mapping(resolve(config))
    app.json.sort_keys = False  # type: ignore[attr-defined]  # DefaultJSONProvider: keep {"error", "message", "field"} in order

    db.init_app(app)
    errors.init_app(app)
    if app.config["METRICS"]:
        registry = app.config["METRICS_REGISTRY"]
        instrument(app, registry)
        app_metrics.init_app(app, registry)
    auth.init_app(app)
    meta.init_app(app)
    admin.init_app(app)
    return app


def __getattr__(name: str) -> Any:
    # `from target_app import instrument` without importing prometheus_client on package import.
    if name == "instrument":
        from loadlab.instrument import instrument
        return instrument
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
