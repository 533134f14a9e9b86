"""With a web UI, the metrics are also at /metrics on it; --exporter-port 0 turns the own port off."""

from __future__ import annotations

from tests.helpers import free_port
from tests.locust_tests.conftest import locust_args, run_locust


def test_web_ui_serves_metrics_and_exporter_port_0_is_off(launch, target):
    web_port = free_port()
    proc = launch(locust_args("registration_test", "--autostart", "--autoquit", "2", "-u", "5", "-r", "5", "-t", "4s",
                              "--web-host", "127.0.0.1", "--web-port", str(web_port), "--host", target.url,
                              "--exporter-port", "0"), "webui")
    run = run_locust(proc, f"http://127.0.0.1:{web_port}/metrics", timeout=40)
    assert run.returncode == 0, run.log[-3000:]
    assert max(run.metric_sum("locust_requests_total", s) for s in run.scrapes) > 0
    assert "exporter: Prometheus metrics at" not in run.log  # no own port with --exporter-port 0
