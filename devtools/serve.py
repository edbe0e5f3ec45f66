"""``python -m devtools.serve``: every target of the registry on one port, over an embedded PostgreSQL.

Each target is functions-framework's own app (``create_app(target=NAME, source="main.py")``) mounted
under ``/NAME`` with werkzeug's ``DispatcherMiddleware``, so a request goes through exactly the code a
deployed function runs. The database lives in ``.local/pg`` and is kept across runs; its URL, with the
password, is written to ``.local/database_url`` (mode 0600) for the CLI and never printed.

With ``--sandbox`` the functions run against a local Google instead (see ``devtools/sandbox.py``): the
fakes' token endpoint and Gmail on loopback, a seeded demo mailbox and a connected user ``demo``, in a
database of its own (``.local/sandbox/pg``). The banner then prints curl lines to try.

Ctrl-C, SIGTERM or SIGHUP stops the server, the sandbox's fakes and PostgreSQL. Log lines are plain text
(no terminal colour codes), so they read the same in a file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import functions_framework
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import WSGIRequestHandler, make_server

from devtools.embedded_pg import EmbeddedPostgres
from devtools.sandbox import DEMO_ROBEING, DEMO_USER, Sandbox
from shared import config, db, schema, targets
from shared.errors import SkillEmailError

ROOT = Path(__file__).resolve().parent.parent
# Every target of main.py and the methods it takes, from the one registry, for the index at "/".
TARGETS = {target.name: list(target.methods) for target in targets.TARGETS}
# Settings a developer may set for the local run; shown at start so the run's behaviour is visible.
PASSED_THROUGH = (
    config.GMAIL_API_ENDPOINT,
    config.TOKEN_PROVIDER,
    config.TOKEN_DIR,
    config.LOG_LEVEL,
    config.REFRESH_CONCURRENCY,
)


def build_parser() -> argparse.ArgumentParser:
    description = __doc__.split("\n")[0].replace("``", "")
    parser = argparse.ArgumentParser(prog="python -m devtools.serve", description=description)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="the functions' port (default 8080)")
    parser.add_argument(
        "--db-port", type=int, default=54329, help="PostgreSQL's port (default 54329; 0: any free port)"
    )
    parser.add_argument(
        "--data-dir", help="PostgreSQL's data (default .local/pg, or .local/sandbox/pg with --sandbox)"
    )
    parser.add_argument(
        "--sandbox",
        action="store_true",
        help="run against a local Google (fake Gmail and token endpoint) with a demo mailbox and user",
    )
    return parser


def masked(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def port_is_free(host: str, port: int) -> bool:
    """True when a server may listen on ``port``. SO_REUSEADDR, as the server itself sets it: otherwise
    the sockets a stopped server leaves in TIME_WAIT make the port look taken for about a minute."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def index_app(base_url: str) -> Any:
    """A WSGI app answering ``/`` with the targets, and 404 JSON for any other unmounted path."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "/") in ("", "/"):
            status = "200 OK"
            body: dict[str, Any] = {
                "service": "skill-email (local)",
                "targets": {
                    name: {"url": f"{base_url}/{name}", "methods": methods}
                    for name, methods in TARGETS.items()
                },
            }
        else:
            status = "404 Not Found"
            body = {"error": {"code": "not_found", "message": f"no target here; try {', '.join(TARGETS)}"}}
        # Compact, as every function answers: one shape for a caller's parser and a log line.
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    return app


def at_root(app: Any) -> Any:
    """Serves ``/NAME`` as the function's ``/`` (the dispatcher leaves PATH_INFO empty, which Flask would
    answer with a redirect to ``/NAME/``), as a deployed function's URL is its root."""

    def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ["PATH_INFO"] = environ.get("PATH_INFO") or "/"
        return app(environ, start_response)  # type: ignore[no-any-return]

    return wrapped


def build_app(base_url: str, extra: dict[str, Any] | None = None) -> Any:
    """Every target's functions-framework app under ``/NAME``, the index at ``/``, and ``extra`` mounts."""
    source = str(ROOT / "main.py")
    mounts = {
        f"/{name}": at_root(functions_framework.create_app(target=name, source=source)) for name in TARGETS
    }
    return DispatcherMiddleware(index_app(base_url), {**mounts, **(extra or {})})


