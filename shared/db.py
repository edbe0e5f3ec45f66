"""PostgreSQL: one pg8000 connection per invocation, from a ``postgresql://`` URL.

No pool is kept across calls: Cloud Functions instances are frozen between requests, and a pooled
connection would outlive its server side (idle timeouts, failovers) while counting against the
database's connection budget.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import struct
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import pg8000.native
from pg8000 import core as pg_core
from pg8000.converters import make_params
from pg8000.exceptions import DatabaseError, InterfaceError

from shared import config
from shared.config import ConfigError
from shared.errors import Internal, Unavailable

logger = logging.getLogger(__name__)

# A database that does not answer within 10 s will not answer before the caller gives up either.
DEFAULT_CONNECT_TIMEOUT_S = 10
# Bounds every statement, lock waits included, well under the functions' 60 s timeout: a slow or
# locked database answers 503 instead of holding the request until the platform kills it.
STATEMENT_TIMEOUT_MS = 15_000
# Waiting for another invocation's refresh of the same row takes one token-endpoint round trip
# (bounded at ~10 s by the refresh's own timeouts), so wait a little longer than that. A statement
# queued behind several waiters can start this timer again, so STATEMENT_TIMEOUT_MS is the ceiling.
LOCK_TIMEOUT_MS = 12_000
APPLICATION_NAME = "skill-email"
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

# SQLSTATEs that mean "try again later", not "our bug": query canceled (statement timeout),
# lock timeout, serialization failure, deadlock, too many connections, admin shutdown, cannot connect now.
_UNAVAILABLE_SQLSTATES = {"57014", "55P03", "40001", "40P01", "53300", "57P01", "57P02", "57P03"}


@dataclass(frozen=True)
class ConnectParams:
    """pg8000 connection arguments parsed from a URL; ``repr`` never shows the password."""

    user: str
    database: str | None
    host: str | None = None
    port: int = 5432
    unix_sock: str | None = None
    password: str | None = field(default=None, repr=False)
    sslmode: str = "prefer"
    sslrootcert: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S


def parse_database_url(url: str) -> ConnectParams:
    """Parses ``postgresql://user:password@host:port/db?sslmode=..&connect_timeout=..``.

    A ``host`` query parameter that is a directory (``/cloudsql/PROJECT:REGION:INSTANCE``) means the
    unix socket ``<dir>/.s.PGSQL.<port>``, as libpq reads it. User and password are percent-decoded.

    Raises:
        ConfigError: the URL is malformed; the message never contains the password.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ConfigError("the database URL is malformed (check the port and brackets)") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError("the database URL must start with postgresql://")
    query = _query_values(parts.query)
    unknown = set(query) - {"host", "port", "sslmode", "sslrootcert", "connect_timeout", "application_name"}
    if unknown:
        raise ConfigError(f"the database URL has unsupported parameters: {', '.join(sorted(unknown))}")
    user = unquote(parts.username) if parts.username else ""
    if not user:
        raise ConfigError("the database URL must name a user")
    password = unquote(parts.password) if parts.password is not None else None
    database = unquote(parts.path.lstrip("/")) or None
    if "port" in query:
        if not query["port"].isdigit():
            raise ConfigError("the database URL's port must be a number")
        port = int(query["port"])
    port = port or 5432
    sslmode = query.get("sslmode", "prefer") or "prefer"
    if sslmode not in SSL_MODES:
        raise ConfigError(f"sslmode must be one of {', '.join(SSL_MODES)}")
    timeout_text = query.get("connect_timeout", "")
    try:
        connect_timeout = float(timeout_text) if timeout_text else DEFAULT_CONNECT_TIMEOUT_S
    except ValueError:
        raise ConfigError("connect_timeout must be a number of seconds") from None
    if connect_timeout <= 0:
        # libpq reads 0 as "wait forever"; an invocation must never do that.
        connect_timeout = DEFAULT_CONNECT_TIMEOUT_S
    host_param = query.get("host")
    host = unquote(parts.hostname) if parts.hostname else None
    unix_sock = None
    if host_param and host_param.startswith("/"):
        unix_sock = f"{host_param.rstrip('/')}/.s.PGSQL.{port}"
        host = None
    elif host_param:
        host = host_param
    if unix_sock is None and host is None:
        raise ConfigError("the database URL must name a host, or a socket directory in ?host=/path")
    if unix_sock is not None and sslmode in ("require", "verify-ca", "verify-full"):
        raise ConfigError("sslmode=" + sslmode + " cannot be honoured on a unix socket")
    return ConnectParams(
        user=user,
        password=password,
        database=database,
        host=host,
        port=port,
        unix_sock=unix_sock,
        sslmode=sslmode,
        sslrootcert=query.get("sslrootcert") or None,
        connect_timeout=connect_timeout,
    )


