"""Storage of users: a small `Storage` interface and its SQLite implementation.

Views call `get_storage()`, which opens one connection per request (kept in `flask.g`) and
closes it when the request ends, as in the Flask tutorial. Another SQL database plugs in by
implementing `Storage` and setting `STORAGE_CLASS` in the app config.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

from flask import Flask, current_app, g


@dataclass(frozen=True)
class User:
    id: int
    username: str
    email: str
    password_hash: str


class DuplicateUser(Exception):
    """The username or email is already registered; `field` says which."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} already registered")
        self.field = field


class StorageError(Exception):
    """The database cannot be opened or used; the message names it and says what to do."""


class Storage(Protocol):
    """What the API needs from a database. Implementations must enforce uniqueness themselves
    (a database constraint), because concurrent requests run in different processes.
    The class is constructed with the app's DATABASE setting, once per request."""

    def create_user(self, username: str, email: str, password_hash: str) -> int:
        """Insert a user and return its id; raise DuplicateUser if username or email exists."""

    def find_user(self, login: str) -> User | None:
        """The user whose username (or, if `login` contains '@', email) matches, else None."""

    def delete_users_with_prefix(self, prefix: str) -> int:
        """Delete users whose username starts with `prefix`; return how many."""

    # Optional (the API works without them, see auth.PasswordChecks):
    #   password_hash_methods() -> set[str]: the distinct werkzeug methods of the stored hashes,
    #     e.g. {"scrypt:16384:8:1"}, read once per worker at startup;
    #   set_password_hash(user_id, password_hash) -> None: replace a user's hash (rehash on login).

    def ping(self) -> bool:
        """True if the database answers a trivial query."""

    def close(self) -> None: ...


class SQLiteStorage:
    """Users in one SQLite file, in WAL mode so readers never wait for the writer."""

    # How long a writer waits for another process's write lock before giving up. Inserts are
    # single short statements, so this is only reached if the disk stalls.
    BUSY_TIMEOUT_SECONDS = 10.0

    def __init__(self, dsn: str) -> None:
        self.path = dsn
        try:
            # isolation_level=None: autocommit; every statement here is one atomic write.
            self.conn = sqlite3.connect(dsn, timeout=self.BUSY_TIMEOUT_SECONDS, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(describe_unusable_path(dsn, exc)) from exc

    def init_schema(self) -> None:
        try:
            # WAL is a property of the file: setting it once persists for every later connection.
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.executescript(resources.files(__package__).joinpath("schema.sql").read_text())
        except sqlite3.Error as exc:
            raise StorageError(describe_unusable_path(self.path, exc)) from exc

    def create_user(self, username: str, email: str, password_hash: str) -> int:
        try:
            cursor = self.conn.execute(
                "INSERT INTO users (username, email, password_hash, created_at) VALUES (?, ?, ?, ?)",
                (username, email, password_hash, time.time()),
            )
        except sqlite3.IntegrityError as exc:
            # The message names the violated column, e.g. "UNIQUE constraint failed: users.email".
            raise DuplicateUser("email" if "users.email" in str(exc) else "username") from exc
        assert cursor.lastrowid is not None  # an INSERT that succeeded
        return int(cursor.lastrowid)

    def find_user(self, login: str) -> User | None:
        column = "email" if "@" in login else "username"
        row = self.conn.execute(
            f"SELECT id, username, email, password_hash FROM users WHERE {column} = ?", (login,)
        ).fetchone()
        return User(*row) if row else None

    def password_hash_methods(self) -> set[str]:
        # "method$salt$hash" (werkzeug): the method is everything before the first '$'. One scan of
        # the table per worker start.
        rows = self.conn.execute(
            "SELECT DISTINCT substr(password_hash, 1, instr(password_hash, '$') - 1) FROM users"
        ).fetchall()
        return {row[0] for row in rows if row[0]}

    def set_password_hash(self, user_id: int, password_hash: str) -> None:
        self.conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))

    def delete_users_with_prefix(self, prefix: str) -> int:
        # substr instead of LIKE: '_' and '%' are ordinary characters in a prefix like "lt_".
        cursor = self.conn.execute(
            "DELETE FROM users WHERE substr(username, 1, ?) = ?", (len(prefix), prefix)
        )
        return cursor.rowcount

    def ping(self) -> bool:
        try:
            return self.conn.execute("SELECT 1").fetchone() == (1,)
        except sqlite3.Error:
            return False

    def close(self) -> None:
        self.conn.close()


def describe_unusable_path(path: str, exc: BaseException | None = None) -> str:
    """One line saying why the database file at `path` cannot be used and what to do."""
    parent = Path(path).resolve().parent
    if not parent.exists():
        reason = f"directory {parent} does not exist"
    elif not parent.is_dir():
        reason = f"{parent} is not a directory"
    elif not os.access(parent, os.W_OK | os.X_OK):
        reason = f"directory {parent} is not writable"
    elif Path(path).exists() and not os.access(path, os.R_OK | os.W_OK):
        reason = "the file is not readable and writable"
    else:
        reason = str(exc) if exc else "unknown error"
    return f"cannot use database file {path}: {reason}; choose a writable path with --db (or TARGET_APP_DB)"


def storage_class(app: Flask) -> type:
    return app.config.get("STORAGE_CLASS") or SQLiteStorage


def init_db(app: Flask) -> None:
    """Create the schema if it is missing (idempotent; safe while other processes use the file)."""
    storage = storage_class(app)(app.config["DATABASE"])
    try:
        if hasattr(storage, "init_schema"):
            storage.init_schema()
    finally:
        storage.close()


def get_storage() -> Storage:
    """The storage for the current request, opened on first use."""
    if "storage" not in g:
        g.storage = storage_class(current_app)(current_app.config["DATABASE"])
    return g.storage


def close_storage(exc: BaseException | None = None) -> None:
    storage = g.pop("storage", None)
    if storage is not None:
        storage.close()


def init_app(app: Flask) -> None:
    """Create the schema and close each request's connection when the request ends."""
    init_db(app)
    app.teardown_appcontext(close_storage)
