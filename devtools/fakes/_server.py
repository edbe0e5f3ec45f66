"""A small threaded HTTP server on loopback that the fakes build on.

Each fake subclasses `FakeServer` and implements `handle()`. The base records every request received on
the wire, adds the configured latency, speaks HTTP/1.1 keep-alive (httplib2 and requests both reuse
connections) and shuts down promptly, closing idle keep-alive connections too.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it.

    `headers` keys are lower-case (HTTP header names are case-insensitive). `query` maps each parameter to
    all its values, in order, because Google APIs repeat parameters (`labelIds=A&labelIds=B`).
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""

    def param(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter `name`."""
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, str]:
        """The body parsed as application/x-www-form-urlencoded (first value of each field)."""
        parsed = urllib.parse.parse_qs(self.body.decode("utf-8"), keep_blank_values=True)
        return {key: values[0] for key, values in parsed.items()}


@dataclass
class Response:
    """What a fake answers: a status, headers and a body. `drop=True` closes the socket without answering."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False

    @classmethod
    def json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
        """A JSON response, with the charset Google's servers name."""
        all_headers = {"Content-Type": "application/json; charset=UTF-8", **(headers or {})}
        return cls(status, json.dumps(payload).encode("utf-8"), all_headers)


def parse_target(target: str) -> tuple[str, dict[str, list[str]]]:
    """Split a request target (path or absolute URL) into its path and query dict."""
    parts = urllib.parse.urlsplit(target)
    return parts.path, urllib.parse.parse_qs(parts.query, keep_blank_values=True)


def status_line(status: int) -> str:
    """`HTTP/1.1 404 Not Found` for a status code.

    Always with a reason phrase: googleapiclient's batch parser splits the line into exactly three parts.
    """
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}"


class _Handler(BaseHTTPRequestHandler):
    # Headers and body go out in two writes: without TCP_NODELAY the body of a kept-alive answer
    # waits ~40 ms for the client's delayed ACK, which would swamp every latency we measure.
    disable_nagle_algorithm = True
    """Turns each HTTP request into a `RecordedRequest` and hands it to the owning fake."""

    protocol_version = "HTTP/1.1"  # keep-alive, like Google's front ends
    # An idle keep-alive connection is closed after this long, so no handler thread blocks forever.
    timeout = 30
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log; tests read `fake.requests` instead."""

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:  # bounded by the client's terminating zero-length chunk or the socket timeout
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        path, query = parse_target(self.path)
        request = RecordedRequest(
            method=self.command,
            path=path,
            query=query,
            headers={key.lower(): value for key, value in self.headers.items()},
            body=self._read_body(),
        )
        fake = self.server.fake
        fake._record(request)
        try:
            response = fake.handle(request)
        except Exception as exc:  # a bug in a fake must show up as a 500, not a hung client
            response = Response.json(500, {"error": {"code": 500, "message": f"fake crashed: {exc!r}"}})
        if fake.latency > 0:
            time.sleep(fake.latency)
        if response.drop:
            # Close without a status line: the client sees the connection reset mid-request.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch


class _Server(ThreadingHTTPServer):
    # Benchmarks open hundreds of concurrent connections; the default backlog of 5 would refuse them.
    request_queue_size = 1024
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeServer


class FakeServer:
    """Base of the fakes: a ThreadingHTTPServer on 127.0.0.1 with an ephemeral port.

    Use as a context manager (`with FakeGmail() as gmail:`) or call `start()` / `close()`.
    Attributes: `url` ("http://127.0.0.1:PORT"), `requests` (every wire request, in arrival order),
    `latency` (seconds slept before each answer).
    """

    name: ClassVar[str] = "fake"
    # Every fake made in this process, so the suite's log guard can ask each for what it issued.
    instances: ClassVar[list[FakeServer]] = []

    def __init__(self, *, latency: float = 0.0) -> None:
        FakeServer.instances.append(self)
        self.latency = latency
        self.lock = threading.RLock()
        self.requests: list[RecordedRequest] = []
        self._connections: set[socket.socket] = set()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        """Start serving in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},  # how quickly close() is noticed
                name=f"{self.name}-{self._server.server_address[1]}",
                daemon=True,
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and close the listening socket and any open keep-alive connections."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
        with self.lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def handle(self, request: RecordedRequest) -> Response:
        """Answer one request; subclasses implement this."""
        raise NotImplementedError

    def issued_secrets(self) -> set[str]:
        """Every secret value this fake issued or holds (tokens, client secrets, keys, secret payloads),
        which must never appear in a log line or an answer of the functions."""
        return set()

    def count(self, method: str | None = None, path_regex: str = "") -> int:
        """How many wire requests had this method (None = any) and a path matching `path_regex`."""
        return len(self.find(method, path_regex))

    def find(self, method: str | None = None, path_regex: str = "") -> list[RecordedRequest]:
        """The wire requests with this method (None = any) and a path matching `path_regex` (re.search)."""
        pattern = re.compile(path_regex)
        with self.lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method.upper()) and pattern.search(r.path)
            ]

    def clear_requests(self) -> None:
        """Forget the recorded requests (e.g. after seeding, before the call under test)."""
        with self.lock:
            self.requests.clear()

    def _record(self, request: RecordedRequest) -> None:
        with self.lock:
            self.requests.append(request)

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self.lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


class FailRule:
    """A queued canned failure: answer `count` more requests matching `path_regex` with `response`."""

    def __init__(self, path_regex: str, response: Response, count: int, method: str | None = None) -> None:
        self.pattern = re.compile(path_regex)
        self.response = response
        self.remaining = count
        self.method = method.upper() if method else None

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and (self.method is None or self.method == method)
            and bool(self.pattern.search(path))
        )


def take_failure(rules: list[FailRule], method: str, path: str) -> Response | None:
    """Pop one use of the first rule matching this request (caller holds the lock)."""
    for rule in rules:
        if rule.matches(method, path):
            rule.remaining -= 1
            if rule.remaining <= 0:
                rules.remove(rule)
            return rule.response
    return None
