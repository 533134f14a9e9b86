"""Synthetic open-model runs with known answers: the lab's samples of a fluid queue.

Arrivals come at each step's offered rate; a server completes at most `capacity` requests/s, each
taking `service_s`; the backlog waits either at the server (its requests are sent and queue there,
so Locust's own latency grows too) or in the generator (every request slot is busy: the arrivals
are late, and Locust's latency stays at the service time). Every second the model is scraped as
the lab's sampler would scrape Locust's exporter and the sidecar.
"""

from __future__ import annotations

import bisect

from loadlab.contract import openmodel as names
from loadlab.contract.histograms import LATENCY_BUCKETS_SECONDS
from loadlab.history import Samples, Scrape

LOGIN = {"method": "POST", "name": "/client_login"}
T0 = 1_700_000_000.0


class Histogram:
    def __init__(self) -> None:
        self.counts = [0.0] * (len(LATENCY_BUCKETS_SECONDS) + 1)
        self.total = 0.0

    def observe(self, seconds: float, count: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_SECONDS, seconds)] += count
        self.total += seconds * count

    def samples(self, name: str) -> list:
        out, running = [], 0.0
        for bound, count in zip([*LATENCY_BUCKETS_SECONDS, float("inf")], self.counts):
            running += count
            out.append((name + "_bucket", {**LOGIN, "le": "+Inf" if bound == float("inf") else f"{bound:g}"}, running))
        return out + [(name + "_count", dict(LOGIN), running), (name + "_sum", dict(LOGIN), self.total)]


def open_run(rates: list[float], capacity: float, service_s: float = 0.05, step_s: int = 10, slots: int = 100,
             queue_at: str = "server", target_cores: float = 0.1, generator_cores: float = 0.1,
             drop_at: float | None = None, fail_ratio: float = 0.0, error: str = "got HTTP 401 (invalid_credentials)",
             ) -> Samples:
    """Samples of a rate hunt over `rates` (one step each) against the fluid server above;
    `drop_at`: from this offered rate on, a tenth of the arrivals are dropped; `fail_ratio` of the
    requests fail with the text `error` (the exporter's `locust_errors_total`)."""
    corrected, uncorrected = Histogram(), Histogram()
    queue = scheduled = requests = late = dropped = cpu_t = cpu_g = busy = 0.0
    scrapes: list[Scrape] = []
    sidecar: list[Scrape] = []
    t = T0
    for rate in [*rates, 0.0]:
        for tick in range(step_s * 10 if rate else 20):
            dt = 0.1
            arrivals = rate * dt
            drop = 0.1 * arrivals if drop_at is not None and rate >= drop_at else 0.0
            served = min(arrivals - drop + queue, capacity * dt)
            queue += arrivals - drop - served
            scheduled += arrivals
            dropped += drop
            requests += served
            wait = queue / capacity
            if queue_at == "generator" and queue > 1e-9:
                late += arrivals
            corrected.observe(service_s + wait, served)
            uncorrected.observe(service_s + (wait if queue_at == "server" else 0.0), served)
            cpu_t += target_cores * dt
            cpu_g += generator_cores * dt
            busy += (target_cores + generator_cores) * dt
            t += dt
            if tick % 10 == 9:
                scrapes.append(Scrape(t, "locust", [
                    (names.ARRIVAL_RATE, {}, rate), ("locust_users", {}, float(slots)),
                    (names.ARRIVALS_SCHEDULED, {}, scheduled), (names.ARRIVALS_LATE, {}, late),
                    (names.ARRIVALS_DROPPED, {"reason": names.DROPPED_WAITED_TOO_LONG}, dropped),
                    ("locust_requests_total", dict(LOGIN), requests),
                    ("locust_request_failures_total", dict(LOGIN), fail_ratio * requests),
                    *([("locust_errors_total", {**LOGIN, "error": error}, fail_ratio * requests)] if fail_ratio else []),
                    *corrected.samples(names.CORRECTED_DURATION), *uncorrected.samples("locust_request_duration_seconds"),
                ]))
                sidecar.append(Scrape(t, "sidecar", [
                    ("namedprocess_namegroup_cpu_seconds_total", {"groupname": "target", "mode": "user"}, cpu_t),
                    ("namedprocess_namegroup_cpu_seconds_total", {"groupname": "locust", "mode": "user"}, cpu_g),
                    ("namedprocess_namegroup_num_procs", {"groupname": "target"}, 3.0),
                    ("namedprocess_namegroup_num_procs", {"groupname": "locust"}, 1.0),
                    ("node_cpu_seconds_total", {"cpu": "0", "mode": "user"}, busy / 2),
                    ("node_cpu_seconds_total", {"cpu": "1", "mode": "user"}, busy / 2),
                    ("node_cpu_seconds_total", {"cpu": "0", "mode": "idle"}, (t - T0) - busy / 2),
                    ("node_cpu_seconds_total", {"cpu": "1", "mode": "idle"}, (t - T0) - busy / 2),
                ]))
    return Samples({"locust": scrapes, "sidecar": sidecar})
