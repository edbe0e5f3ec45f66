"""The fake token endpoint in a process of its own, driven by JSON lines on stdin.

Google's endpoint does not share our interpreter; keeping the fake out of the benchmark's process keeps
its request parsing off our GIL. It also counts new TCP connections, which shows whether a client reuses
its keep-alive connection. Commands (one JSON object a line, one JSON answer a line):

    {"cmd": "add", "prefix": "bench-refresh-", "count": 1000}   register prefix1 .. prefixN
    {"cmd": "add", "tokens": ["..."]}                           register these refresh tokens
    {"cmd": "reset"}                                            forget calls and connections
    {"cmd": "stats"}                                            calls, distinct tokens, max per token, ...

The first line written is ``{"url": ...}``; end of stdin stops the server.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

from devtools.fakes import _server
from devtools.fakes.oauth import FakeTokenEndpoint

# The fake answers in two writes (headers, then body). Without TCP_NODELAY the body waits for the ACK of
# the headers, which the client delays by up to 40 ms on a kept-alive connection: an artefact no Google
# front end has, that would charge keep-alive reuse 40 ms a request. Set in this process only.
_server._Handler.disable_nagle_algorithm = True


class CountingTokenEndpoint(FakeTokenEndpoint):
    """The fake token endpoint, counting the TCP connections clients open to it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.new_connections = 0

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        if add:
            with self.lock:
                self.new_connections += 1
        super()._track(conn, add=add)


def _stats(fake: CountingTokenEndpoint) -> dict[str, Any]:
    with fake.lock:
        counts = fake.calls_by_refresh_token
        return {
            "calls": sum(counts.values()),
            "distinct_tokens": len(counts),
            "max_calls_per_token": max(counts.values(), default=0),
            "new_connections": fake.new_connections,
        }


def main() -> None:
    latency = float(sys.argv[1]) if len(sys.argv) > 1 else 0.1
    with CountingTokenEndpoint(latency=latency) as fake:
        print(json.dumps({"url": fake.url}), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            answer: dict[str, Any] = {"ok": True}
            if command["cmd"] == "add":
                tokens = command.get("tokens") or [
                    f"{command['prefix']}{i}" for i in range(1, int(command["count"]) + 1)
                ]
                with fake.lock:
                    for token in tokens:
                        fake.refresh_tokens[token] = next(iter(fake.clients))
            elif command["cmd"] == "reset":
                with fake.lock:
                    fake.calls_by_refresh_token.clear()
                    fake.requests.clear()
                    fake.new_connections = 0
            elif command["cmd"] == "stats":
                answer = _stats(fake)
            print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
