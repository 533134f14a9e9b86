"""Regenerate the login test users: `python -m locust_tests.data --count 1000 --seed 42 [--out PATH]`.

The same count and seed give the same file (with the same Faker version)."""

from __future__ import annotations

import argparse
import sys
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
    try:
        write_users(users, args.out, args.seed)
    except OSError as exc:
        print(f"{parser.prog}: error: {out_problem(args.out, exc)}", file=sys.stderr)
        return 2
    print(f"wrote {len(users)} test users to {args.out} (seed {args.seed})")
    return 0


def out_problem(out: Path, exc: OSError) -> str:
    """One line on why `out` could not be written, naming the path at fault."""
    def is_file_or_dir(path: Path) -> tuple[bool, bool]:
        try:
            return path.is_file(), path.is_dir()
        except OSError:  # e.g. a name too long to look up
            return False, False

    if is_file_or_dir(out)[1]:
        return f"--out {out} is a directory: give a file name, e.g. {out / 'test_users.json'}"
    above = next((p for p in out.parents if is_file_or_dir(p)[0]), None)
    if above is not None:
        return f"--out {out} lies under {above}, which is a file, not a directory: give another --out"
    return f"--out {out} cannot be written ({exc.strerror or exc}): give another --out"


if __name__ == "__main__":
    raise SystemExit(main())
