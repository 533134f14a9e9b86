"""An API deliberately not shaped like the bundled target, to prove the lab works on someone else's.

Different paths and body fields, a registration that answers 200 with {"user": {"id": N}}, a
login that answers {"access_token": ...}, werkzeug's default password hashing (scrypt), no
/healthz and no admin endpoint. It is plain Flask + SQLite with the lab's instrumentation added
the way a user adds it (`instrument(app)`, one line), run under plain gunicorn with the lab's
config module:

    OTHER_API_DB=/tmp/other.db LOADLAB_METRICS_PORT=9101 \
        gunicorn -c python:loadlab.gunicorn_conf -w 2 -b 127.0.0.1:8000 tests.loadlab.other_api:app

    POST /api/v2/accounts    {"account": {"login", "mail", "secret", "display_name"}}
                             -> 200 {"user": {"id": N}} | 409 {"detail": ...} | 422 {"detail": ...}
    POST /api/v2/auth/token  {"login", "secret"} -> 200 {"access_token", "token_type"} | 401 {"detail": ...}
    GET  /api/v2/status      -> 200 {"ok": true}
    GET  /metrics            -> every worker's totals (and on LOADLAB_METRICS_PORT, from the arbiter)

The suite drives it with settings only (tests/loadlab/test_your_api.py, README "Use it on your own API").
"""

from __future__ import annotations

import os
import secrets
import sqlite3

from flask import Flask, g, jsonify, request
from werkzeug.security import check_password_hash, generate_password_hash

from loadlab.instrument import instrument

SCHEMA = """CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    login TEXT NOT NULL UNIQUE,
    mail TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL DEFAULT '',
    secret_hash TEXT NOT NULL
)"""


def create_app(db_path: str | None = None) -> Flask:
    app = Flask("other_api")
    instrument(app)
    path = db_path or os.environ.get("OTHER_API_DB", "other_api.db")
    with sqlite3.connect(path, timeout=30) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(SCHEMA)
    # Compared against when the login is unknown, so an unknown login costs what a wrong secret does.
    dummy_hash = generate_password_hash(secrets.token_hex(8))

    def db() -> sqlite3.Connection:
        if "db" not in g:
            g.db = sqlite3.connect(path, timeout=30)
        return g.db

    @app.teardown_appcontext
    def close(_exc: BaseException | None) -> None:
        conn = g.pop("db", None)
        if conn is not None:
            conn.close()

    @app.post("/api/v2/accounts")
    def create_account():
        account = (request.get_json(silent=True) or {}).get("account")
        fields = ("login", "mail", "secret")
        if not isinstance(account, dict) or not all(isinstance(account.get(k), str) and account[k] for k in fields):
            return jsonify(detail="account.login, account.mail and account.secret are required"), 422
        try:
            with db() as conn:
                cursor = conn.execute(
                    "INSERT INTO accounts (login, mail, display_name, secret_hash) VALUES (?, ?, ?, ?)",
                    (account["login"], account["mail"], str(account.get("display_name") or ""),
                     generate_password_hash(account["secret"])))
        except sqlite3.IntegrityError:
            return jsonify(detail="login or mail already taken"), 409
        return jsonify(user={"id": cursor.lastrowid})

    @app.post("/api/v2/auth/token")
    def token():
        body = request.get_json(silent=True) or {}
        login, secret = body.get("login"), body.get("secret")
        if not isinstance(login, str) or not isinstance(secret, str):
            return jsonify(detail="login and secret are required"), 422
        row = db().execute("SELECT secret_hash FROM accounts WHERE login = ?", (login,)).fetchone()
        if not check_password_hash(row[0] if row else dummy_hash, secret) or row is None:
            return jsonify(detail="invalid credentials"), 401
        return jsonify(access_token=secrets.token_urlsafe(24), token_type="bearer")

    @app.get("/api/v2/status")
    def status():
        return jsonify(ok=True)

    return app


app = create_app()
