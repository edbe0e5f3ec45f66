"""The ``mcp`` target: the targets as MCP tools over streamable HTTP (stateless, JSON responses).

One HTTP request is one JSON-RPC exchange, answered by the official SDK's ``StreamableHTTPSessionManager``
in stateless, JSON-response mode. The functions are WSGI (Flask under functions-framework), so each
request runs the SDK's ASGI handler to completion on an event loop of its own and hands back the one
JSON body it produced: with no session and no SSE stream there is nothing to keep between requests.

A tool call goes through ``web.invoke``, the path of the target's own URL: the same typed request
(``params.build`` on the same ``FIELDS``), the same handler, the same caller rules and the same error
mapping; an error becomes an MCP tool error (``isError``) whose JSON is the contract's error body. The
tools are the registry's targets that CONTRACT.md's MCP section names, so a target added to
``shared/targets.py`` becomes a tool with no edit here; their input schemas come from
``json_schema``, the mapping docs/openapi.yaml is checked against.

Invariant: only ``functions/mcp.py`` imports this, on the first MCP request, so no other target's cold
start pays for the SDK (about four times main.py's own imports, and ~37 MB; bench/mcp.py).
"""

from __future__ import annotations

import base64
import contextvars
import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote

import anyio
import flask
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError

from shared import clock, json_schema, logs, params, request_types, targets, web
from shared.errors import InvalidArgument

# CONTRACT.md, "MCP": the operations served as tools. Only those in the registry are offered.
CONTRACT_TOOLS = (
    "list_emails",
    "get_email",
    "get_thread",
    "get_attachment",
    "send_email",
    "create_draft",
    "send_draft",
    "modify_email",
    "list_labels",
    "token_status",
)
SERVER_NAME = "skill-email"
INSTRUCTIONS = (
    "Read and send the Gmail of the person named by user_id. Every tool takes the same arguments as the "
    "function of the same name and answers the same JSON; an error's JSON is "
    '{"error": {"code", "message"}} with the contract\'s code (e.g. not_found, reauth_required).'
)
# The SDK logs each manager's start and stop at INFO: with one manager per request, three lines of
# noise per request. Its warnings and errors still come through.
for _name in ("mcp.server.streamable_http_manager", "mcp.server.streamable_http"):
    logging.getLogger(_name).setLevel(logging.WARNING)
_EXTENDED_FILENAME = re.compile(r"filename\*=UTF-8''([^;\s]+)", re.IGNORECASE)
_PLAIN_FILENAME = re.compile(r'filename="([^"]*)"', re.IGNORECASE)


# The context of the HTTP request an MCP message arrived in, for the tool handlers the SDK calls.
_http_call: contextvars.ContextVar[web.Call] = contextvars.ContextVar("mcp_http_call")


def tool_targets() -> list[targets.Target]:
    """The registered targets served as tools, in registry order."""
    return [target for target in targets.TARGETS if target.name in CONTRACT_TOOLS]


def tool_input_schema(target: targets.Target) -> dict[str, Any]:
    """A tool's input schema: the target's request schema, plus its headers as arguments."""
    header_fields = {name: request_types.HEADER_FIELDS[name] for name in target.request.HEADERS}
    return json_schema.request_schema(target.request, header_fields)


@lru_cache(maxsize=1)
def _tools() -> dict[str, types.Tool]:
    tools = {}
    for target in tool_targets():
        tools[target.name] = types.Tool(
            name=target.name,
            description=f"{target.summary[0].upper()}{target.summary[1:]}.",
            input_schema=tool_input_schema(target),
            annotations=types.ToolAnnotations(
                # The targets that take GET only read; the others send or change mail.
                read_only_hint="GET" in target.methods,
                open_world_hint=True,
            ),
        )
    return tools


async def _list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    _http_call.get().log["mcp_method"] = "tools/list"
    return types.ListToolsResult(tools=list(_tools().values()))


async def _call_tool(ctx: Any, request: types.CallToolRequestParams) -> types.CallToolResult:
    outer = _http_call.get()
    outer.log.update(mcp_method="tools/call", tool=request.name)
    if request.name not in _tools():
        # The MCP specification answers an unknown tool with a protocol error, not a tool error.
        raise MCPError(types.INVALID_PARAMS, f"unknown tool: {request.name}")
    # The tool's own context: the HTTP request's ids (and caller), timed from here, named for the tool.
    call = dataclasses.replace(outer, target=request.name, log={}, started=clock.monotonic())
    token = logs.request_context.set({**(logs.request_context.get() or {}), "tool": request.name})
    try:
        arguments = dict(request.arguments or {})
        headers = _header_arguments(targets.get(request.name), arguments)
        # Called on this loop's thread, which is the HTTP request's own: the loop serves only this
        # request, so blocking it costs nothing, and the handler sees the request's context as is.
        result = web.invoke(request.name, arguments, call, headers=headers)
        return tool_result(result)
    except Exception as exc:
        error = web.public_error(exc, call)
        body = web.error_body(error)
        retry_after = error.headers().get("Retry-After")
        if retry_after is not None:  # HTTP's header, which a tool result has no place for
            body["error"]["retry_after"] = int(retry_after)
        return types.CallToolResult(
            content=[types.TextContent(text=_json_text(body))], structured_content=body, is_error=True
        )
    finally:
        logs.request_context.reset(token)
        outer.log.update(call.log)


