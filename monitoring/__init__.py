"""Monitoring for the load lab: the psutil sidecar (`monitoring.sidecar`) and the
Prometheus, recording-rule, alert and Alertmanager configuration beside it."""
