"""``python -m devtools.serve``: every target of the registry on one port, over an embedded PostgreSQL.

Each target is functions-framework's own app (``create_app(target=NAME, source="main.py")``) mounted
under ``/NAME`` with werkzeug's ``DispatcherMiddleware``, so a request goes through exactly the code a
deployed function runs. The database lives in ``.local/pg`` and is kept across runs; its URL, with the
password, is written to ``.local/database_url`` (mode 0600) for the CLI and never printed.

Ctrl-C or SIGTERM stops the server and then PostgreSQL.
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
from werkzeug.serving import run_simple

from devtools.embedded_pg import EmbeddedPostgres
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
    parser = argparse.ArgumentParser(prog="python -m devtools.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="the functions' port (default 8080)")
    parser.add_argument(
        "--db-port", type=int, default=54329, help="PostgreSQL's port (default 54329; 0: any free port)"
    )
    parser.add_argument("--data-dir", default=".local/pg", help="PostgreSQL's data (default .local/pg)")
    return parser


def masked(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
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
        data = json.dumps(body, indent=2).encode()
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


def build_app(base_url: str) -> Any:
    """The functions-framework apps of every target under ``/NAME``, and the index at ``/``."""
    source = str(ROOT / "main.py")
    mounts = {
        f"/{name}": at_root(functions_framework.create_app(target=name, source=source)) for name in TARGETS
    }
    return DispatcherMiddleware(index_app(base_url), mounts)


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


def announce(base_url: str, url: str, url_file: Path) -> None:
    print(f"\nskill-email functions at {base_url}/")
    for name, methods in TARGETS.items():
        print(f"  {' '.join(methods):9} {base_url}/{name}")
    print(f"\nDATABASE_URL={masked(url)}  (full URL in {url_file})")
    for name in PASSED_THROUGH:
        if os.environ.get(name):
            print(f"{name}={os.environ[name]}")
    python = ".venv/bin/python" if Path(sys.prefix).resolve() == ROOT / ".venv" else "python"
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
    data_dir = Path(args.data_dir).resolve()
    url_file = data_dir.parent / "database_url"
    # Installed explicitly: a shell starts background jobs with SIGINT ignored, and Python keeps that.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    server: EmbeddedPostgres | None = None
    try:
        server = start_database(data_dir, args.db_port)
        url = server.tcp_url()
        url_file.touch(mode=0o600)
        url_file.chmod(0o600)  # it holds the password
        url_file.write_text(url + "\n")
        os.environ[config.DATABASE_URL] = url  # read by the functions, which run in this process
        shown_host = "localhost" if args.host in ("127.0.0.1", "localhost") else args.host
        base_url = f"http://{shown_host}:{args.port}"
        app = build_app(base_url)
        # werkzeug prints its request lines itself; the functions' JSON log handler must not repeat them.
        logging.getLogger("werkzeug").propagate = False
        announce(base_url, url, url_file)
        run_simple(args.host, args.port, app, threaded=True, use_reloader=False)
        return 0
    except KeyboardInterrupt:  # during start-up; once serving, run_simple returns instead
        return 130
    except (RuntimeError, SkillEmailError) as exc:  # pg_ctl failed (its log tail included), or migrate
        print(f"could not start PostgreSQL in {data_dir}: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C while PostgreSQL shuts down must not leave it running or print a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if server is not None:
            print("stopping PostgreSQL ...", flush=True)
            server.stop()
            shutil.rmtree(server.socket_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
