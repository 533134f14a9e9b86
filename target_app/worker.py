"""The gunicorn worker class of the target: gevent, one request per connection, headers on time.

Why not gunicorn's sync worker: it reads a request's headers with a blocking socket and serves
nothing else meanwhile, so a few clients that send their headers one byte per second stop the API
(until gunicorn kills the "silent" worker after `timeout` and blames memory). gthread does the same
per thread once the first byte has arrived. In a gevent worker a dribbling client costs an idle
greenlet, and this subclass also closes its connection when the request line and headers are not
all in after `HEADER_TIMEOUT` seconds (nginx's client_header_timeout), so such clients cannot pile
up either.

What stays as with sync workers: one process uses one core at most (greenlets share one thread and
a request runs to the end once started: hashing and SQLite never yield), the connection is closed
after each response (gunicorn's keepalive 0, as the sync worker does), so every request goes to
whichever worker accepts it first. This module imports gevent; gunicorn loads it in the arbiter and
gevent patches only the workers (in init_process), like gunicorn's own "gevent" worker class.
"""

from __future__ import annotations

from typing import Any

import gevent
from gunicorn.http.errors import NoMoreData
from gunicorn.workers.ggevent import GeventWorker

# Seconds a client has for its request line and headers. A real client sends them at once; the
# slack is for a worker that is busy for a moment before it reads them.
HEADER_TIMEOUT = 10.0


class HeaderTimeout(NoMoreData):
    """Raised in a connection's greenlet, where it waits for more header bytes, when the headers
    are late. A NoMoreData, so gunicorn closes the connection as if the client had gone."""

    def __str__(self) -> str:
        return "request headers incomplete at the header timeout"


class HeaderTimeoutGeventWorker(GeventWorker):
    """gunicorn's gevent worker, with a deadline on reading each request's headers."""

    header_timeout = HEADER_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timers: dict[Any, Any] = {}  # connection greenlet -> its timer

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        # A timer of the event loop rather than a greenlet: it costs nothing unless it fires.
        handler = gevent.getcurrent()
        timer = gevent.get_hub().loop.timer(self.header_timeout)
        timer.start(self._header_timeout_expired, handler, addr)
        self._header_timers[handler] = timer
        try:
            super().handle(listener, client, addr)
        finally:
            self._stop_header_timer(handler)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        # The headers are in: from here on the request is the application's, however long it takes.
        # (No wait point between parsing the headers and this call, so the timer cannot fire between.)
        self._stop_header_timer(gevent.getcurrent())
        return super().handle_request(listener_name, req, sock, addr)

    def _stop_header_timer(self, handler: Any) -> None:
        timer = self._header_timers.pop(handler, None)
        if timer is not None:
            timer.close()

    def _header_timeout_expired(self, handler: Any, addr: Any) -> None:
        # Runs in the event loop while `handler` waits for header bytes; raising there is what
        # gevent.Timeout does, with an exception gunicorn treats as a client that went away.
        self._header_timers.pop(handler, None)
        peer = addr[0] if isinstance(addr, tuple) and addr else addr
        self.log.info("Closed a connection from %s: request headers incomplete after %gs (slow client)",
                      peer, self.header_timeout)
        handler.throw(HeaderTimeout(b""))
