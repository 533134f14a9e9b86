"""The exporter's HTTP server, a separate process: it serves the latest exposition the Locust
process rendered, so a scrape waits neither for Locust's gevent loop nor for its GIL.

    python metrics_server.py FD    (started by exporter.py; stdlib only, never imports Locust)

FD is a listening socket the Locust process has bound (so a taken port is its error, reported
before anything starts). Stdin carries frames, each an 8-byte big-endian length and that many
bytes of Prometheus text exposition; every frame replaces the one served. An empty frame means
the Locust process could not render its stats: scrapes then get 503, never stale values. Once
the first frame is served, it writes READY to stdout: the Locust process waits for that at start,
so the server's own start-up (an interpreter, http.server's imports: ~0.1 s of CPU) is over before
any user runs, and the exporter's URL answers once Locust has logged it. At the
end of stdin (the Locust process has exited, whichever way, SIGKILL included) this process exits
too; it ignores SIGINT and SIGTERM, which Locust handles for both.
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import struct
import sys
import threading
from typing import Any, BinaryIO

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # prometheus_client.generate_latest's format
FRAME_HEADER = struct.Struct(">Q")
READY = b"1"  # written to stdout once the first frame is served


def encode_frame(body: bytes) -> bytes:
    """A frame for this server's stdin (an empty body means: no valid exposition)."""
    return FRAME_HEADER.pack(len(body)) + body


def read_frame(stream: BinaryIO) -> bytes | None:
    """The next frame's bytes from `stream`; None when it has ended."""
    header = stream.read(FRAME_HEADER.size)
    if len(header) < FRAME_HEADER.size:
        return None
    (length,) = FRAME_HEADER.unpack(header)
    body = stream.read(length)
    return body if len(body) == length else None


# The exposition served now: replaced whole by the reading thread (one reference assignment, which
# the serving threads see whole). None after an empty frame.
_latest: bytes | None = None


class Handler(http.server.BaseHTTPRequestHandler):
    """Any path answers with the metrics, as prometheus-client's own server does."""

    timeout = 10  # a client that stalls holds its thread no longer than this
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        body = _latest
        if body is None:
            self.send_error(503, "the Locust exporter has no metrics to serve (see Locust's log)")
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet, like prometheus-client's server


def serve(fd: int, frames: BinaryIO, ready: BinaryIO) -> None:
    global _latest
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket.close()  # the unbound one it made; serve the inherited, listening one instead
    server.socket = socket.socket(fileno=fd)
    server.socket.setblocking(True)  # gevent made it non-blocking in the Locust process
    # Tracked, not daemon, handler threads: server_close() below waits for the answers in flight, so
    # a scrape that began before Locust exited gets its whole body (not headers and a cut-off body).
    server.daemon_threads = False
    serving = False
    # The first frame arrives before any scrape is answered (scrapes wait in the listen backlog).
    while (body := read_frame(frames)) is not None:
        _latest = body or None
        if not serving:
            threading.Thread(target=server.serve_forever, daemon=True).start()
            serving = True
            ready.write(READY)  # the Locust process waits for this before it goes on
            ready.flush()
            ready.close()
    # stdin ended: the Locust process is gone. Accept nothing more, finish the answers in flight
    # (each bounded by Handler.timeout), then exit.
    if serving:
        server.shutdown()
    server.server_close()
    os._exit(0)


if __name__ == "__main__":
    # Ctrl-C (and a SIGTERM to the process group) reach this process too: Locust handles them and
    # may still linger (--exporter-linger), so this process lives exactly as long as Locust does,
    # until its stdin ends. SIGKILL still ends it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(int(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer)
