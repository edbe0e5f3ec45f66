"""Body limits that hold on a real server: functions-framework's app served by werkzeug on loopback, fed by
a raw socket, so "refused before it is read" is what the client sees on the wire."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from shared import targets

ROOT = Path(__file__).resolve().parent.parent
DECLARED = 300 * 1024 * 1024
PIECE = 64 * 1024


@pytest.fixture
def serve() -> Iterator[object]:
    """``serve(target)``: the target's functions-framework app on a loopback werkzeug server; its port."""
    import functions_framework

    servers = []

    def start(target: str) -> int:
        app = functions_framework.create_app(target=target, source=str(ROOT / "main.py"))
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return int(server.server_port)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _answer_ready(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        body += piece
    return int(lines[0].split()[1]), headers, body


def _send_until_answered(sock: socket.socket, piece: bytes, budget: int) -> int:
    """Sends ``piece`` repeatedly until the server answers or ``budget`` bytes went out; bytes sent."""
    sent = 0
    while sent < budget and not _answer_ready(sock):
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            break  # the server answered and closed: the rest of the body was never wanted
        sent += len(piece)
    return sent


def test_a_declared_300_mb_body_is_413_before_one_byte_of_it_is_sent(serve):
    port = serve("send_email")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {DECLARED}\r\n\r\n".encode()
        )
        # Nothing of the body is sent: the answer must come anyway, so nothing waited for it.
        status, headers, body = _read_answer(sock)
    assert status == 413
    assert headers["connection"].lower() == "close"
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert str(targets.get("send_email").max_body) in json.loads(body)["error"]["message"]


def test_a_declared_body_over_a_small_targets_limit_is_413_at_once(serve):
    port = serve("token_status")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 70000\r\n\r\n"
        )
        status, _, body = _read_answer(sock)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("target", "slack"), [("token_status", 16 * 1024 * 1024), ("send_email", 16 * 1024 * 1024)]
)
def test_a_chunked_body_is_refused_as_it_streams_past_the_limit(serve, target, slack):
    limit = targets.get(target).max_body
    port = serve(target)
    chunk = f"{PIECE:x}\r\n".encode() + b" " * PIECE + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        sent = _send_until_answered(sock, chunk, DECLARED)
        status, headers, body = _read_answer(sock)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert headers["connection"].lower() == "close"
    # Answered once the limit was passed (plus what the sockets' buffers took), far short of 300 MB.
    assert limit < sent < limit + slack, sent


def test_a_chunked_body_under_the_limit_is_read_as_usual(serve, database_url):
    port = serve("token_status")
    payload = json.dumps({"user_id": "nobody"}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + f"{len(payload):x}\r\n".encode()
            + payload
            + b"\r\n0\r\n\r\n"
        )
        status, _, body = _read_answer(sock)
    assert status == 404
    assert json.loads(body)["error"]["code"] == "not_found"


def test_the_limit_is_installed_once_per_app_and_only_under_functions_framework(client):
    from shared import body_limit

    app = client("token_status").application
    assert isinstance(app.wsgi_app, body_limit.BodyLimit)
    assert not isinstance(app.wsgi_app.app, body_limit.BodyLimit)
    body_limit.install()  # a plain import outside functions-framework: nothing to wrap, no error


# -- memory, on the server Cloud Functions runs: functions-framework's gunicorn ----------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.fixture
def gunicorn_server() -> Iterator[object]:
    """``start(target)``: ``functions-framework --target`` (gunicorn, as deployed); (port, worker pid)."""
    processes = []

    def start(target: str) -> tuple[int, int]:
        port = _free_port()
        command = [
            str(Path(sys.executable).parent / "functions-framework"),
            "--target", target, "--source", str(ROOT / "main.py"), "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "THREADS": "2"})
        processes.append(process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                time.sleep(0.1)
                continue
            if children:
                return port, int(children[0])
            time.sleep(0.1)
        raise AssertionError("functions-framework did not start")

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize(
    ("target", "framing"),
    [
        ("send_email", f"Content-Length: {DECLARED}"),
        ("token_status", f"Content-Length: {DECLARED}"),
        ("token_status", "Transfer-Encoding: chunked"),
    ],
)
def test_a_300_mb_body_never_reaches_the_servers_memory(gunicorn_server, target, framing):
    port, worker = gunicorn_server(target)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # A first request, so that what it imports on first use is not counted below.
        sock.sendall(b"PUT / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
        assert _read_answer(sock)[0] == 405
    before = _peak_rss_kib(worker)
    chunked = "chunked" in framing
    piece = (f"{PIECE:x}\r\n".encode() + b" " * PIECE + b"\r\n") if chunked else b" " * PIECE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + framing.encode()
            + b"\r\n\r\n"
        )
        sent = _send_until_answered(sock, piece, DECLARED)
        status, _, body = _read_answer(sock)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert sent < 32 * 1024 * 1024, sent
    growth_kib = _peak_rss_kib(worker) - before
    assert growth_kib < 8 * 1024, f"the worker's peak memory grew by {growth_kib} KiB"


@pytest.mark.parametrize("server", ["werkzeug", "gunicorn"])
def test_a_body_cut_short_is_400_not_a_500(serve, gunicorn_server, server):
    port = serve("token_status") if server == "werkzeug" else gunicorn_server("token_status")[0]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"user_id": '
        )
        sock.shutdown(socket.SHUT_WR)  # the client stops sending, 988 bytes short
        status, _, body = _read_answer(sock)
    assert status == 400
    assert json.loads(body)["error"]["code"] == "invalid_argument"
