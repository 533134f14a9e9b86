"""Business metrics of the target API: registration and login outcomes.

Outcomes are a fixed, small set (no usernames or emails in labels). Every outcome is created at
zero at startup so rate() and dashboards see the series before the first event.
"""

from __future__ import annotations

from flask import Flask, current_app
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from loadlab.instrument import shared_metrics

REGISTRATION_OUTCOMES = ("created", "duplicate", "invalid")
LOGIN_OUTCOMES = ("success", "failure", "invalid")
EXTENSION_KEY = "target_app_metrics"


class AuthMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registrations = Counter(
            "app_registrations_total", "Registration attempts by outcome (created, duplicate, invalid).",
            ["outcome"], registry=registry,
        )
        self.logins = Counter(
            "app_logins_total", "Login attempts by outcome (success, failure, invalid).",
            ["outcome"], registry=registry,
        )
        self.registration = {o: self.registrations.labels(o) for o in REGISTRATION_OUTCOMES}
        self.login = {o: self.logins.labels(o) for o in LOGIN_OUTCOMES}


def init_app(app: Flask, registry: CollectorRegistry | None = None) -> None:
    app.extensions[EXTENSION_KEY] = shared_metrics(AuthMetrics, REGISTRY if registry is None else registry)


def count_registration(outcome: str) -> None:
    metrics = current_app.extensions.get(EXTENSION_KEY)
    if metrics is not None:  # None when the app runs with metrics off
        metrics.registration[outcome].inc()


def count_login(outcome: str) -> None:
    metrics = current_app.extensions.get(EXTENSION_KEY)
    if metrics is not None:
        metrics.login[outcome].inc()
