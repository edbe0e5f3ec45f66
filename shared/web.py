"""HTTP mapping: the one place where requests become typed calls and results and errors become responses.

Invariants: every request is answered with JSON (or the target's own ``flask.Response``), never an HTML
page or a traceback; every request is logged once, with its target, ids, trace and outcome.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import flask
import functions_framework
from werkzeug.datastructures import Headers

from shared import callers, clock, config, logs, params, targets
from shared.errors import Internal, MethodNotAllowed, SkillEmailError

logger = logging.getLogger("skill_email.request")


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


def error_body(error: SkillEmailError) -> dict[str, Any]:
    """The contract's error body, ``{"error": {"code", "message"}}`` plus the details it names, for HTTP
    and MCP alike."""
    body: dict[str, Any] = {"error": {"code": error.code, "message": error.message}}
    message_id = error.details.get("message_id")
    if isinstance(message_id, str):
        # The no-blind-resend rule answers "outcome unknown" with the Message-ID to look for.
        body["error"]["message_id"] = message_id
    required_scopes = error.details.get("required_scopes")
    if isinstance(required_scopes, list):
        # A 403 for scopes names the scopes (full URLs), any one of which would do.
        body["error"]["required_scopes"] = [str(scope) for scope in required_scopes]
    return body


def error_response(error: SkillEmailError) -> flask.Response:
    """The contract's error body as a response with the error's status and headers."""
    return json_response(error_body(error), error.status, error.headers())


def _trace(request: flask.Request) -> str | None:
    header = request.headers.get("X-Cloud-Trace-Context", "")
    trace_id = header.split("/", 1)[0].strip()
    if not trace_id or len(trace_id) > 64 or not trace_id.isalnum():
        return None
    return trace_id


@dataclass
class Call:
    """One request's context, owned here: its target, ids, timing, and the fields of its log line.

    Handlers add to ``log`` (user_id, gmail_calls, ...); it ends up in the request's one log line, and
    audit rows read ``trace_id`` and ``duration_ms`` from here.
    """

    target: str
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    trace_id: str | None = None
    log: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=clock.monotonic)
    # The verified caller (CALLER_POLICY=enforce), None under off.
    caller: callers.Caller | None = None

    def duration_ms(self) -> int:
        """Milliseconds since the request arrived."""
        return int((clock.monotonic() - self.started) * 1000)

    def log_context(self) -> dict[str, Any]:
        """The fields every log line of this request carries (Cloud Logging joins them on the trace)."""
        context: dict[str, Any] = {"target": self.target, "request_id": self.request_id}
        if self.trace_id:
            project = config.load_settings().project
            context["logging.googleapis.com/trace"] = (
                f"projects/{project}/traces/{self.trace_id}" if project else self.trace_id
            )
        return context


Handler = Callable[[Any, Call], Any]

# Each target's handler, recorded by ``http_function`` when its entry point is imported, so that
# ``invoke`` (HTTP and MCP alike) runs the very function the target's own URL runs.
HANDLERS: dict[str, Handler] = {}


def http_function(
    name: str, *, raw_request: bool = False
) -> Callable[[Handler], Callable[[flask.Request], Any]]:
    """Wraps the registered target ``name``: method check, typed request, log context, error mapping.

    The wrapped function takes the typed request (``targets.get(name).request``) and the ``Call``, and
    returns a JSON-able body or a ``flask.Response``. With ``raw_request`` (``mcp``, whose body is a
    JSON-RPC message that the MCP SDK reads) it takes the ``flask.Request`` itself instead, after the
    method check.
    """
    target = targets.get(name)

    def decorate(handle: Handler) -> Callable[[flask.Request], Any]:
        if not raw_request:
            HANDLERS[name] = handle

        @functools.wraps(handle)
        def entry_point(request: flask.Request) -> flask.Response:
            try:
                logs.configure(config.load_settings().log_level)
            except SkillEmailError:
                logs.configure("INFO")
            call = Call(target=name, trace_id=_trace(request))
            context = call.log_context()
            token = logs.request_context.set(context)
            caller_token = callers.current.set(None)
            try:
                response = _respond(handle, request, target, call, raw_request)
            finally:
                callers.current.reset(caller_token)
                logs.request_context.reset(token)
            level = logging.ERROR if response.status_code >= 500 else logging.INFO
            log_fields = {
                **context,
                **call.log,
                "status": response.status_code,
                "duration_ms": round((clock.monotonic() - call.started) * 1000, 1),
                "method": request.method,
            }
            logger.log(
                level, "%s %s %d", request.method, name, response.status_code, extra={"fields": log_fields}
            )
            return response

        # Declared as an HTTP function to functions-framework, as gmail_push declares itself a CloudEvent
        # one: otherwise the signature type it stores in the environment for the last app created applies
        # to the next, and one process serving several targets (devtools.serve, tests) mixes them up.
        return functions_framework.http(entry_point)

    return decorate


def _respond(
    handle: Handler, request: flask.Request, target: targets.Target, call: Call, raw_request: bool
) -> flask.Response:
    try:
        if request.method not in target.methods:
            raise MethodNotAllowed(
                f"{request.method} is not allowed here; use {' or '.join(target.methods)}",
                allowed=target.methods,
            )
        # Who is asking comes first, and what they may do is settled before the handler runs: a refused
        # caller never reaches the token store, the token endpoint or Gmail.
        settings = config.load_settings()
        call.caller = callers.authenticate(request.headers.get("Authorization"), settings)
        if call.caller is not None:
            callers.current.set(call.caller)
            call.log["caller"] = call.caller.email
        if raw_request:
            # mcp: each tool call is authorized in invoke, as the target it names (role, robeing_id).
            result = handle(request, call)
        else:
            raw, from_query = params.read(request, target.request, max_body=target.max_body)
            result = invoke(target.name, raw, call, headers=request.headers, from_query=from_query)
        if isinstance(result, flask.Response):
            return result
        return json_response(result)
    except Exception as exc:
        return error_response(public_error(exc, call))


def invoke(
    name: str,
    raw: Mapping[str, Any],
    call: Call,
    *,
    headers: Mapping[str, str] | Headers | None = None,
    from_query: bool = False,
) -> Any:
    """Runs target ``name`` on already-decoded fields: the one path of an HTTP request and an MCP tool call.

    Args:
        name: a registered target.
        raw: the fields (a JSON object, query values, or MCP tool arguments), checked here against the
            target's request type.
        call: this call's context; its log gets ``user_id`` and ``robeing_id``.
        headers: HTTP headers by name (case-insensitive for a request's own headers), read for the
            request type's ``HEADERS`` such as ``Idempotency-Key``.
        from_query: the fields are query parameters (strings to convert).

    Returns:
        The handler's result: a JSON-able body or a ``flask.Response``.

    Raises:
        SkillEmailError: what the request or the handler raised; ``public_error`` maps anything else.
    """
    target = targets.get(name)
    handle = HANDLERS.get(name)
    if handle is None:
        importlib.import_module(target.module)  # its http_function records the handler
        handle = HANDLERS[name]
    header_values = {field: (headers or {}).get(header) for field, header in target.request.HEADERS.items()}
    args = params.build(target.request, raw, from_query=from_query, headers=header_values)
    for field_name in ("user_id", "robeing_id"):
        if getattr(args, field_name, None) is not None:
            call.log[field_name] = getattr(args, field_name)
    callers.authorize(call.caller, target, args)
    return handle(args, call)


def public_error(error: BaseException, call: Call) -> SkillEmailError:
    """The error a caller sees for ``error``, logged here once: a 5xx with its cause, and anything that
    is not a ``SkillEmailError`` (a bug) as ``internal`` with its traceback and no details in the body."""
    if isinstance(error, SkillEmailError):
        call.log["error_code"] = error.code
        refused = error.details.get("caller_email")
        if isinstance(refused, str):
            call.log.setdefault("caller", refused)  # a verified caller who is not on the list
        if error.status >= 500:
            logger.error("%s: %s", error.code, error.message, exc_info=error if error.__cause__ else None)
            if isinstance(error, Internal):
                # The body says only that; the details are in the log line above.
                return Internal("internal error")
        return error
    call.log["error_code"] = "internal"
    logger.error("unhandled error", exc_info=error)
    return Internal("internal error")
