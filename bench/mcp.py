"""What the ``mcp`` target costs beside the plain HTTP target, measured in one run.

    python -m bench.mcp [--calls 200] [--repeat 5] [--json]

1. Warm call: ``token_status`` through its own target (POST JSON) and the same call as an MCP
   ``tools/call`` through the ``mcp`` target, both functions-framework apps in this process over one
   embedded PostgreSQL; and ``tools/list`` (no database): what the JSON-RPC bridge alone costs.
2. Cold imports: ``import main`` (what every target's instance pays) beside ``import main`` plus the MCP
   server module (what the ``mcp`` instance pays on its first request), in fresh interpreters.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import functions_framework

from bench._common import ROOT, bench_database, machine, progress, summary, timed

MCP_HEADERS = {"Accept": "application/json, text/event-stream"}
USER = "bench-user"


def _import_seconds(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return time.perf_counter() - started


def cold_imports(repeat: int) -> dict[str, Any]:
    """Median wall time of a fresh interpreter importing main.py, with and without the MCP server."""
    plain: list[float] = []
    with_mcp: list[float] = []
    for _ in range(repeat):  # interleaved, so that machine load hits both alike
        plain.append(_import_seconds("import main"))
        with_mcp.append(_import_seconds("import main, shared.mcp_server"))
    leaked = subprocess.run(
        [
            sys.executable,
            "-c",
            "import main, sys; print(sorted(m for m in sys.modules if m.split('.')[0] == 'mcp'))",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "import_main": summary(plain),
        "import_main_and_mcp": summary(with_mcp),
        "mcp_modules_after_main": leaked,
    }


def warm_calls(calls: int) -> dict[str, Any]:
    """Median latency of token_status over HTTP and over MCP, and of tools/list."""
    import os

    source = str(ROOT / "main.py")
    with bench_database() as database:
        with database.connection() as conn:
            conn.run(
                "INSERT INTO gmail_token (user_id, token_data, scopes, is_equipped) VALUES "
                "(:user, CAST(:data AS JSONB), ARRAY['https://www.googleapis.com/auth/gmail.send'], true)",
                user=USER,
                data=json.dumps({"access_token": "bench", "refresh_token": "bench"}),
            )
        os.environ["DATABASE_URL"] = database.socket_url
        os.environ["LOG_LEVEL"] = "WARNING"
        http = functions_framework.create_app(target="token_status", source=source).test_client()
        mcp = functions_framework.create_app(target="mcp", source=source).test_client()
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
        call["params"] = {"name": "token_status", "arguments": {"user_id": USER}}
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}

        def over_http() -> None:
            assert http.post("/", json={"user_id": USER}).status_code == 200

        def over_mcp() -> None:
            response = mcp.post("/", json=call, headers=MCP_HEADERS)
            assert response.status_code == 200 and not response.get_json()["result"]["isError"]

        def list_tools() -> None:
            assert mcp.post("/", json=listing, headers=MCP_HEADERS).status_code == 200

        progress(f"warm calls: {calls} each, interleaved")
        variants = {
            "token_status_http": over_http,
            "token_status_mcp": over_mcp,
            "tools_list_mcp": list_tools,
        }
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(calls):  # interleaved, so that machine load hits each variant alike
            for name, function in variants.items():
                samples[name] += timed(function, 1, warmup=0)
        return {name: summary(values[5:]) for name, values in samples.items()}  # the first 5: warm-up


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mcp", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per warm variant (default 200)")
    parser.add_argument("--repeat", type=int, default=5, help="fresh interpreters per import variant")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)

    warm = warm_calls(args.calls)
    progress(f"cold imports: {args.repeat} each")
    cold = cold_imports(args.repeat)
    figures = {"machine": machine(""), "warm": warm, "cold": cold}
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    http_ms = warm["token_status_http"]["median_ms"]
    mcp_ms = warm["token_status_mcp"]["median_ms"]
    plain_ms = cold["import_main"]["median_ms"]
    sdk_ms = cold["import_main_and_mcp"]["median_ms"]
    print(f"machine: {figures['machine']}")
    print("1. warm call (median)")
    print(f"  token_status over HTTP        {http_ms:8.2f} ms   baseline")
    extra = f"x{mcp_ms / http_ms:.2f} (+{mcp_ms - http_ms:.2f} ms)"
    print(f"  token_status as MCP tools/call {mcp_ms:7.2f} ms   {extra}")
    print(f"  tools/list over MCP           {warm['tools_list_mcp']['median_ms']:8.2f} ms   no database")
    print("2. cold imports (median, fresh interpreter)")
    print(f"  import main                   {plain_ms:8.0f} ms   baseline (every target)")
    print(
        f"  import main + MCP server      {sdk_ms:8.0f} ms   x{sdk_ms / plain_ms:.2f} (mcp's first request)"
    )
    print(f"  mcp SDK modules loaded by main: {cold['mcp_modules_after_main'] or '[]'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
