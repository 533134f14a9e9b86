"""Regenerate the login test users: `python -m locust_tests.data --count 1000 --seed 42 [--out PATH]`.

The same count and seed give the same file (with the same Faker version)."""

from __future__ import annotations

import argparse
from pathlib import Path

from locust_tests.plugins.testdata import generate_users, write_users

DEFAULT_OUT = Path(__file__).resolve().parent / "test_users.json"
DEFAULT_SEED = 42


def main(argv: list[str] | None = None) -> int:
    from locust_tests.config.test_config import USERS_COUNT

    parser = argparse.ArgumentParser(prog="python -m locust_tests.data", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=USERS_COUNT,
                        help=f"how many users (default USERS_COUNT={USERS_COUNT})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"Faker seed (default {DEFAULT_SEED})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output file (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    users = generate_users(args.count, args.seed)
    write_users(users, args.out, args.seed)
    print(f"wrote {len(users)} test users to {args.out} (seed {args.seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
