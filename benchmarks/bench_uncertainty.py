"""Calibration of the verdict's confidence intervals and of `loadlab compare`, on synthetic runs with a
known truth (tests/loadlab/synthetic_runs.py), with the product's own bootstrap (1000 replicates).

Prints, measured side by side in one run:
  * coverage: how often the 95% intervals of each step's throughput and p95, of the capacity and of
    the knee hold the truth, over many seeds;
  * the false-alarm rate of `compare` on pairs drawn from the same truth;
  * how often `compare` calls a true 20% capacity loss `regressed` (the pair, and the capacity row
    itself), for the demo's 15 s steps and for longer ones.

    .venv/bin/python benchmarks/bench_uncertainty.py [--seeds 200] [--pairs 200]

The tests run the same checks with fewer seeds and replicates (tests/loadlab/test_uncertainty.py,
test_compare.py).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from loadlab.compare import REGRESSED, UNCHANGED, compare  # noqa: E402
from tests.loadlab.synthetic_runs import Truth, analysed, side  # noqa: E402


def coverage(truth: Truth, seeds: int) -> dict[str, tuple[float, int]]:
    hits: dict[str, list[bool]] = {"rps per step": [], "p95 per step": [], "capacity": [], "knee": []}
    for seed in range(seeds):
        verdict, _ = analysed(truth, seed)
        for s in verdict.steps:
            if s.rps_ci:
                hits["rps per step"].append(s.rps_ci[0] <= truth.rps(s.users) <= s.rps_ci[1])
            if s.p95_ms_ci:
                hits["p95 per step"].append(s.p95_ms_ci[0] <= truth.p95_ms(s.users) <= s.p95_ms_ci[1])
        if verdict.capacity_ci:
            hits["capacity"].append(verdict.capacity_ci[0] <= truth.capacity_rps <= verdict.capacity_ci[1])
        if verdict.knee is not None and verdict.knee.users_ci is not None:
            low, high = verdict.knee.users_ci
            hits["knee"].append(low <= truth.knee_users <= (math.inf if high is None else high))
    return {k: (float(np.mean(v)), len(v)) for k, v in hits.items() if v}


def pairs(truth: Truth, factor: float, count: int) -> tuple[float, float]:
    """(share of pairs judged regressed/unchanged as expected, share whose capacity row is regressed)."""
    overall = capacity = 0
    for i in range(count):
        comp = compare(side("BASE", truth, 10_000 + i), side("NEW", truth.scaled(factor), 20_000 + i))
        expected = UNCHANGED if factor == 1.0 else REGRESSED
        overall += comp.judgement == expected
        capacity += next(r for r in comp.rows if r.figure == "capacity_rps").judgement == REGRESSED
    return overall / count, capacity / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--power-pairs", type=int, default=20)
    args = parser.parse_args()
    demo = Truth()  # the demo's shape: 13 steps of 15 s (10 s holds), capacity 46 req/s, knee ~96 users
    started = time.monotonic()
    print(f"truth: capacity {demo.capacity_rps:g} req/s, knee {demo.knee_users:.1f} users, steps {demo.users[0]}-"
          f"{demo.users[-1]} users of {demo.step_s} s, per-second noise: rate sd {demo.rate_noise:.0%}, "
          f"latency sd {demo.latency_noise:.0%}, lag-1 correlation {demo.phi:g}")
    for name, (share, n) in coverage(demo, args.seeds).items():
        print(f"coverage of the 95% intervals, {name:13s}: {share:6.1%} of {n} intervals")
    same, _ = pairs(demo, 1.0, args.pairs)
    print(f"compare, same truth, different noise: {same:.1%} of {args.pairs} pairs judged unchanged "
          f"(false-alarm rate {1 - same:.1%})")
    for step_s in (15, 30, 60, 150):
        truth = Truth(step_s=step_s, users=tuple(range(60, 140, 10)))
        hit, cap = pairs(truth, 0.8, args.power_pairs)
        print(f"compare, capacity 20% lower, {step_s:3d} s steps: pair judged regressed {hit:.0%}, the capacity row "
              f"itself regressed {cap:.0%} (of {args.power_pairs})")
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
