"""shared/json_schema.py: the JSON Schema generated from each request's ``FIELDS`` (what the MCP tools
publish) is what docs/openapi.yaml documents for the same request, field by field, so neither can drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from shared import json_schema, request_types, targets

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
# Words for people, not constraints: the generated schemas may word them differently.
PROSE = {"description", "example", "examples", "summary"}
# Targets whose body is not a request of fields: mcp's is a JSON-RPC message.
NOT_FIELDS = {"mcp"}
# Fields accepted but deliberately left out of the documented API, and why.
UNDOCUMENTED = {("refresh_tokens", "row_ids"): "sent only by the scheduled run's own Cloud Tasks"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    return loaded


def inline(spec: dict[str, Any], node: Any) -> Any:
    """``node`` with every ``$ref`` replaced by its target, a one-schema ``allOf`` merged into its
    parent, and prose dropped: the constraints alone, comparable with a generated schema."""
    if isinstance(node, list):
        return [inline(spec, item) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return inline(spec, {**target, **{k: v for k, v in node.items() if k != "$ref"}})
    node = {key: value for key, value in node.items() if key not in PROSE}
    if "allOf" in node and len(node["allOf"]) == 1:
        (base,) = node.pop("allOf")
        node = {**inline(spec, base), **node}
    return {key: inline(spec, value) for key, value in node.items()}


def without_prose(node: Any) -> Any:
    return inline({}, node)


def documented_fields(spec: dict[str, Any], target: str) -> dict[str, Any]:
    """The documented request of ``target`` as one object schema: its POST body, or its GET query."""
    item = spec["paths"][f"/{target}"]
    if "post" in item:
        body = inline(spec, item["post"]["requestBody"])
        return dict(body["content"]["application/json"]["schema"])
    parameters = [inline(spec, p) for p in item["get"]["parameters"] if inline(spec, p)["in"] == "query"]
    return {
        "type": "object",
        "properties": {p["name"]: p["schema"] for p in parameters},
        "required": [p["name"] for p in parameters if p.get("required")],
        "additionalProperties": False,
    }


# HTTP targets only: a CloudEvent target (gmail_push) has no request body of ours to document.
FIELD_TARGETS = [t for t in targets.TARGETS if t.name not in NOT_FIELDS and t.trigger == targets.HTTP]


@pytest.mark.parametrize("target", FIELD_TARGETS, ids=lambda target: target.name)
def test_generated_request_schema_is_the_documented_one(spec, target):
    documented = documented_fields(spec, target.name)
    generated = without_prose(json_schema.request_schema(target.request))
    for target_name, field_name in UNDOCUMENTED:
        if target_name == target.name:
            del generated["properties"][field_name]
    assert documented["additionalProperties"] is False
    assert set(documented.get("required", [])) == set(generated.get("required", []))
    assert set(documented["properties"]) == set(generated["properties"])
    for name, schema in generated["properties"].items():
        assert documented["properties"][name] == schema, f"{target.name}.{name}"


@pytest.mark.parametrize("target", [t for t in FIELD_TARGETS if "GET" in t.methods], ids=lambda t: t.name)
def test_query_parameters_are_documented_with_the_field_schemas(spec, target):
    parameters = [inline(spec, p) for p in spec["paths"][f"/{target.name}"]["get"]["parameters"]]
    query = {p["name"]: p["schema"] for p in parameters if p["in"] == "query"}
    assert set(query) == set(target.request.FIELDS)
    for name, field in target.request.FIELDS.items():
        assert query[name] == without_prose(json_schema.field_schema(field)), f"{target.name}.{name}"


@pytest.mark.parametrize("target", FIELD_TARGETS, ids=lambda target: target.name)
def test_generated_schemas_are_valid_json_schema(target):
    Draft202012Validator.check_schema(json_schema.request_schema(target.request, request_types.HEADER_FIELDS))


def test_the_readme_send_validates_and_a_typo_does_not():
    schema = json_schema.request_schema(request_types.SendEmailRequest)
    validator = Draft202012Validator(schema)
    send = {
        "user_id": "alice",
        "to": ["Bob <bob@example.com>"],
        "subject": "안녕하세요",
        "body": "Plain text",
        "attachments": [{"filename": "보고서.txt", "content": "aGVsbG8=", "mime_type": "text/plain"}],
    }
    assert list(validator.iter_errors(send)) == []
    assert list(validator.iter_errors({**send, "subjet": "typo"}))
    assert list(validator.iter_errors({**send, "subject": "two\r\nlines"}))
    assert list(validator.iter_errors({"user_id": "alice"}))  # no `to`


def test_every_declared_field_has_a_constraining_schema():
    for target in targets.TARGETS:
        for name, field in target.request.FIELDS.items():
            assert set(json_schema.field_schema(field)) & {"type", "oneOf"}, f"{target.name}.{name}"
