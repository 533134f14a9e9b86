"""The Locust suite: scenario locustfiles, their settings, test data, and the plugins they share.

Scenarios live in `scenarios/`, settings in `config/test_config.py`, Faker test users in
`data/test_users.json`, and everything that is machinery (Prometheus exporter, preflight check,
load shapes, test-data seeding, cleanup) in `plugins/`, where any locustfile can import it.
"""
