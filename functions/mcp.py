"""mcp: the targets as MCP tools over streamable HTTP (stateless, JSON responses)."""

from typing import Any

import flask

from shared import web


@web.http_function("mcp", raw_request=True)
def mcp(request: flask.Request, call: web.Call) -> Any:
    # Imported on first use: the MCP SDK costs about four times the imports of main.py itself (bench/mcp.py),
    # which no other target should pay.
    from shared import mcp_server

    return mcp_server.handle(request, call)
