"""Request parsing: GET query parameters or a POST JSON object, checked against a typed request's schema.

Unknown fields are rejected (400, naming the field) so that a caller's typo is never silently ignored.
The schemas themselves (which fields each target takes) live in ``request_types``; this module owns
only the checking.

A POST body is JSON with ``Content-Type: application/json`` (an empty one means ``{}``), or, for a
request type that names a ``MULTIPART_FILES`` field, ``multipart/form-data``: a part named ``json``
holding the JSON object and one file part per file, named after that field. Any other POST is 400
before its body is read, so a browser's form or ``text/plain`` post (which needs no CORS preflight)
can never start anything, the scheduled refresh included.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Request as FlaskRequest
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from shared.errors import InvalidArgument, PayloadTooLarge

if TYPE_CHECKING:
    from shared.request_types import Request

R = TypeVar("R", bound="Request")

# A request is a handful of short fields.
MAX_BODY_BYTES = 64 * 1024
JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
# The part of a multipart body that holds the JSON fields.
JSON_PART = "json"
# A json part plus the files of a message: Gmail takes at most a few hundred attachments anyway.
MAX_FORM_PARTS = 500
TRUE_WORDS = frozenset({"true", "1", "yes"})
FALSE_WORDS = frozenset({"false", "0", "no"})


@dataclass(frozen=True)
class Field:
    """One accepted field: its kind (``str``, ``id``, ``int``, ``bool``, ``str_list``, ``int_list``, ``any``)
    and its bounds.

    ``schema`` is the JSON Schema of an ``any`` field, whose value the code that understands it checks
    (the message fields of a send); ``description`` is shown to agents in MCP tool schemas.
    """

    kind: str
    required: bool = False
    min_length: int = 0
    max_length: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    default: Any = None
    query_ok: bool = True
    schema: Mapping[str, Any] | None = None
    description: str = ""
    # A ``str`` that must be one of these words, or match this (ECMA-262 and Python alike) pattern.
    choices: tuple[str, ...] = ()
    pattern: str | None = None


def ident(max_length: int, required: bool = False) -> Field:
    """A user or robeing id: 1..max_length characters, no control characters."""
    return Field("id", required=required, min_length=1, max_length=max_length)


def parse(request: FlaskRequest, request_type: type[R], max_body: int = MAX_BODY_BYTES) -> R:
    """Reads a request (query for GET, JSON object for POST) as ``request_type``, checking every field.

    Returns:
        The typed request: every declared field, with its default when absent, and the declared headers.

    Raises:
        InvalidArgument: bad JSON, an unknown, missing or malformed field.
        PayloadTooLarge: a body over ``max_body`` bytes.
    """
    raw, from_query = read(request, request_type, max_body)
    headers = {name: request.headers.get(header) for name, header in request_type.HEADERS.items()}
    return build(request_type, raw, from_query=from_query, headers=headers)


def read(
    request: FlaskRequest, request_type: type[Request], max_body: int = MAX_BODY_BYTES
) -> tuple[dict[str, Any], bool]:
    """A request's fields, not yet checked: the query of a GET, or the JSON (or multipart) object of a POST.

    Returns:
        The fields, and whether they came from the query (strings that ``build`` converts).

    Raises:
        InvalidArgument: bad JSON, not an object, or a query parameter given twice.
        PayloadTooLarge: a body over ``max_body`` bytes.
    """
    if request.method == "GET":
        raw: dict[str, Any] = {}
        for name in request.args:
            values = request.args.getlist(name)
            if len(values) > 1:
                raise InvalidArgument(f"{name}: given more than once")
            raw[name] = values[0]
        return raw, True
    raw = _body_object(request, request_type, max_body)
    # A POST reads only its JSON body; a field left in the query string would be silently ignored.
    misplaced = sorted(name for name in request.args if name in request_type.FIELDS and name not in raw)
    if misplaced:
        raise InvalidArgument(
            f"{misplaced[0]}: given in the query string, which a POST does not read; "
            "send it in the JSON body (Content-Type: application/json)"
        )
    return raw, False


def read_body(request: FlaskRequest, max_body: int = MAX_BODY_BYTES) -> bytes:
    """A body read whole (the MCP SDK's JSON-RPC message), refused before it is read when its declared
    length is over ``max_body``.

    Raises:
        PayloadTooLarge: a body over ``max_body`` bytes.
        InvalidArgument: the body ended before its declared end.
    """
    length = request.content_length
    if length is not None and length > max_body:
        raise PayloadTooLarge(f"the request body is over {max_body} bytes")
    body = _read_body(request)
    if len(body) > max_body:
        raise PayloadTooLarge(f"the request body is over {max_body} bytes")
    return body


def build(
    request_type: type[R],
    raw: Mapping[str, Any],
    *,
    from_query: bool = False,
    headers: Mapping[str, str | None] | None = None,
) -> R:
    """Checks already-decoded fields (a JSON object, query values, MCP tool arguments) as ``request_type``.

    Raises:
        InvalidArgument: an unknown, missing or malformed field.
    """
    fields = request_type.FIELDS
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise InvalidArgument(f"unknown field: {unknown[0]}")
    parsed: dict[str, Any] = {}
    for name, spec in fields.items():
        if name not in raw or raw[name] is None:
            if spec.required:
                raise InvalidArgument(f"{name}: required")
            parsed[name] = spec.default
            continue
        if from_query and not spec.query_ok:
            raise InvalidArgument(f"{name}: not accepted as a query parameter; POST JSON instead")
        parsed[name] = _check(name, spec, raw[name], from_query)
    for name in request_type.HEADERS:
        parsed[name] = (headers or {}).get(name)
    return request_type(**parsed)


def _body_object(request: FlaskRequest, request_type: type[Request], max_body: int) -> dict[str, Any]:
    length = request.content_length
    if length is not None and length > max_body:
        raise PayloadTooLarge(f"the request body is over {max_body} bytes")
    mimetype = (request.mimetype or "").lower()
    files_field = request_type.MULTIPART_FILES
    if mimetype == MULTIPART_TYPE and files_field:
        return _multipart_object(request, files_field, max_body)
    if mimetype != JSON_TYPE:
        # Checked before the body is read: a POST that is not JSON never starts anything, even empty.
        accepted = f"{JSON_TYPE} or {MULTIPART_TYPE}" if files_field else JSON_TYPE
        raise InvalidArgument(f"a POST body must be JSON with Content-Type: {accepted}")
    body = _read_body(request)
    if len(body) > max_body:
        raise PayloadTooLarge(f"the request body is over {max_body} bytes")
    if not body.strip():
        return {}
    return _json_value(body, "the body")


def _read_body(request: FlaskRequest) -> bytes:
    try:
        return request.get_data(cache=False)
    except (OSError, ClientDisconnected):
        # The client stopped sending mid-body (gunicorn's NoMoreData is an OSError, werkzeug's server
        # raises ClientDisconnected): the client's doing, not a bug of ours. An empty stream in its
        # place keeps functions-framework's read_request from failing the same way after us.
        request.stream = io.BytesIO()
        raise InvalidArgument("the request body ended before its declared end") from None


def _json_value(body: bytes | str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise InvalidArgument(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return value


def _in_memory(
    total_content_length: int | None,
    content_type: str | None,
    filename: str | None,
    content_length: int | None = None,
) -> io.BytesIO:
    # werkzeug would spool parts over 500 KB to a temporary file, which on Cloud Functions is memory
    # too (an in-memory file system), only read back into a second copy; the body is bounded anyway.
    return io.BytesIO()


def _part_bytes(part: FileStorage) -> bytes:
    stream = part.stream
    return stream.getvalue() if isinstance(stream, io.BytesIO) else stream.read()


def _multipart_object(request: FlaskRequest, files_field: str, max_body: int) -> dict[str, Any]:
    """The ``json`` part's object, with each file part added to ``files_field`` as a dict holding the
    file's ``filename``, its bytes as ``content`` and its ``mime_type`` (the part's Content-Type as
    given), so the bytes are never base64-encoded on the way."""
    options = dict(request.mimetype_params)
    parser = FormDataParser(
        stream_factory=_in_memory,
        max_form_memory_size=max_body,
        max_form_parts=MAX_FORM_PARTS,
        silent=False,
    )
    try:
        _, form, files = parser.parse(request.stream, MULTIPART_TYPE, request.content_length, options)
    except RequestEntityTooLarge:
        raise PayloadTooLarge(f"the request body is over {max_body} bytes") from None
    except (OSError, ClientDisconnected):
        raise InvalidArgument("the request body ended before its declared end") from None
    except ValueError as exc:
        raise InvalidArgument(f"the multipart/form-data body is malformed: {exc}") from None
    # A part without a name comes back under None.
    unknown = sorted(repr(name) for name in (set(form) | set(files)) - {JSON_PART, files_field})
    if unknown:
        raise InvalidArgument(
            f"unknown multipart part: {unknown[0]} (expected {JSON_PART} and {files_field})"
        )
    texts = form.getlist(JSON_PART) + [_part_bytes(part) for part in files.getlist(JSON_PART)]
    if len(texts) != 1:
        raise InvalidArgument(f"a multipart body needs exactly one part named {JSON_PART}")
    value = _json_value(texts[0], f"the {JSON_PART} part")
    uploads = files.getlist(files_field)
    if form.getlist(files_field):
        raise InvalidArgument(f"{files_field}: each part must be a file (with a filename)")
    if uploads:
        if files_field in value:
            raise InvalidArgument(f"{files_field}: given both in the {JSON_PART} part and as file parts")
        value[files_field] = [
            {
                "filename": upload.filename or "",
                "content": _part_bytes(upload),
                **({"mime_type": upload.mimetype} if upload.mimetype else {}),
            }
            for upload in uploads
        ]
    return value


def _has_surrogate(text: str) -> bool:
    # "\ud800" is valid JSON but no valid Unicode text: PostgreSQL and Gmail cannot take it.
    return any("\ud800" <= char <= "\udfff" for char in text)


def _check(name: str, spec: Field, value: Any, from_query: bool) -> Any:
    if spec.kind in ("str", "id"):
        if not isinstance(value, str):
            raise InvalidArgument(f"{name}: must be a string")
        if len(value) < spec.min_length:
            raise InvalidArgument(
                f"{name}: must not be empty"
                if spec.min_length == 1
                else f"{name}: at least {spec.min_length} characters"
            )
        if spec.max_length is not None and len(value) > spec.max_length:
            raise InvalidArgument(f"{name}: at most {spec.max_length} characters")
        if spec.kind == "id" and any(ord(char) < 32 or ord(char) == 127 for char in value):
            raise InvalidArgument(f"{name}: must not contain control characters")
        if "\x00" in value:
            raise InvalidArgument(f"{name}: must not contain NUL characters")
        if _has_surrogate(value):
            raise InvalidArgument(f"{name}: contains an unpaired UTF-16 surrogate")
        if spec.choices and value not in spec.choices:
            raise InvalidArgument(f"{name}: must be one of {', '.join(spec.choices)}")
        if spec.pattern is not None and not re.fullmatch(spec.pattern, value):
            raise InvalidArgument(f"{name}: not in the expected form")
        return value
    if spec.kind == "int":
        if from_query and isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise InvalidArgument(f"{name}: must be a whole number") from None
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON has one number type: 25.0 is the whole number 25
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"{name}: must be a whole number")
        if spec.minimum is not None and value < spec.minimum:
            raise InvalidArgument(f"{name}: must be at least {spec.minimum}")
        if spec.maximum is not None and value > spec.maximum:
            raise InvalidArgument(f"{name}: must be at most {spec.maximum}")
        return value
    if spec.kind == "bool":
        if from_query and isinstance(value, str):
            word = value.strip().lower()
            if word in TRUE_WORDS:
                return True
            if word in FALSE_WORDS:
                return False
        if not isinstance(value, bool):
            raise InvalidArgument(f"{name}: must be true or false")
        return value
    if spec.kind == "int_list":
        if not isinstance(value, list) or not all(
            isinstance(item, int) and not isinstance(item, bool) and item >= 1 for item in value
        ):
            raise InvalidArgument(f"{name}: must be a list of positive whole numbers")
        if not value or (spec.max_length is not None and len(value) > spec.max_length):
            raise InvalidArgument(f"{name}: 1 to {spec.max_length} items")
        return value
    if spec.kind == "str_list":
        items = value.split(",") if from_query and isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise InvalidArgument(f"{name}: must be a list of strings")
        items = [item.strip() for item in items if item.strip()]
        if len(items) < spec.min_length:
            raise InvalidArgument(
                f"{name}: at least {spec.min_length} item{'s' if spec.min_length > 1 else ''}"
            )
        if spec.max_length is not None and len(items) > spec.max_length:
            raise InvalidArgument(f"{name}: at most {spec.max_length} items")
        for item in items:
            if len(item) > 256 or any(ord(char) < 32 for char in item) or _has_surrogate(item):
                raise InvalidArgument(f"{name}: malformed item")
        return items
    return value  # "any": checked by the code that understands it
