"""Cost per password hash of each target_app hash profile (and of two reference methods).

The hash is what /client_login spends its time on, so its cost sets the login breaking point:
one gunicorn sync worker can verify at most 1/cost logins per second.

    .venv/bin/python benchmarks/bench_password_hash.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from werkzeug.security import check_password_hash, generate_password_hash

from target_app.config import HASH_PROFILES

REFERENCES = {
    "werkzeug default (reference)": "scrypt:32768:8:1",
    "pbkdf2 600k (reference)": "pbkdf2:sha256:600000",
}


def cost_ms(method: str, rounds: int) -> tuple[float, float]:
    """(median, min) milliseconds of one check_password_hash with `method`."""
    stored = generate_password_hash("correct horse battery", method=method)
    check_password_hash(stored, "warm up")
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        check_password_hash(stored, "correct horse battery")
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), min(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print(f"cpus={os.cpu_count()} loadavg(1m)={os.getloadavg()[0]:.2f} rounds={args.rounds}")
    print(f"{'profile':32} {'method':22} {'median ms':>10} {'min ms':>8} {'logins/s/worker':>16}")
    rows = {f"target_app {name}": method for name, method in HASH_PROFILES.items()} | REFERENCES
    for name, method in rows.items():
        median, fastest = cost_ms(method, args.rounds)
        print(f"{name:32} {method:22} {median:10.1f} {fastest:8.1f} {1000 / median:16.1f}")


if __name__ == "__main__":
    main()
