"""Synthetic step-hunt runs with a known truth and known noise, down to the second.

A closed loop of N users with think time Z in front of a server of capacity C and light-load mean
response R0: X(N) = min(N / (R0 + Z), C), mean response R(N) = max(R0, N / X - Z), so the knee is at
N* = C (R0 + Z). Every second of every step draws its completions from a Poisson process whose rate
wanders around X(N) (an AR(1) on the log rate: the seconds are autocorrelated, as a real closed loop's
are) and each completion's latency from a lognormal whose mean is R(N), its log location wandering
too. The run is written as the lab writes one: Locust's stats history CSV (Aggregated rows, one per
second) and the exporter's scrapes (`locust` source of samples.jsonl) with counters, histogram
buckets, _sum and _count, scraped a quarter second after each CSV row.

The truth of a step's p95 is what the histogram measures of the latency distribution (Prometheus'
interpolation inside a bucket, over the exact bucket probabilities), so that coverage is judged on
sampling noise, which is what the intervals claim to cover.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import NormalDist

import numpy as np

from loadlab.analysis import analyze_steps
from loadlab.compare import Side
from loadlab.contract.histograms import LATENCY_BUCKETS_SECONDS, histogram_quantile
from loadlab.history import HistoryRow, LocustHistory, Samples, Scrape
from loadlab.steps import summarize_steps
from loadlab.uncertainty import attach
from loadlab.verdict import Verdict
from tests.loadlab.synthetic import HEADER

T0 = 1_700_000_000
BOUNDS = [*LATENCY_BUCKETS_SECONDS, math.inf]
LABELS = {"method": "POST", "name": "login"}


@dataclass(frozen=True)
class Truth:
    capacity_rps: float = 46.0
    light_response_s: float = 0.08  # R0, mean
    think_s: float = 2.0  # Z, mean
    users: tuple[int, ...] = tuple(range(10, 140, 10))
    step_s: int = 15  # the demo's step at --time-scale 0.1
    latency_sigma: float = 0.35  # lognormal shape of one request's latency
    rate_noise: float = 0.08  # stationary sd of the log rate's AR(1)
    latency_noise: float = 0.08  # stationary sd of the log latency's AR(1)
    phi: float = 0.3  # AR(1) coefficient from one second to the next (real holds: lag 1 about 0.3)
    fail_ratio: float = 0.0

    def rps(self, users: int) -> float:
        return min(users / (self.light_response_s + self.think_s), self.capacity_rps)

    def mean_response_s(self, users: int) -> float:
        return max(self.light_response_s, users / self.rps(users) - self.think_s)

    @property
    def knee_users(self) -> float:
        return self.capacity_rps * (self.light_response_s + self.think_s)

    @property
    def _log_sd(self) -> float:
        return math.sqrt(self.latency_sigma ** 2 + self.latency_noise ** 2)

    def _log_mu(self, users: int) -> float:
        return math.log(self.mean_response_s(users)) - self._log_sd ** 2 / 2

    def p95_ms(self, users: int) -> float:
        """The p95 a histogram with the lab's buckets measures of this step's latencies (no sampling noise)."""
        dist = NormalDist(self._log_mu(users), self._log_sd)
        cumulative = {le: (1.0 if math.isinf(le) else dist.cdf(math.log(le))) for le in BOUNDS}
        value = histogram_quantile(0.95, cumulative)
        assert value is not None
        return value * 1000.0

    def scaled(self, capacity_factor: float) -> Truth:
        return replace(self, capacity_rps=self.capacity_rps * capacity_factor)


def _ar1(rng: np.random.Generator, n: int, sd: float, phi: float) -> np.ndarray:
    """A stationary AR(1) series with standard deviation `sd`."""
    out = np.empty(n)
    out[0] = rng.normal(0, sd)
    innovation = sd * math.sqrt(1 - phi ** 2)
    for i in range(1, n):
        out[i] = phi * out[i - 1] + rng.normal(0, innovation)
    return out


def generate(truth: Truth, seed: int) -> tuple[LocustHistory, Samples]:
    """One run's stats history and exporter scrapes."""
    rng = np.random.default_rng(seed)
    seconds = len(truth.users) * truth.step_s
    rate_mod = _ar1(rng, seconds, truth.rate_noise, truth.phi)
    lat_mod = _ar1(rng, seconds, truth.latency_noise, truth.phi)
    rows: list[HistoryRow] = []
    scrapes: list[Scrape] = []
    requests = failures = 0
    total_s = 0.0
    buckets = np.zeros(len(BOUNDS))
    bounds = np.array(BOUNDS)
    for i in range(seconds):
        users = truth.users[i // truth.step_s]
        # The second ending at this row: completions at a wandering rate, latencies around R(N).
        lam = truth.rps(users) * math.exp(rate_mod[i] - truth.rate_noise ** 2 / 2)
        count = int(rng.poisson(lam))
        mu = truth._log_mu(users) + lat_mod[i]
        latencies = np.exp(rng.normal(mu, truth.latency_sigma, count))
        failures += int(rng.binomial(count, truth.fail_ratio)) if truth.fail_ratio else 0
        requests += count
        total_s += float(latencies.sum())
        buckets += (latencies[:, None] <= bounds[None, :]).sum(axis=0)
        t = T0 + i
        avg_ms = 1000.0 * total_s / requests if requests else None
        rows.append(HistoryRow(t=float(t), users=users, requests=requests, failures=failures,
                               p50_ms=None, p95_ms=round(truth.p95_ms(users)), avg_ms=avg_ms))
        samples = [("locust_users", {}, float(users)),
                   ("locust_requests_total", LABELS, float(requests)),
                   ("locust_request_failures_total", LABELS, float(failures)),
                   ("locust_request_duration_seconds_count", LABELS, float(requests)),
                   ("locust_request_duration_seconds_sum", LABELS, total_s)]
        samples += [("locust_request_duration_seconds_bucket", {**LABELS, "le": "+Inf" if math.isinf(le) else repr(le)},
                     float(c)) for le, c in zip(BOUNDS, buckets)]
        scrapes.append(Scrape(t=t + 0.25 + float(rng.uniform(-0.03, 0.03)), source="locust", samples=samples))
    return LocustHistory(rows=rows, windowed_percentiles=True), Samples(by_source={"locust": scrapes})


def write_run(directory: Path, truth: Truth, seed: int, scenario: str = "login-step",
              with_samples: bool = True) -> Path:
    """The run as files: `locust_stats_history.csv`, `samples.jsonl` (unless not `with_samples`), `run.json`."""
    history, samples = generate(truth, seed)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "locust_stats_history.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        for r in history.rows:
            pct = [0, 0, 0, 0, 0, r.p95_ms, 0, 0, 0, 0, 0]
            tail = [r.requests, r.failures, 0, f"{r.avg_ms or 0:.4f}", 0, 0, 0]
            for kind, name in (("POST", "login"), ("", "Aggregated")):
                writer.writerow([int(r.t), r.users, kind, name, 0, 0, *pct, *tail])
    if with_samples:
        with open(directory / "samples.jsonl", "w") as fh:
            for sc in samples.scrapes("locust"):
                fh.write(json.dumps({"t": sc.t, "source": "locust", "ok": True,
                                     "samples": [list(s) for s in sc.samples]}) + "\n")
    (directory / "run.json").write_text(json.dumps({"scenario": scenario, "synthetic_seed": seed}) + "\n")
    return directory


def analysed(truth: Truth, seed: int, replicates: int = 1000, run_level: bool = True) -> tuple[Verdict, LocustHistory]:
    """The verdict of one synthetic run with its intervals, in memory (what `rundir.analyze` does
    after reading the files), with `replicates` bootstrap replicates."""
    history, samples = generate(truth, seed)
    verdict = analyze_steps(summarize_steps(history, samples))
    attach(verdict, history, samples, verdict.thresholds, replicates=replicates, run_level=run_level)
    return verdict, history


def side(label: str, truth: Truth, seed: int, replicates: int = 1000) -> Side:
    """One synthetic run as `loadlab compare` sees it."""
    verdict, history = analysed(truth, seed, replicates)
    return Side(label, f"synthetic seed {seed}", verdict, history, "login-step", Path("."))
