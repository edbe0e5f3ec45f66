"""Request body limits that hold before anything reads the body: a WSGI wrapper around each target's app.

functions-framework reads every request body into memory after the function returns: ``_configure_app``
registers ``read_request`` (functions_framework/__init__.py) with ``app.after_request``, and it calls
``flask.request.get_data()``, which buffers the whole body, however large, even after a 413. A check in
the function itself therefore comes too late. This wrapper sits outside Flask:

- a declared ``Content-Length`` over the target's ``max_body`` is answered 413 at once; not one byte of
  the body is read (``Connection: close`` tells the server not to wait for it either);
- a body without a declared length (chunked) is read through ``CappedInput``, which fails the read that
  would pass the limit, so at most ``max_body`` bytes are ever held, and returns nothing afterwards, so
  functions-framework's ``read_request`` finishes at once instead of draining the rest.

Invariant: the response to a refused body is the contract's JSON error, like every other answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from shared import targets
from shared.errors import PayloadTooLarge

logger = logging.getLogger("skill_email.request")

# Reads of a body of unknown length go in pieces of this size, so one read(-1) never buffers past the limit.
READ_PIECE_BYTES = 64 * 1024

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class BodyTooLarge(PayloadTooLarge):
    """A body without a declared length grew past the target's limit while it was read."""


class CappedInput:
    """A ``wsgi.input`` that lets at most ``limit`` bytes through, then raises ``BodyTooLarge`` once."""

    def __init__(self, stream: Any, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._seen = 0
        self.tripped = False

    def _take(self, data: bytes) -> bytes:
        self._seen += len(data)
        if self._seen > self._limit:
            self.tripped = True
            raise BodyTooLarge(f"the request body is over {self._limit} bytes")
        return data

    def read(self, size: int | None = -1) -> bytes:
        if self.tripped:
            return b""
        if size is not None and size >= 0:
            # One byte past what remains is enough to know the limit is passed.
            return self._take(self._stream.read(min(size, self._limit - self._seen + 1)))
        pieces = []
        while piece := self._stream.read(READ_PIECE_BYTES):
            pieces.append(self._take(piece))
        return b"".join(pieces)

    def readline(self, size: int | None = -1) -> bytes:
        if self.tripped:
            return b""
        room = self._limit - self._seen + 1
        return self._take(self._stream.readline(room if size is None or size < 0 else min(size, room)))

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


def _declared_length(environ: dict[str, Any]) -> int | None:
    text = str(environ.get("CONTENT_LENGTH") or "").strip()
    return int(text) if text.isdigit() else None


class BodyLimit:
    """WSGI middleware enforcing ``target.max_body`` before the body is read (see the module docstring)."""

    def __init__(self, app: WSGIApp, target: targets.Target) -> None:
        self.app = app
        self.target = target

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        limit = self.target.max_body
        declared = _declared_length(environ)
        if declared is not None and declared > limit:
            return self._refuse(environ, start_response, declared)
        if declared is None:
            capped = CappedInput(environ["wsgi.input"], limit)
            environ["wsgi.input"] = capped

            def start(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
                if capped.tripped:
                    # The rest of the body was never read: the connection cannot carry another request.
                    headers = [*headers, ("Connection", "close")]
                return start_response(status, headers, *exc_info)

            return self.app(environ, start)
        return self.app(environ, start_response)

    def _refuse(
        self, environ: dict[str, Any], start_response: Callable[..., Any], declared: int
    ) -> Iterable[bytes]:
        error = PayloadTooLarge(f"the request body is over {self.target.max_body} bytes")
        body = json.dumps({"error": {"code": error.code, "message": error.message}}).encode()
        start_response(
            "413 Request Entity Too Large",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
            ],
        )
        method = str(environ.get("REQUEST_METHOD", ""))
        logger.info(
            "%s %s 413",
            method,
            self.target.name,
            extra={
                "fields": {
                    "target": self.target.name,
                    "status": 413,
                    "method": method,
                    "error_code": error.code,
                    "declared_length": declared,
                }
            },
        )
        return [body]


def install() -> None:
    """Wraps the functions-framework app being built around the target it serves; idempotent.

    This is the earliest hook a Cloud Function offers: ``functions_framework.create_app`` runs our
    ``main.py`` inside ``app.app_context()`` right after building the Flask app and before it registers
    the routes and ``read_request``; ``app.wsgi_app`` is the outermost callable the server (gunicorn in
    Cloud Functions, werkzeug locally) invokes for every request, before Flask or werkzeug touch the
    body. Outside functions-framework (a plain import) this does nothing.
    """
    import flask

    if not flask.has_app_context():
        return
    app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
    target = targets.BY_NAME.get(app.import_name)
    if target is None or isinstance(app.wsgi_app, BodyLimit):
        return
    app.wsgi_app = BodyLimit(app.wsgi_app, target)
