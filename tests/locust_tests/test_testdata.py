"""Test data: reproducible Faker users, unique registration names, the data CLI, cleanup's guard."""

from __future__ import annotations

import json
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from locust_tests.plugins.cleanup import CleanupError, delete_users
from locust_tests.plugins.testdata import (
    DATA_PREFIX,
    USERNAME_RE,
    generate_users,
    load_users,
    registration_username,
    write_users,
)
from tests.helpers import PYTHON, REPO_ROOT

BUNDLED = REPO_ROOT / "locust_tests" / "data" / "test_users.json"


def test_same_seed_gives_same_users_and_another_seed_others():
    assert generate_users(50, seed=7) == generate_users(50, seed=7)
    assert generate_users(50, seed=7) != generate_users(50, seed=8)


def test_generated_users_are_valid_distinct_and_prefixed():
    users = generate_users(500, seed=1)
    assert len({u["username"].lower() for u in users}) == 500  # the API compares case-insensitively
    assert len({u["email"].lower() for u in users}) == 500
    for user in users:
        assert USERNAME_RE.fullmatch(user["username"]) and user["username"].startswith(DATA_PREFIX)
        assert 8 <= len(user["password"]) <= 128


def test_data_command_regenerates_the_bundled_file_exactly(tmp_path):
    out = tmp_path / "users.json"
    document = json.loads(BUNDLED.read_text())
    subprocess.run([PYTHON, "-m", "locust_tests.data", "--count", str(len(document["users"])),
                    "--seed", str(document["seed"]), "--out", str(out)], check=True, cwd=REPO_ROOT,
                   capture_output=True)
    assert out.read_text() == BUNDLED.read_text()


def test_write_then_load_round_trips(tmp_path):
    users = generate_users(5, seed=3)
    write_users(users, tmp_path / "u.json", seed=3)
    assert load_users(tmp_path / "u.json") == users
    assert load_users(tmp_path / "u.json", limit=2) == users[:2]


def test_a_broken_users_file_says_how_to_regenerate(tmp_path):
    (tmp_path / "bad.json").write_text('{"users": [{"username": "a b"}]}')
    with pytest.raises(SystemExit, match="python -m locust_tests.data"):
        load_users(tmp_path / "bad.json")
    with pytest.raises(SystemExit, match="does not exist"):
        load_users(tmp_path / "missing.json")


@given(run_id=st.text("0123456789abcdef", min_size=10, max_size=10),
       worker=st.integers(0, 10_000), counter=st.integers(1, 10**12))
def test_registration_usernames_are_valid_for_the_api(run_id, worker, counter):
    assert USERNAME_RE.fullmatch(registration_username(run_id, worker, counter))


def test_registration_usernames_differ_by_run_worker_and_counter():
    names = {registration_username(r, w, c) for r in ("aa11", "bb22") for w in (0, 1, 12) for c in (1, 2, 21)}
    assert len(names) == 2 * 3 * 3
    # "1_21" vs "12_1": the separator keeps worker and counter apart
    assert registration_username("aa", 1, 21) != registration_username("aa", 12, 1)


@pytest.mark.parametrize("prefix", ["", "l", "lt", "a b", "%"])
def test_cleanup_refuses_prefixes_that_could_delete_everyone(prefix):
    with pytest.raises(CleanupError, match="prefix"):
        delete_users("http://127.0.0.1:9", prefix, "token")
