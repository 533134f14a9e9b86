"""Test users: the Faker-generated login data set, and fresh registration users.

- `data/test_users.json` is written by `python -m locust_tests.data --count N --seed S`; the same
  seed gives the same file (with the same Faker version). Its usernames all start with
  DATA_PREFIX, so cleanup can remove exactly them.
- Registration users are named `lt_<run id>_<worker index>_<counter>`: the run id is shared by the
  master and its workers and differs between runs, the worker index differs between the processes
  of a run, and the counter between the users of a process, so names never collide, across
  `--processes`, master/worker machines and repeated runs alike.

Passwords here are test data only. No Locust import: `loadlab data` and tests use this directly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from faker import Faker

PREFIX = "lt_"  # every user this suite creates starts with it
DATA_PREFIX = "lt_data_"  # the login data set (run ids are hex, so never "data")
USERNAME_RE = re.compile(r"[A-Za-z0-9_.\-]{3,64}")  # what the target API accepts
PASSWORD_LENGTH = 16
FILE_VERSION = 1


def run_prefix(run_id: str) -> str:
    """Prefix shared by all registration users of one run."""
    return f"{PREFIX}{run_id}_"


def registration_username(run_id: str, worker: int, counter: int) -> str:
    name = f"{run_prefix(run_id)}{worker}_{counter}"
    if not USERNAME_RE.fullmatch(name):
        raise ValueError(f"username {name!r} is not valid for the API (run id {run_id!r} too long or odd?)")
    return name


def registration_user(username: str, faker: Faker, with_name: bool = True) -> dict[str, str]:
    """A new user: the unique username, an address derived from it (emails are unique too), a
    random password and a display name (the placeholders of the suite's body templates). The
    login data set is written without names (`with_name=False`: the same seed gives the same file
    as before names existed); `request_fields` gives its users one."""
    user = {
        "username": username,
        "email": f"{username}@{faker.safe_domain_name()}",
        "password": faker.password(length=PASSWORD_LENGTH),
    }
    if with_name:
        user["name"] = faker.name()
    return user


_name_faker: Faker | None = None


def display_name(username: str) -> str:
    """A realistic display name, the same for a username every time (the login data set's users
    carry none in the file: their {name} is made from the username)."""
    global _name_faker
    if _name_faker is None:
        _name_faker = Faker()
    _name_faker.seed_instance(username)
    return _name_faker.name()


def request_fields(user: dict[str, str]) -> dict[str, str]:
    """What a body template's placeholders are filled with: username, email, password and name."""
    return {"username": user["username"], "email": user["email"], "password": user["password"],
            "name": user.get("name") or display_name(user["username"])}


def generate_users(count: int, seed: int) -> list[dict[str, str]]:
    """`count` realistic, distinct login users; the same (count, seed) gives the same list."""
    if count < 1:
        raise ValueError(f"count must be at least 1 (got {count})")
    faker = Faker()
    faker.seed_instance(seed)
    users = []
    for i in range(1, count + 1):
        # Faker names repeat in large sets; the index keeps usernames (and so emails) distinct.
        handle = re.sub(r"[^A-Za-z0-9_.\-]", "", faker.user_name())[:40] or "user"
        users.append(registration_user(f"{DATA_PREFIX}{i:05d}_{handle}", faker, with_name=False))
    return users


def write_users(users: list[dict[str, str]], path: str | Path, seed: int) -> None:
    header = {
        "version": FILE_VERSION,
        "generated_by": f"python -m locust_tests.data --count {len(users)} --seed {seed}",
        "note": "test data only: these passwords protect nothing",
        "seed": seed,
    }
    # One user per line: a regenerated file diffs line by line.
    head = json.dumps(header, indent=1)[:-2]
    body = ",\n  ".join(json.dumps(user) for user in users)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(f'{head},\n "users": [\n  {body}\n ]\n}}\n', encoding="utf-8")


def load_users(path: str | Path, limit: int | None = None) -> list[dict[str, str]]:
    """The users of a test_users.json (the first `limit` of them), checked, or SystemExit with
    a message saying how to regenerate the file."""
    regenerate = "regenerate it with `python -m locust_tests.data --count 1000 --seed 42`"
    try:
        document: Any = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SystemExit(f"test users file {path} does not exist: {regenerate}") from None
    except (OSError, ValueError) as exc:
        raise SystemExit(f"test users file {path} is unreadable ({exc}): {regenerate}") from None
    users = document.get("users") if isinstance(document, dict) else None
    if not isinstance(users, list) or not users:
        raise SystemExit(f"test users file {path} has no \"users\" list: {regenerate}")
    for n, user in enumerate(users):
        if not (isinstance(user, dict) and all(isinstance(user.get(k), str) for k in ("username", "email", "password"))
                and USERNAME_RE.fullmatch(user["username"])):
            raise SystemExit(f"test users file {path}: user #{n} needs string username (letters, digits, "
                             f"'_', '.', '-'; 3-64 characters), email and password: {regenerate}")
    return users[:limit] if limit else users