def _header_arguments(target: targets.Target, arguments: dict[str, Any]) -> dict[str, str]:
    """Takes the arguments that HTTP sends as headers (``idempotency_key``) out of ``arguments``."""
    headers = {}
    for name, header in target.request.HEADERS.items():
        value = arguments.pop(name, None)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidArgument(f"{name}: must be a string")
        headers[header] = value
    return headers


def tool_result(result: Any) -> types.CallToolResult:
    """A handler's answer as a tool result: its JSON as text and as structured content, or, for a
    target that answers bytes (``get_attachment``), the bytes as an embedded resource."""
    if isinstance(result, flask.Response):
        if result.mimetype != "application/json":
            return _binary_result(result)
        result = json.loads(result.get_data())
    return types.CallToolResult(
        content=[types.TextContent(text=_json_text(result))], structured_content=result
    )


def _binary_result(response: flask.Response) -> types.CallToolResult:
    try:
        # The response may stream (direct passthrough): read its iterable itself, then release it.
        data = b"".join(response.response)  # type: ignore[arg-type]
    finally:
        response.close()
    filename = _filename(response.headers.get("Content-Disposition", ""))
    mime_type = response.mimetype or "application/octet-stream"
    info = {"filename": filename, "mime_type": mime_type, "size": len(data)}
    resource = types.BlobResourceContents(
        uri=f"attachment:///{quote(filename or 'attachment')}",
        mime_type=mime_type,
        blob=base64.b64encode(data).decode("ascii"),
    )
    return types.CallToolResult(content=[types.EmbeddedResource(resource=resource)], structured_content=info)


def _filename(disposition: str) -> str:
    """The exact filename of a ``Content-Disposition``: RFC 6266's ``filename*`` over the ASCII fallback."""
    extended = _EXTENDED_FILENAME.search(disposition)
    if extended:
        return unquote(extended.group(1))
    plain = _PLAIN_FILENAME.search(disposition)
    return plain.group(1) if plain else ""


def _json_text(body: Any) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


@lru_cache(maxsize=1)
def _server() -> Server[Any]:
    return Server(
        SERVER_NAME,
        version="1",
        instructions=INSTRUCTIONS,
        on_list_tools=_list_tools,
        on_call_tool=_call_tool,
        get_tool_input_schema=lambda name: _tools()[name].input_schema if name in _tools() else None,
    )


def handle(request: flask.Request, call: web.Call) -> flask.Response:
    """Answers one MCP HTTP request (a POST holding one JSON-RPC message) with the SDK's response.

    Raises:
        PayloadTooLarge: a body over the ``mcp`` target's limit (it carries ``send_email``'s attachments).
    """
    max_body = targets.get(call.target).max_body
    body = params.read_body(request, max_body)
    scope = _scope(request)
    token = _http_call.set(call)
    try:
        status, headers, chunks = anyio.run(_serve, scope, body, max_body)
    finally:
        _http_call.reset(token)
    response = flask.Response(b"".join(chunks), status=status, headers=headers)
    if status >= 400 and response.mimetype != "application/json":
        # The SDK's transport-security refusals (a body that is not application/json) are plain text;
        # every error here is JSON, and at this endpoint a protocol error is a JSON-RPC error.
        refusal = {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": types.INVALID_REQUEST, "message": response.get_data(as_text=True)},
        }
        return web.json_response(refusal, status)
    return response


async def _serve(
    scope: dict[str, Any], body: bytes, max_body: int
) -> tuple[int, list[tuple[str, str]], list[bytes]]:
    # A manager runs once (SDK rule); in stateless mode it keeps nothing, so one per request is its use.
    manager = StreamableHTTPSessionManager(
        app=_server(), json_response=True, stateless=True, max_request_body_size=max_body
    )
    delivered = False
    status = 500
    headers: list[tuple[str, str]] = []
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await anyio.sleep_forever()  # the client stays connected until the response is sent
        raise AssertionError("unreachable")

    async def send(message: Mapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers.extend(
                (name.decode("latin-1"), value.decode("latin-1")) for name, value in message["headers"]
            )
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))

    async with manager.run():
        await manager.handle_request(scope, receive, send)
    return status, headers, chunks


def _scope(request: flask.Request) -> dict[str, Any]:
    """The ASGI scope of a WSGI request, at the function's root as a deployed function sees it."""
    server_name, _, server_port = request.host.partition(":")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": request.scheme,
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": request.query_string,
        "headers": [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in request.headers
        ],
        "client": (request.remote_addr or "", 0),
        "server": (server_name, int(server_port) if server_port.isdigit() else None),
    }
