"""Seeding and cleanup against the real target: idempotent seeding, the cleanup CLI and its errors."""

from __future__ import annotations

import subprocess

from locust_tests.plugins.cleanup import delete_users
from locust_tests.plugins.seeding import register_users
from locust_tests.plugins.testdata import generate_users
from tests.helpers import PYTHON, REPO_ROOT


def cleanup_cli(*args: str, token: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "locust_tests.plugins.cleanup", *args], cwd=REPO_ROOT, text=True,
                          capture_output=True, timeout=60, env={"PATH": "/usr/bin:/bin", "LAB_ADMIN_TOKEN": token})


def users_with_prefix(prefix: str, count: int) -> list[dict[str, str]]:
    return [{**user, "username": f"{prefix}{i}", "email": f"{prefix}{i}@example.com"}
            for i, user in enumerate(generate_users(count, seed=5))]


def test_seeding_twice_creates_once_and_then_finds_them(target):
    users = users_with_prefix("lt_seedtwice_", 6)
    first = register_users(target.url, users)
    second = register_users(target.url, users)
    assert (first.created, first.existing, first.failed) == (6, 0, 0)
    assert (second.created, second.existing, second.failed) == (0, 6, 0)
    assert delete_users(target.url, "lt_seedtwice_", target.token) == 6


def test_cleanup_cli_deletes_by_prefix_and_only_that_prefix(target):
    register_users(target.url, users_with_prefix("lt_clia_", 3) + users_with_prefix("lt_clib_", 2))
    result = cleanup_cli("--host", target.url, "--prefix", "lt_clia_", token=target.token)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"deleted 3 users starting with 'lt_clia_' from {target.url}" in result.stdout
    assert delete_users(target.url, "lt_clib_", target.token) == 2  # the other prefix was untouched


def test_cleanup_cli_with_a_wrong_token_says_what_to_do(target):
    result = cleanup_cli("--host", target.url, "--prefix", "lt_", token="not-the-token")
    assert result.returncode == 1
    assert "LAB_ADMIN_TOKEN" in result.stdout and "Traceback" not in result.stdout + result.stderr
