"""JSON error answers: every error, from routing (404/405) to body limits (413) to an unforeseen
bug (500), has the body {"error": <machine code>, "message": <human text>, "field": <name|null>}."""

from __future__ import annotations

from flask import Flask, Response, current_app, jsonify
from werkzeug.exceptions import HTTPException, InternalServerError

from .validation import ApiError

# Machine codes for werkzeug's HTTP errors; the rest get a code derived from their name.
_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
}
_MESSAGES = {
    404: "no such endpoint; see /openapi.json for the API",
    405: "method not allowed on this endpoint; see the Allow header",
    413: "request body too large",
}


def error_response(status: int, error: str, message: str, field: str | None = None) -> Response:
    response = jsonify(error=error, message=message, field=field)
    response.status_code = status
    return response


def handle_api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.error, exc.message, exc.field)


def handle_http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = _CODES.get(status) or (exc.name or "error").lower().replace(" ", "_")
    message = _MESSAGES.get(status) or exc.description or exc.name
    response = error_response(status, code, message)
    # Keep headers werkzeug attaches (e.g. Allow on 405), but not its HTML Content-Type.
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def handle_unexpected(exc: Exception) -> Response:
    # Only reached on a bug: bad input is answered with a 4xx long before this.
    if isinstance(exc, HTTPException):
        return handle_http_exception(exc)
    current_app.logger.exception("unhandled error")
    return error_response(500, "internal_error", InternalServerError.description)


def init_app(app: Flask) -> None:
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
