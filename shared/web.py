"""HTTP mapping: the one place where results and errors become responses, and each request is logged."""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import flask

from shared import config, logs
from shared.errors import Internal, MethodNotAllowed, SkillEmailError

logger = logging.getLogger("skill_email.request")

Handler = Callable[[flask.Request, dict[str, Any]], Any]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> flask.Response:
    """A JSON response; non-ASCII text (Korean subjects) is sent as UTF-8, not escaped."""
    response = flask.Response(_utf8_json(body), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _utf8_json(body: Any) -> bytes:
    """JSON as UTF-8; a lone surrogate (echoed from a bad request) falls back to ASCII escapes."""
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":")).encode("ascii")


def error_response(error: SkillEmailError) -> flask.Response:
    """The contract's error body: ``{"error": {"code", "message"}}``."""
    body: dict[str, Any] = {"error": {"code": error.code, "message": error.message}}
    message_id = error.details.get("message_id")
    if isinstance(message_id, str):
        # The no-blind-resend rule answers "outcome unknown" with the Message-ID to look for.
        body["error"]["message_id"] = message_id
    return json_response(body, error.status, error.headers())


def _trace(request: flask.Request) -> str | None:
    header = request.headers.get("X-Cloud-Trace-Context", "")
    trace_id = header.split("/", 1)[0].strip()
    if not trace_id or len(trace_id) > 64 or not trace_id.isalnum():
        return None
    settings_project = config.load_settings().project
    return f"projects/{settings_project}/traces/{trace_id}" if settings_project else trace_id


def http_function(
    target: str, methods: tuple[str, ...]
) -> Callable[[Handler], Callable[[flask.Request], Any]]:
    """Wraps a target: method check, request context for logs, error mapping, one log line per request.

    The wrapped function takes the request and a mutable ``log`` dict (user_id, gmail_calls, ...) that
    ends up in the request's log line, and returns a JSON-able body or a ``flask.Response``.
    """

    def decorate(handle: Handler) -> Callable[[flask.Request], Any]:
        @functools.wraps(handle)
        def entry_point(request: flask.Request) -> flask.Response:
            try:
                logs.configure(config.load_settings().log_level)
            except SkillEmailError:
                logs.configure("INFO")
            started = time.perf_counter()
            context: dict[str, Any] = {"target": target, "request_id": uuid.uuid4().hex[:16]}
            trace = _trace(request)
            if trace:
                context["logging.googleapis.com/trace"] = trace
            token = logs.request_context.set(context)
            fields: dict[str, Any] = {}
            try:
                response = _respond(handle, request, methods, fields)
            finally:
                logs.request_context.reset(token)
            duration_ms = round((time.perf_counter() - started) * 1000, 1)
            level = logging.ERROR if response.status_code >= 500 else logging.INFO
            log_fields = {
                **context,
                **fields,
                "status": response.status_code,
                "duration_ms": duration_ms,
                "method": request.method,
            }
            logger.log(
                level, "%s %s %d", request.method, target, response.status_code, extra={"fields": log_fields}
            )
            return response

        return entry_point

    return decorate


def _respond(
    handle: Handler, request: flask.Request, methods: tuple[str, ...], fields: dict[str, Any]
) -> flask.Response:
    try:
        if request.method not in methods:
            raise MethodNotAllowed(
                f"{request.method} is not allowed here; use {' or '.join(methods)}", allowed=methods
            )
        result = handle(request, fields)
        if isinstance(result, flask.Response):
            return result
        return json_response(result)
    except SkillEmailError as error:
        fields["error_code"] = error.code
        if error.status >= 500:
            logger.error("%s: %s", error.code, error.message, exc_info=error.__cause__ is not None)
            if isinstance(error, Internal):
                # The body says only that; the details are in the log line above.
                return error_response(Internal("internal error"))
        return error_response(error)
    except Exception:
        fields["error_code"] = "internal"
        logger.exception("unhandled error")
        return error_response(Internal("internal error"))
