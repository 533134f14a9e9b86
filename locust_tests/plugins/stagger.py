"""In the step hunt, each new user starts at a random point of its think cycle, not all at once.

Locust's UsersDispatcher starts floor(spawn rate) users in one instant, and each fires its first
request at once. A step's new users then run in lockstep, and a hold of a few seconds counts their
bursts rather than their rate (measured: 12.0 req/s for a true 17.2 with 20 users, think time
0.9-1.1 s, in a 2 s hold). Visitors do not arrive in lockstep. So, in the step hunt only, every
user first pauses for a random fraction of one think time drawn from its own `wait_time`, then runs
its `on_start` and tasks as written. The pause falls in the step's transient, which the verdict
leaves out; a user stopped during it stops at once, as in Locust's own wait.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from locust import User
from locust.user.task import LOCUST_STATE_RUNNING, LOCUST_STATE_WAITING

_STAGGERED = "_loadlab_staggered_start"


def _pausing_first(on_start: Callable[[User], Any]) -> Callable[[User], Any]:
    @functools.wraps(on_start)
    def on_start_after_a_pause(user: User) -> Any:
        user._state = LOCUST_STATE_WAITING  # stoppable at once meanwhile, as in User.wait
        gevent.sleep(random.random() * user.wait_time())
        user._state = LOCUST_STATE_RUNNING
        return on_start(user)

    setattr(on_start_after_a_pause, _STAGGERED, True)
    return on_start_after_a_pause


def stagger_starts(user_classes: Iterable[type[User]]) -> list[str]:
    """Make each class's users pause for a random part of one think time before they start; returns
    the names of the classes changed now (a class is changed once, however often this is called)."""
    changed = []
    for user_class in user_classes:
        if getattr(user_class.on_start, _STAGGERED, False):
            continue  # changed already, or inherits a changed on_start
        user_class.on_start = _pausing_first(user_class.on_start)  # type: ignore[method-assign,assignment]
        changed.append(user_class.__name__)
    return changed
