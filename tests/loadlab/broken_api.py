"""A tiny HTTP server that fails functionally: it answers every request with one status and a JSON
error body, except the paths given their own status. It stands for an API whose contract differs
from the suite's (a wrong path, a login that refuses every account) or one that is simply broken.

    python -m tests.loadlab.broken_api --port P --status 500
    python -m tests.loadlab.broken_api --port P --status 401 --answer /client_registeration=201 --answer /healthz=200

A 2xx answer carries what the suite expects of it (an id, a token); anything else {"error": CODE}.
It uses no CPU to speak of, so a 5xx from it is never overload.
"""

from __future__ import annotations

import argparse
import itertools
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ERROR_CODES = {400: "bad_request", 401: "invalid_credentials", 403: "forbidden", 404: "not_found",
               409: "conflict", 429: "too_many_requests", 500: "internal_error", 502: "bad_gateway",
               503: "unavailable"}


def make_handler(default: int, answers: dict[str, int]) -> type[BaseHTTPRequestHandler]:
    ids = itertools.count(1)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            status = answers.get(self.path.split("?", 1)[0], default)
            if status == 201:
                body: dict = {"id": next(ids)}
            elif status < 300:
                body = {"status": "ok", "token": "broken-api-token"}
            else:
                body = {"error": ERROR_CODES.get(status, "error"), "message": "this API fails on purpose"}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, *_args) -> None:  # quiet: thousands of requests per test
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--status", type=int, default=500, help="the answer to every other path")
    parser.add_argument("--answer", action="append", default=[], metavar="PATH=STATUS")
    args = parser.parse_args()
    answers = {path: int(status) for path, status in (a.split("=", 1) for a in args.answer)}
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.status, answers))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
