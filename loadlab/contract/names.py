"""Names and ports that several parts must agree on.

Process-group names are the sidecar's `--group` names and the `groupname` label of its
metrics; job names are Prometheus scrape jobs, which are also the sampler's source names in
`samples.jsonl`. Rules, dashboards, alerts and the analysis select on them.
"""

from __future__ import annotations

# Sidecar process groups: the API under test and the load generator.
TARGET_GROUP = "target"
GENERATOR_GROUP = "locust"

# Scrape jobs (Prometheus) and sample sources (the lab's own sampler): the same three.
TARGET_JOB = "target"
LOCUST_JOB = "locust"
SIDECAR_JOB = "sidecar"
JOBS = (TARGET_JOB, LOCUST_JOB, SIDECAR_JOB)
# A sidecar on the API's own machine (`loadlab run --target-sidecar URL`): Prometheus scrapes it in
# the `sidecar` job beside the lab's own (its own `instance`), the sampler as a source of its own,
# so the analysis takes the target's group and host from it and the generator's from the local one.
TARGET_SIDECAR_SOURCE = "target_sidecar"
# The sidecar's py-spy endpoint (`/profile?seconds=N[&group=NAME]`, off unless --allow-profiling):
# how `loadlab run --target-sidecar URL --profile` profiles a server on another machine.
SIDECAR_PROFILE_PATH = "/profile"

# The ports users know from each tool. `loadlab up` and the compose stack use them; `loadlab
# run` takes free ones. The target's metrics port is served by the gunicorn arbiter, apart
# from the API port, so scrapes never queue behind the load.
DEFAULT_PORTS: dict[str, int] = {
    "target": 5000,
    "target_metrics": 9101,
    "web": 8089,
    "exporter": 9646,
    "sidecar": 9256,
    "prometheus": 9090,
    "alertmanager": 9093,
    "grafana": 3000,
    "master": 5557,
}

# The exporter's gauge of when its counts were current (Unix time). It serves what the loop last
# rendered (0.1-1 s ago), and a master's counts are as old as its workers' last reports (each
# second): a per-step rate over scrape times read up to a second too many or too few (+13.9 % on
# a 5 s hold). The analysis takes a Locust scrape's time from it (`history.data_time`).
LOCUST_STATS_TIMESTAMP = "locust_stats_timestamp_seconds"

# Native runs bind loopback only; exposing a port is always an explicit choice.
DEFAULT_BIND = "127.0.0.1"
