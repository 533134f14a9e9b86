"""Settings of the Locust suite (see test_config.py)."""