def _query_values(query: str) -> dict[str, str]:
    """``key=value&...`` percent-decoded as libpq decodes a URI: ``+`` stays ``+`` (it is not a space
    outside HTML forms; ``parse_qs`` would turn ``root+ca.crt`` into ``root ca.crt``); the last of a
    repeated key wins."""
    values: dict[str, str] = {}
    for item in query.split("&"):
        if not item:
            continue
        key, _, value = item.partition("=")
        values[unquote(key)] = unquote(value)
    return values


_ssl_contexts: dict[tuple[str, str | None], ssl.SSLContext] = {}
_ssl_lock = threading.Lock()


def ssl_context_for(params: ConnectParams) -> ssl.SSLContext | bool:
    """The ``ssl_context`` argument for pg8000: ``False`` for plaintext, else a context built once.

    Always explicit: pg8000's default (``None``) builds a new context on every connect (~21 ms here)
    and silently falls back to plaintext when the server refuses TLS.
    """
    if params.unix_sock is not None or params.sslmode == "disable":
        return False
    key = (params.sslmode, params.sslrootcert)
    with _ssl_lock:
        context = _ssl_contexts.get(key)
        if context is None:
            context = _new_context(params.sslmode, params.sslrootcert)
            _ssl_contexts[key] = context
        return context


def _new_context(sslmode: str, sslrootcert: str | None) -> ssl.SSLContext:
    """A context for ``sslmode`` as libpq reads it.

    ``require`` with a root certificate verifies the server's CA, exactly like ``verify-ca`` (libpq:
    "if a root CA file exists, sslmode=require behaves as verify-ca"); without one it encrypts without
    verifying. ``verify-full`` also checks the host name.

    Raises:
        ConfigError: ``sslrootcert`` is missing or unreadable (503 naming the setting, never a 500).
    """
    try:
        context = ssl.create_default_context(cafile=sslrootcert)
    except (OSError, ssl.SSLError) as exc:
        logger.error("sslrootcert %s cannot be used: %s", sslrootcert, type(exc).__name__)
        raise ConfigError(
            "the database URL's sslrootcert file is missing or holds no readable CA certificate"
        ) from None
    verifies_ca = sslmode in ("verify-ca", "verify-full") or (sslmode == "require" and sslrootcert)
    if not verifies_ca:
        # allow, prefer, and require without a root certificate: encrypted, the server unverified.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif sslmode != "verify-full":
        context.check_hostname = False
    return context


