"""Configuration of the target API: defaults, password-hash profiles and environment variables.

`create_app(config)` starts from `DEFAULTS`, overlays `from_env()` and then the mapping it was
given, so tests pass a mapping and `python -m target_app` passes what its flags said.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from typing import Any

# Password-hash profiles (werkzeug.security method strings). Cost per hash measured with
# benchmarks/bench_password_hash.py; see the README for the figures.
# - default: scrypt N=2^14, r=8 (16 MiB per hash), the scrypt paper's interactive-login setting,
#   about 50 ms per hash on the 2-core lab box. The hash is what makes /client_login CPU-bound, so
#   this cost is what puts the login breaking point where a real API's would be (a few dozen
#   req/s per 2 workers). Werkzeug's own default, scrypt N=2^15, costs about 120 ms here.
# - lab: still salted scrypt, 16x cheaper, for quick runs and tests where the hash is not the point.
HASH_PROFILES: dict[str, str] = {
    "default": "scrypt:16384:8:1",
    "lab": "scrypt:1024:8:1",
}

DEFAULTS: dict[str, Any] = {
    # SQLite file; relative paths are relative to the working directory.
    "DATABASE": "target_app.db",
    "HASH_PROFILE": "default",
    # werkzeug method string; when None it comes from HASH_PROFILE.
    "PASSWORD_HASH_METHOD": None,
    # Bodies above this many bytes get 413. The largest valid body is well under 1 KiB.
    "MAX_CONTENT_LENGTH": 16 * 1024,
    # Login tokens expire after this many seconds.
    "TOKEN_MAX_AGE": 3600,
    # Instrument the app with Prometheus metrics and serve /metrics.
    "METRICS": True,
    # A prometheus_client CollectorRegistry for single-process use (tests); None = the default one.
    "METRICS_REGISTRY": None,
    # DELETE /admin/users exists only when this is a non-empty string.
    "ADMIN_TOKEN": None,
    # Signs login tokens. None: a random key per process (see server.py, which shares one key
    # between all gunicorn workers through TARGET_APP_SECRET_KEY).
    "SECRET_KEY": None,
    # Another storage backend: a class implementing db.Storage, or None for SQLite.
    "STORAGE_CLASS": None,
}

# Environment variables read by create_app (the CLI's own variables are in __main__.py).
ENV_VARS: dict[str, str] = {
    "TARGET_APP_DB": "DATABASE",
    "TARGET_APP_HASH_PROFILE": "HASH_PROFILE",
    "TARGET_APP_MAX_CONTENT_LENGTH": "MAX_CONTENT_LENGTH",
    "TARGET_APP_TOKEN_MAX_AGE": "TOKEN_MAX_AGE",
    "TARGET_APP_SECRET_KEY": "SECRET_KEY",
    "LAB_ADMIN_TOKEN": "ADMIN_TOKEN",
}
_INT_KEYS = {"MAX_CONTENT_LENGTH", "TOKEN_MAX_AGE"}


class ConfigError(ValueError):
    """A configuration value is unusable; the message names it and says what to do."""


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings given by environment variables (only those that are set and non-empty)."""
    environ = os.environ if environ is None else environ
    settings: dict[str, Any] = {}
    for var, key in ENV_VARS.items():
        raw = environ.get(var, "")
        if raw == "":
            continue
        if key in _INT_KEYS:
            try:
                settings[key] = int(raw)
            except ValueError:
                raise ConfigError(f"{var}={raw!r} is not an integer: set it to a whole number") from None
        else:
            settings[key] = raw
    return settings


def resolve(config: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """DEFAULTS, overlaid by the environment, overlaid by `config`; checked and completed."""
    settings = {**DEFAULTS, **from_env(environ), **(config or {})}
    profile = settings["HASH_PROFILE"]
    if settings["PASSWORD_HASH_METHOD"] is None:
        if profile not in HASH_PROFILES:
            raise ConfigError(
                f"unknown hash profile {profile!r}: choose one of {', '.join(sorted(HASH_PROFILES))}"
            )
        settings["PASSWORD_HASH_METHOD"] = HASH_PROFILES[profile]
    for key in _INT_KEYS:
        if not isinstance(settings[key], int) or settings[key] <= 0:
            raise ConfigError(f"{key}={settings[key]!r} must be a positive integer")
    if not settings["SECRET_KEY"]:
        settings["SECRET_KEY"] = secrets.token_hex(32)
    if not settings["ADMIN_TOKEN"]:
        settings["ADMIN_TOKEN"] = None
    return settings
