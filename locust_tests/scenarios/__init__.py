"""Locustfiles: run them with `locust -f locust_tests/scenarios/<name>.py`."""
