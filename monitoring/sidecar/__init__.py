"""psutil resource sidecar: CPU, memory, threads and file descriptors of named process
groups (process-exporter's metric names) plus a few host metrics (node_exporter's names).

Command line: `python -m monitoring.sidecar --help`. In-process use, e.g. from the
lab runner::

    from monitoring.sidecar import GroupSpec, build_registry
    from prometheus_client import start_http_server

    registry = build_registry([GroupSpec("target", pids=(gunicorn.pid,))])
    server, thread = start_http_server(9256, "127.0.0.1", registry=registry)
    ...
    server.shutdown()
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from .collector import GroupCollector
from .groups import DEFAULT_LOCUST_REGEX, DEFAULT_TARGET_REGEX, GroupConfigError, GroupSpec, default_groups, load_config
from .host import HostCollector
from .tracker import GroupStats, ProcessTracker

__all__ = [
    "DEFAULT_LOCUST_REGEX", "DEFAULT_TARGET_REGEX", "GroupCollector", "GroupConfigError", "GroupSpec",
    "GroupStats", "HostCollector", "ProcessTracker", "build_registry", "default_groups", "load_config",
]


def build_registry(groups: Iterable[GroupSpec] | None = None, *, host: bool = True,
                   self_metrics: bool = True) -> CollectorRegistry:
    """A fresh registry exporting `groups` (default: bundled target and Locust).

    `host` adds the node_* metrics; `self_metrics` adds the sidecar's own
    process_*/python_* metrics (prometheus-client's default collectors).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GroupCollector(ProcessTracker(list(groups) if groups is not None else default_groups())))
    if host:
        registry.register(HostCollector())
    if self_metrics:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry
