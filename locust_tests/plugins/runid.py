"""A run id shared by the master and all its workers, for usernames unique across machines.

The master (or standalone process) takes `--run-id` (env LOCUST_RUN_ID) or makes a random one at
init. Locust sends every custom option to the workers with each spawn message, before their
test_start, so workers on any machine (and `--processes` children) use the master's run id.
Usernames are then `lt_<run id>_<worker index>_<counter>` (see testdata.py).
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import sys
from typing import Any

from locust import events
from locust.env import Environment

from .roles import is_coordinator
from .testdata import registration_username, run_prefix

RUN_ID_RE = re.compile(r"[A-Za-z0-9]{1,20}")

logger = logging.getLogger(__name__)
_counter = itertools.count(1)
_fallback_run_id = secrets.token_hex(5)  # only used when no master ever gave one (library use)


def new_run_id() -> str:
    # 40 random bits: two runs sharing an id is about as likely as guessing a 12-digit PIN.
    return secrets.token_hex(5)


def run_id(environment: Environment) -> str:
    options = environment.parsed_options
    return (getattr(options, "run_id", "") if options is not None else "") or _fallback_run_id


def users_prefix(environment: Environment) -> str:
    """The prefix of every user this run registers (what cleanup deletes)."""
    return run_prefix(run_id(environment))


def next_username(environment: Environment) -> str:
    runner = environment.runner
    worker = getattr(runner, "worker_index", -1)  # a WorkerRunner's; the master and standalone are 0
    worker = max(worker, 0)
    return registration_username(run_id(environment), worker, next(_counter))


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument("--run-id", default="", env_var="LOCUST_RUN_ID", include_in_web_ui=False,
                        help="Id of this run in the usernames it registers (letters/digits, at most 20; "
                             "default: random, chosen by the master and shared with its workers)")


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if not is_coordinator(environment) or options is None:
        return
    if not options.run_id:
        options.run_id = new_run_id()
    elif not RUN_ID_RE.fullmatch(options.run_id) or options.run_id.lower() == "data":
        logger.error("--run-id %r is not usable: use 1-20 letters or digits (not 'data', which names the "
                     "login data set)", options.run_id)
        sys.exit(1)
    logger.info("run id %s: users registered by this run are named %s<worker>_<n>", options.run_id,
                run_prefix(options.run_id))
