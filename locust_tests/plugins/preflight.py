"""Preflight: before any user spawns, check that the host answers at all.

Without it, a test against a server that is not running records minutes of ConnectionRefused
failures. With it, a --headless (or --autostart) run exits non-zero within seconds with one message
naming the host and how to start the bundled target. Any HTTP answer passes, even a 404: the
check is about reachability, not health. `--skip-preflight` (env LOCUST_SKIP_PREFLIGHT=true)
skips it. With the interactive web UI the check only warns, since the host can still be changed
(or started) before pressing Start.
"""

from __future__ import annotations

import http.client
import logging
import sys
import time
from typing import Any

from locust import events
from locust.env import Environment

from .httpclient import call
from .roles import is_coordinator, target_host

logger = logging.getLogger(__name__)

# A target that is still starting gets this long to answer; a refused connection is retried.
PREFLIGHT_SECONDS = 5.0
HOW_TO_START = ("start the bundled target with `python -m target_app --port 5000` (then --host "
                "http://127.0.0.1:5000), point --host at your API, or pass --skip-preflight")


def check_host(host: str, path: str = "/healthz", within: float = PREFLIGHT_SECONDS) -> str | None:
    """None when `host` gives any HTTP answer to GET host+path within `within` seconds, else
    why not (the last connection error)."""
    url = host.rstrip("/") + path
    deadline = time.monotonic() + within
    problem = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        try:
            call("GET", url, timeout=max(0.5, min(2.0, remaining)))
            return None  # any status: reachability is all we check
        except (OSError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            problem = getattr(reason, "strerror", None) or str(reason)
        if time.monotonic() + 0.25 >= deadline:
            return problem
        time.sleep(0.25)


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument("--skip-preflight", action="store_true", default=False, env_var="LOCUST_SKIP_PREFLIGHT",
                        include_in_web_ui=False,
                        help="Do not check that the host answers before starting")


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if not is_coordinator(environment) or (options is not None and options.skip_preflight):
        return
    host = target_host(environment)
    interactive = options is not None and not options.headless and not options.autostart
    if host is None:
        if not interactive:
            logger.error("preflight: no host to test: pass --host (or set HOST / host in locust.conf)")
            sys.exit(1)
        return
    from locust_tests.config import test_config

    problem = check_host(host, test_config.HEALTH_ENDPOINT)
    if problem is None:
        return
    message = f"preflight: nothing answers at {host} ({problem}). Is the API running? To fix: {HOW_TO_START}."
    if interactive:
        logger.warning(message)
        return
    logger.error(message)
    sys.exit(1)
