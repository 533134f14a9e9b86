"""A tiny round-robin load balancer for the fleet test: every request to the next backend in turn,
whatever each backend's load (as nginx's default `upstream` does), so a slower backend gets its
full share and saturates first.

    python -m tests.loadlab.round_robin_lb --port P --backend http://127.0.0.2:A --backend http://127.0.0.3:B

One thread per client connection (HTTP/1.1 keep-alive to the client, a new connection to the
backend per request: the ground-truth app's sync workers close theirs anyway). It serves at most
`--max-seconds` (bounded even if its test forgets it); the test stops it by PID. Counts per backend
are served at /lb-counts for the test to check the split.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


def make_handler(backends: list[tuple[str, int]]) -> type[BaseHTTPRequestHandler]:
    turn = itertools.count()
    lock = threading.Lock()
    counts = [0] * len(backends)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet: thousands of requests
            pass

        def _proxy(self) -> None:
            if self.path == "/lb-counts":
                body = json.dumps({f"{h}:{p}": c for (h, p), c in zip(backends, counts)}).encode()
                self._answer(200, [("Content-Type", "application/json")], body)
                return
            with lock:
                i = next(turn) % len(backends)
                counts[i] += 1
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            conn = http.client.HTTPConnection(*backends[i], timeout=60)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                kept = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP | {"content-length"}]
                self._answer(resp.status, kept, data)
            except OSError as exc:
                self._answer(502, [("Content-Type", "text/plain")], f"backend {backends[i]}: {exc}".encode())
            finally:
                conn.close()

        def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = _proxy

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", action="append", required=True, help="http://HOST:PORT (repeatable)")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args()
    backends = [(u.hostname or "127.0.0.1", u.port or 80) for u in map(urllib.parse.urlsplit, args.backend)]
    server = ThreadingHTTPServer((args.host, args.port), make_handler(backends))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    time.sleep(args.max_seconds)
    server.shutdown()


if __name__ == "__main__":
    main()