def _tcp_socket(params: ConnectParams) -> socket.socket:
    """A TCP socket with TCP_NODELAY, as libpq sets it: pg8000 does not, and the TLS handshake then
    stalls on Nagle's algorithm against the server's delayed ACK (~45 ms per connect, measured)."""
    sock = socket.create_connection((params.host or "localhost", params.port), params.connect_timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # After connecting, reads wait as long as a statement may run, plus a margin for the answer.
    sock.settimeout(STATEMENT_TIMEOUT_MS / 1000 + 5)
    return sock


def _open(params: ConnectParams, ssl_context: ssl.SSLContext | bool) -> pg8000.native.Connection:
    sock = None if params.unix_sock is not None else _tcp_socket(params)
    try:
        return _connection(params, ssl_context, sock)
    except BaseException:
        if sock is not None:
            sock.close()
        raise


def _connection(
    params: ConnectParams, ssl_context: ssl.SSLContext | bool, sock: socket.socket | None
) -> pg8000.native.Connection:
    return pg8000.native.Connection(
        params.user,
        host=params.host or "localhost",
        database=params.database,
        port=params.port,
        password=params.password,
        unix_sock=params.unix_sock,
        sock=sock,
        ssl_context=ssl_context,
        timeout=params.connect_timeout,
        application_name=APPLICATION_NAME,
        # Sent in the startup packet, so setting them costs no extra round trip.
        startup_params={
            "statement_timeout": str(STATEMENT_TIMEOUT_MS),
            "lock_timeout": str(LOCK_TIMEOUT_MS),
            "idle_in_transaction_session_timeout": str(STATEMENT_TIMEOUT_MS * 2),
        },
    )


def connect(params: ConnectParams) -> pg8000.native.Connection:
    """Opens one connection, with TLS as ``sslmode`` asks and the statement timeout set.

    Raises:
        Unavailable: the server could not be reached, refused TLS that was required, or is shutting down.
    """
    context = ssl_context_for(params)
    try:
        try:
            return _open(params, context)
        except InterfaceError as exc:
            # prefer/allow mean "TLS if the server has it": the one case where plaintext is acceptable.
            if params.sslmode in ("prefer", "allow") and "refuses SSL" in str(exc):
                return _open(params, False)
            raise
    except (TimeoutError, InterfaceError, OSError) as exc:
        target = params.unix_sock or f"{params.host}:{params.port}"
        logger.error("database connect to %s failed: %s", target, _describe(exc))
        raise Unavailable("the database could not be reached") from exc
    except DatabaseError as exc:
        logger.error("database refused the connection: %s", _describe(exc))
        raise Unavailable("the database refused the connection") from exc


def current_params() -> ConnectParams:
    """Connection parameters from ``DATABASE_URL`` or its secret."""
    return parse_database_url(config.database_url())


@contextmanager
def connection(params: ConnectParams | None = None) -> Iterator[Connection]:
    """One connection for the length of a ``with`` block, always closed."""
    conn = Connection(connect(params or current_params()))
    try:
        yield conn
    finally:
        conn.close()


class Connection:
    """A thin wrapper that returns rows as dicts and turns pg8000 errors into ours."""

    def __init__(self, raw: pg8000.native.Connection) -> None:
        self.raw = raw

    def run(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        """Runs one parameterised statement (``:name`` placeholders) and returns its rows."""
        try:
            if params:
                rows, columns = _execute(self.raw, sql, params)
            else:  # the simple protocol: one round trip, and a migration may hold several statements
                rows, columns = self.raw.run(sql), self.raw.columns
        except DatabaseError as exc:
            raise _wrap_database_error(exc) from exc
        except (TimeoutError, InterfaceError, OSError) as exc:
            logger.error("database connection lost: %s", _describe(exc))
            raise Unavailable("the database connection was lost") from exc
        names = [column["name"] for column in columns or []]
        return [dict(zip(names, row, strict=True)) for row in rows or []]

    def one(self, sql: str, **params: Any) -> dict[str, Any] | None:
        """Runs a statement and returns its first row, or None."""
        rows = self.run(sql, **params)
        return rows[0] if rows else None

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """BEGIN ... COMMIT, rolled back on any exception."""
        self.run("BEGIN")
        try:
            yield self
        except BaseException:
            try:
                self.raw.run("ROLLBACK")
            except Exception:  # the connection may be gone; the server rolls back by itself then
                logger.warning("rollback failed; the server discards the transaction on disconnect")
            raise
        self.run("COMMIT")

    def close(self) -> None:
        """Closes the connection, ignoring a connection that is already gone."""
        try:
            self.raw.close()
        except Exception:  # closing a broken socket must not hide the error that broke it
            logger.debug("close of a broken database connection ignored")


# Describe the unnamed portal, then Execute it with no row limit, then Sync (protocol message formats).
_DESCRIBE_PORTAL = b"D" + struct.pack("!i", 6) + b"P\x00"
_EXECUTE_SYNC = b"E" + struct.pack("!i", 9) + b"\x00" + struct.pack("!i", 0) + b"S" + struct.pack("!i", 4)


@functools.lru_cache(maxsize=512)
def _statement(sql: str) -> tuple[str, Any]:
    """pg8000's ``:name`` to ``$n`` rewrite, a character loop of ~0.3 ms, done once per SQL text."""
    return pg8000.native.to_statement(sql)


def _execute(raw: pg8000.native.Connection, sql: str, params: dict[str, Any]) -> tuple[Any, Any]:
    """One parameterised statement in ONE round trip: Parse, Bind, Describe, Execute, Sync, sent together.

    pg8000's ``run`` waits for the server after Parse and again after Describe before it binds, three
    round trips a statement; the extended protocol needs only the Sync's. The statement and its
    parameters are sent exactly as pg8000 sends them (untyped, as text), so PostgreSQL infers the same
    types and pg8000's converters read the rows. An error anywhere makes the server skip to the Sync and
    answer it; ``handle_messages`` reads up to that answer and raises the error, as ``run`` does.
    """
    statement, make_values = _statement(sql)
    context = pg_core.Context(statement)
    sock = raw._sock  # pg8000 has no public batch of messages; its own sends write to this
    if sock is None:
        raise InterfaceError("connection is closed")
    raw.send_PARSE(pg_core.NULL_BYTE, statement, ())
    raw.send_BIND(pg_core.NULL_BYTE, make_params(raw.py_types, make_values(params)))
    try:
        sock.write(_DESCRIBE_PORTAL + _EXECUTE_SYNC)
        sock.flush()
    except OSError as exc:
        raise InterfaceError("network error") from exc
    raw.handle_messages(context)
    return context.rows, context.columns


def _sqlstate(exc: DatabaseError) -> str | None:
    detail = exc.args[0] if exc.args else None
    if isinstance(detail, Mapping):
        code = detail.get("C")
        return str(code) if code else None
    return None


def _describe(exc: BaseException) -> str:
    """A log-safe description: pg8000 puts the server's message dict in args; never any password."""
    if isinstance(exc, DatabaseError) and exc.args and isinstance(exc.args[0], Mapping):
        detail = exc.args[0]
        return f"{detail.get('C', '?')} {detail.get('M', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


def _wrap_database_error(exc: DatabaseError) -> Exception:
    code = _sqlstate(exc)
    if code in _UNAVAILABLE_SQLSTATES:
        logger.error("database busy or timed out: %s", _describe(exc))
        return Unavailable("the database did not answer in time")
    if code in ("42P01", "42703"):
        logger.error(
            "database schema is missing pieces (run python -m shared.cli migrate): %s", _describe(exc)
        )
    else:
        logger.error("database error: %s", _describe(exc))
    # The SQLSTATE is not secret and lets a caller tell, say, a unique violation from a bug.
    return Internal("database error", sqlstate=code)