class PlainRequestHandler(WSGIRequestHandler):
    """werkzeug's request handler with its request line logged as plain text: werkzeug colours it with
    ANSI escape codes even when the output is a file or a pipe, which garbles every log file."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        line = getattr(self, "requestline", "")  # unset when the request line itself was unreadable
        self.log("info", '"%s" %s %s', line.translate(self._control_char_table), code, size)


def start_database(data_dir: Path, port: int) -> EmbeddedPostgres:
    """Starts (initialising on first use) the cluster in ``data_dir`` and applies the migrations."""
    if port and not port_is_free("127.0.0.1", port):
        print(f"port {port} is taken; PostgreSQL will use a free port instead", file=sys.stderr)
        port = 0
    first_run = not (data_dir / "PG_VERSION").exists()
    print(f"{'initialising' if first_run else 'starting'} PostgreSQL in {data_dir} ...", flush=True)
    server = EmbeddedPostgres(data_dir, port=port or None).start()
    try:
        with db.connection(db.parse_database_url(server.tcp_url())) as conn:
            applied = schema.migrate(conn)
    except BaseException:
        server.stop()
        raise
    if applied:
        print(f"migrations applied: {', '.join(map(str, applied))}")
    return server


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # werkzeug's serve_forever returns on it


def sandbox_curls(base_url: str, sandbox: Sandbox) -> list[str]:
    """Three commands to try the sandbox with: send, list what was sent, and read a seeded message (or,
    before ``get_email`` exists, ask for the demo user's token status)."""
    send = json.dumps(
        {
            "user_id": DEMO_USER,
            "to": "friend@example.com",
            "subject": "안녕하세요",
            "body": "Hello from the sandbox",
        },
        ensure_ascii=False,
    )
    if "get_email" in TARGETS:
        read = f"{base_url}/get_email?user_id={DEMO_USER}&message_id={sandbox.seeded.korean}"
    else:
        read = f"{base_url}/token_status?user_id={DEMO_USER}"
    return [
        f"curl -s -X POST {base_url}/send_email -H 'Content-Type: application/json' -d '{send}'",
        f"curl -s '{base_url}/list_emails?user_id={DEMO_USER}&q=in:sent'",
        f"curl -s '{read}'",
    ]


def announce(base_url: str, url: str, url_file: Path, sandbox: Sandbox | None = None) -> None:
    print(f"\nskill-email functions at {base_url}/")
    for name, methods in TARGETS.items():
        print(f"  {' '.join(methods):9} {base_url}/{name}")
    print(f"\nDATABASE_URL={masked(url)}  (full URL in {url_file})")
    for name in PASSED_THROUGH:
        if os.environ.get(name):
            print(f"{name}={os.environ[name]}")
    if sandbox is not None:
        print(
            f"\nSandbox: Gmail ({sandbox.gmail.url}) and Google's token endpoint ({sandbox.oauth.url})"
            " are local fakes; nothing leaves this machine.\n"
            f'User "{DEMO_USER}" is connected (mailbox {sandbox.gmail.email_address}, '
            f"{sandbox.seeded.count} messages seeded), equipped to robeing {DEMO_ROBEING}.\n"
            "Try, from another shell:"
        )
        for line in sandbox_curls(base_url, sandbox):
            print(f"  {line}")
        print(
            f"Sandbox controls at {base_url}/_sandbox: POST /_sandbox/deliver (new mail),\n"
            "POST /_sandbox/fail (queue a Gmail failure), GET /_sandbox/sent. The mailbox is re-seeded at\n"
            "every start. The CLI (python -m shared.cli ...) reaches the sandbox's database with\n"
            f'  export DATABASE_URL="$(cat {url_file})"\n'
            "Ctrl-C stops the functions, the fakes and PostgreSQL.\n",
            flush=True,
        )
        return
    venv = (ROOT / ".venv").resolve()
    python = ".venv/bin/python" if Path(sys.prefix).resolve() == venv else "python"
    print(
        "\nAdd a token from another shell, in this directory:\n"
        f'  export DATABASE_URL="$(cat {url_file})"\n'
        f"  {python} -m shared.cli authorize USER_ID --client-secrets client_secret.json\n"
        f"  {python} -m shared.cli add-token USER_ID --file authorized_user.json\n"
        f'  curl "{base_url}/token_status?user_id=USER_ID"\n'
        "Ctrl-C stops the functions and PostgreSQL.\n",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not port_is_free(args.host, args.port):
        print(f"port {args.port} is in use on {args.host}: pass --port N", file=sys.stderr)
        return 1
    default_dir = ".local/sandbox/pg" if args.sandbox else ".local/pg"
    data_dir = Path(args.data_dir or ROOT / default_dir).resolve()
    url_file = data_dir.parent / "database_url"
    # Installed explicitly: a shell starts background jobs with SIGINT ignored, and Python keeps that.
    # SIGHUP too: a closed terminal must not leave PostgreSQL running.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    server: EmbeddedPostgres | None = None
    sandbox: Sandbox | None = None
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        server = start_database(data_dir, args.db_port)
        url = server.tcp_url()
        url_file.touch(mode=0o600)
        url_file.chmod(0o600)  # it holds the password
        url_file.write_text(url + "\n")
        os.environ[config.DATABASE_URL] = url  # read by the functions, which run in this process
        shown_host = "localhost" if args.host in ("127.0.0.1", "localhost") else args.host
        base_url = f"http://{shown_host}:{args.port}"
        extra: dict[str, Any] = {}
        if args.sandbox:
            sandbox = Sandbox()
            sandbox.functions_url = f"http://127.0.0.1:{args.port}"
            os.environ.update(sandbox.environment())
            sandbox.connect_demo_user(url)
            extra["/_sandbox"] = sandbox.control_app()
        app = build_app(base_url, extra)
        # werkzeug prints its request lines itself; the functions' JSON log handler must not repeat them.
        logging.getLogger("werkzeug").propagate = False
        announce(base_url, url, url_file, sandbox)
        # make_server, not run_simple: run_simple prints its own banner in ANSI colours.
        httpd = make_server(args.host, args.port, app, threaded=True, request_handler=PlainRequestHandler)
        print(f"listening on {args.host}:{args.port}", flush=True)
        httpd.serve_forever()  # returns on KeyboardInterrupt (raised by _stop) and closes the socket
        return 0
    except KeyboardInterrupt:  # during start-up; once serving, serve_forever returns instead
        return 130
    except (RuntimeError, SkillEmailError) as exc:  # pg_ctl failed (its log tail included), or migrate
        print(f"could not start PostgreSQL in {data_dir}: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C while PostgreSQL shuts down must not leave it running or print a traceback.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        if sandbox is not None:
            sandbox.close()
        if server is not None:
            print("stopping PostgreSQL ...", flush=True)
            server.stop()
            shutil.rmtree(server.socket_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
