-- Users of the target API. The UNIQUE constraints are what make concurrent duplicate
-- registrations safe: the database, not a check-then-insert in Python, decides who wins.
-- NOCASE: "Alice" and "alice" are the same user (and the same address).
CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
    email         TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    created_at    REAL NOT NULL  -- unix time, set by the application
);
