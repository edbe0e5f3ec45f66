"""Structured logs: one JSON object a line with Cloud Logging's severity; secrets redacted by construction.

Fields reach a log line only through ``extra={"fields": {...}}`` or the request context, and only as
plain scalars: a Credentials object, a dict such as ``token_data``, or a field whose name says it is a
secret is replaced by ``"[redacted]"`` before it is formatted. Messages and tracebacks also pass a
scrubber for bearer tokens and URL passwords, as a second line of defence.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import sys
import traceback
from collections.abc import Mapping
from typing import Any, TextIO

REDACTED = "[redacted]"
_SECRET_NAME = re.compile(r"token|secret|password|passwd|authorization|credential|key|cookie", re.IGNORECASE)
# Names that contain "token" or "key" but hold no secret.
_SAFE_NAMES = frozenset(
    {"token_uri", "needs_reauth", "idempotency_key_present", "page_token_present", "key_id", "refresh_tokens"}
)
_SCRUBBERS = (
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1" + REDACTED),
    (re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@"), r"\1" + REDACTED + "@"),
    (
        re.compile(
            r"(?i)((?:access_token|refresh_token|client_secret|password|token)[\"']?\s*[:=]\s*[\"']?)"
            r"[^\"'&\s,}]+"
        ),
        r"\1" + REDACTED,
    ),
    (re.compile(r"ya29\.[A-Za-z0-9._-]+"), REDACTED),
    (re.compile(r"1//[A-Za-z0-9._-]{10,}"), REDACTED),
)

request_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "request_context", default=None
)

_LEVEL_TO_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}


def scrub(text: str) -> str:
    """Removes anything shaped like a bearer token, OAuth secret or URL password from free text."""
    for pattern, replacement in _SCRUBBERS:
        text = pattern.sub(replacement, text)
    return text


def safe_value(name: str, value: Any) -> Any:
    """The value as it may appear in a log line: scalars only, secrets never."""
    if name not in _SAFE_NAMES and _SECRET_NAME.search(name):
        return REDACTED
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list | tuple) and all(isinstance(item, str | int | float) for item in value):
        return [scrub(item) if isinstance(item, str) else item for item in value]
    # Dicts (token_data, oauth_config), Credentials and anything else unknown never reach the log.
    return REDACTED


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON for Cloud Logging."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _LEVEL_TO_SEVERITY.get(record.levelno, "DEFAULT"),
            "message": scrub(record.getMessage()),
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "logger": record.name,
        }
        context = request_context.get()
        if context:
            for name, value in context.items():
                entry[name] = safe_value(name, value)
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for name, value in fields.items():
                entry[str(name)] = safe_value(str(name), value)
        if record.exc_info:
            entry["stack_trace"] = scrub("".join(traceback.format_exception(*record.exc_info)))
        line = json.dumps(entry, ensure_ascii=False, default=str)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a bad request: escape rather than lose the line
            line = json.dumps(entry, default=str)
        return line


_configured = False


def configure(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Sends log records as JSON lines (once per process) at ``level``, to ``stream`` (default stdout).

    The functions log to stdout, which Cloud Logging reads; the operator CLI passes stderr, so that its
    stdout holds only results.
    """
    global _configured
    root = logging.getLogger()
    root.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")
    if _configured:
        return
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    # Plain-text handlers (basicConfig's, a framework's) would print the same record unscrubbed.
    for existing in list(root.handlers):
        if type(existing) is logging.StreamHandler and not isinstance(existing.formatter, JsonFormatter):
            root.removeHandler(existing)
    root.addHandler(handler)
    # Chatty libraries that could echo request details; their warnings still come through.
    for name in ("urllib3", "googleapiclient.discovery", "google.auth", "google_auth_httplib2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _configured = True
