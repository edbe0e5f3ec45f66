"""JSON Schema of the typed requests: the one mapping from a ``params.Field`` to JSON Schema.

The MCP tools' input schemas are built here from the same ``FIELDS`` that ``params.build`` checks, and a
test holds docs/openapi.yaml's request schemas to this mapping, so the three cannot drift apart. The
patterns are ECMA-262 regular expressions (JSON Schema's dialect) for what ``params`` rejects.

Invariant: cheap to import, no MCP SDK; what it returns is a fresh dict the caller may change.
"""

from __future__ import annotations

import copy
from typing import Any

from shared.params import Field
from shared.request_types import Request

# ``id``: no control characters at all. ``str``: no NUL. A ``str_list`` item: no control characters.
ID_PATTERN = r"^[^\u0000-\u001f\u007f]*$"
TEXT_PATTERN = r"^[^\u0000]*$"
LIST_ITEM_PATTERN = r"^[^\u0000-\u001f]*$"
# params drops empty list items and refuses longer ones.
MAX_LIST_ITEM_LENGTH = 256


def field_schema(field: Field) -> dict[str, Any]:
    """The JSON Schema of one field as ``params`` checks it (JSON input, not query strings)."""
    schema: dict[str, Any]
    if field.choices:
        schema = {"type": "string", "enum": list(field.choices)}  # the words imply every other bound
    elif field.kind in ("id", "str"):
        default_pattern = ID_PATTERN if field.kind == "id" else TEXT_PATTERN
        schema = {"type": "string", "pattern": field.pattern or default_pattern}
        if field.min_length:
            schema["minLength"] = field.min_length
        if field.max_length is not None:
            schema["maxLength"] = field.max_length
    elif field.kind == "int":
        schema = {"type": "integer"}
        if field.minimum is not None:
            schema["minimum"] = field.minimum
        if field.maximum is not None:
            schema["maximum"] = field.maximum
    elif field.kind == "bool":
        schema = {"type": "boolean"}
    elif field.kind == "str_list":
        schema = {
            "type": "array",
            "items": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_LIST_ITEM_LENGTH,
                "pattern": LIST_ITEM_PATTERN,
            },
        }
        if field.min_length:
            schema["minItems"] = field.min_length
        if field.max_length is not None:
            schema["maxItems"] = field.max_length
    elif field.kind == "int_list":
        schema = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 1}}
        if field.max_length is not None:
            schema["maxItems"] = field.max_length
    elif field.kind == "any":
        schema = copy.deepcopy(dict(field.schema or {}))
    else:
        raise ValueError(f"no JSON Schema for field kind {field.kind!r}")
    if field.default is not None:
        schema["default"] = field.default
    if field.description:
        schema["description"] = field.description
    return schema


def request_schema(
    request_type: type[Request], header_fields: dict[str, Field] | None = None
) -> dict[str, Any]:
    """The JSON Schema of a request's body: an object of exactly its ``FIELDS``.

    Args:
        request_type: the typed request.
        header_fields: extra properties for values HTTP takes as headers (MCP has no per-call headers,
            so its tools take ``Idempotency-Key`` as the ``idempotency_key`` argument).
    """
    fields = {**request_type.FIELDS, **(header_fields or {})}
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: field_schema(field) for name, field in fields.items()},
        "additionalProperties": False,
    }
    required = [name for name, field in fields.items() if field.required]
    if required:
        schema["required"] = required
    return schema
