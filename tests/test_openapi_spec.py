"""docs/openapi.yaml: valid OpenAPI 3.1 and faithful to the contract's fields and codes (the tables below)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"

# The contract's error table: status -> code.
CONTRACT_ERRORS = {
    400: "invalid_argument",
    401: "reauth_required",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    409: "idempotency_conflict",
    413: "payload_too_large",
    429: "rate_limited",
    502: "upstream_error",
    503: "unavailable",
    500: "internal",
}
# The contract's request fields of each target.
CONTRACT_FIELDS = {
    "send_email": {
        "user_id", "robeing_id", "to", "cc", "bcc", "subject", "body", "html", "attachments",
        "reply_to_message_id", "thread_id", "from_name", "reply_to",
    },
    "list_emails": {
        "user_id", "robeing_id", "q", "label_ids", "max_results", "page_token", "include_body",
        "include_spam_trash",
    },
    "get_email": {"user_id", "robeing_id", "message_id", "max_body_chars"},
    "get_thread": {"user_id", "robeing_id", "thread_id", "max_body_chars"},
    "refresh_tokens": {"user_id", "robeing_id", "window_seconds"},
    "token_status": {"user_id", "robeing_id"},
    "create_draft": {
        "user_id", "robeing_id", "to", "cc", "bcc", "subject", "body", "html", "attachments",
        "reply_to_message_id", "thread_id", "from_name", "reply_to",
    },
    "send_draft": {"user_id", "robeing_id", "draft_id"},
    "modify_email": {
        "user_id", "robeing_id", "message_id", "thread_id", "add_labels", "remove_labels", "mark_read",
        "archive", "trash",
    },
    "list_labels": {"user_id", "robeing_id", "include_counts"},
    "watch_mailbox": {"user_id", "robeing_id", "action", "label_ids"},
    "list_events": {"robeing_id", "after", "limit"},
}  # fmt: skip
# get_attachment takes GET only, so its fields are query parameters only.
ATTACHMENT_FIELDS = {"user_id", "robeing_id", "message_id", "attachment_id"}
METHODS = {
    "send_email": {"post"},
    "list_emails": {"get", "post"},
    "get_email": {"get", "post"},
    "get_thread": {"get", "post"},
    "get_attachment": {"get"},
    "refresh_tokens": {"post"},
    "token_status": {"get", "post"},
    "create_draft": {"post"},
    "send_draft": {"post"},
    "modify_email": {"post"},
    "list_labels": {"get", "post"},
    "watch_mailbox": {"post"},
    "list_events": {"get", "post"},
    "mcp": {"post"},
}
# The MCP transport's own refusals (bad JSON-RPC, Accept, Content-Type) are JSON-RPC errors, per MCP.
MCP_PROTOCOL_STATUSES = {"400", "406"}
MESSAGE_FIELDS = {
    "id", "thread_id", "label_ids", "snippet", "from", "to", "cc", "subject", "date", "internal_date",
    "size_estimate", "attachments", "from_address", "to_addresses", "cc_addresses",
}  # fmt: skip


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())


def deref(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def request_schema(spec: dict[str, Any], target: str) -> dict[str, Any]:
    body = deref(spec, spec["paths"][f"/{target}"]["post"]["requestBody"])
    return deref(spec, body["content"]["application/json"]["schema"])


def test_spec_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1")
    validate(spec)


def test_every_contract_error_code_is_in_the_enum(spec: dict[str, Any]) -> None:
    enum = spec["components"]["schemas"]["ErrorCode"]["enum"]
    assert set(enum) == set(CONTRACT_ERRORS.values())


def test_error_responses_use_the_error_object_with_their_code(spec: dict[str, Any]) -> None:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            for status, response in op["responses"].items():
                if status.startswith("2"):
                    continue
                response = deref(spec, response)
                if path == "/mcp" and status in MCP_PROTOCOL_STATUSES:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/JsonRpcMessage"}, status
                    continue
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (path, method, status)
                assert f"`{CONTRACT_ERRORS[int(status)]}`" in response["description"], (path, method, status)
                if status == "429":
                    assert "Retry-After" in response["headers"]


def test_paths_and_methods_match_the_contract(spec: dict[str, Any]) -> None:
    assert {p.lstrip("/"): set(item) for p, item in spec["paths"].items()} == METHODS


@pytest.mark.parametrize("target", sorted(CONTRACT_FIELDS))
def test_request_schema_has_exactly_the_contract_fields(spec: dict[str, Any], target: str) -> None:
    schema = request_schema(spec, target)
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == CONTRACT_FIELDS[target]


@pytest.mark.parametrize(
    "target",
    [
        "list_emails",
        "token_status",
        "get_email",
        "get_thread",
        "get_attachment",
        "list_labels",
        "list_events",
    ],
)
def test_get_query_parameters_are_the_contract_fields(spec: dict[str, Any], target: str) -> None:
    params = {p["name"] for p in spec["paths"][f"/{target}"]["get"]["parameters"] if p["in"] == "query"}
    assert params == CONTRACT_FIELDS.get(target, ATTACHMENT_FIELDS)


def test_user_id_and_max_results_bounds(spec: dict[str, Any]) -> None:
    user_id = spec["components"]["schemas"]["UserId"]
    assert (user_id["minLength"], user_id["maxLength"]) == (1, 100)
    max_results = request_schema(spec, "list_emails")["properties"]["max_results"]
    assert (max_results["minimum"], max_results["maximum"], max_results["default"]) == (1, 500, 20)


def test_idempotency_key_header_on_send_email(spec: dict[str, Any]) -> None:
    params = [deref(spec, p) for p in spec["paths"]["/send_email"]["post"]["parameters"]]
    (key,) = [p for p in params if p["name"] == "Idempotency-Key"]
    assert key["in"] == "header"
    assert key["schema"]["maxLength"] == 255


def test_list_message_has_the_contract_fields(spec: dict[str, Any]) -> None:
    message = spec["components"]["schemas"]["Message"]
    assert set(message["required"]) >= MESSAGE_FIELDS
    assert {"body_text", "body_html"} <= set(message["properties"])
    attachment = spec["components"]["schemas"]["AttachmentInfo"]
    fields = {"filename", "mime_type", "size", "attachment_id", "inline", "content_id"}
    assert set(attachment["properties"]) == set(attachment["required"]) == fields


def test_get_email_and_thread_messages_have_bodies_and_reply_headers(spec: dict[str, Any]) -> None:
    full = spec["components"]["schemas"]["FullMessage"]
    assert set(full["required"]) >= MESSAGE_FIELDS | {"body_text", "body_html", "body_truncated", "headers"}
    assert set(full["properties"]["headers"]["required"]) == {
        "message_id",
        "in_reply_to",
        "references",
        "reply_to",
    }
    thread = spec["components"]["schemas"]["Thread"]
    assert set(thread["required"]) == {"id", "history_id", "messages"}


def test_events_and_their_webhook_follow_the_contract(spec: dict[str, Any]) -> None:
    event = spec["components"]["schemas"]["Event"]
    assert set(event["required"]) == {"id", "type", "created_at", "user_id", "robeing_id", "message"}
    watch = request_schema(spec, "watch_mailbox")
    assert set(watch["required"]) == {"user_id", "robeing_id"}
    assert watch["properties"]["action"] == {"type": "string", "enum": ["start", "stop"], "default": "start"}
    limit = request_schema(spec, "list_events")["properties"]["limit"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 500, 100)
    hook = spec["webhooks"]["messageReceived"]["post"]
    headers = {p["name"] for p in hook["parameters"] if p["in"] == "header"}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    body = hook["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Event"}


def test_security_is_a_bearer_id_token(spec: dict[str, Any]) -> None:
    (scheme,) = spec["components"]["securitySchemes"].values()
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert spec["security"] == [{"googleIdToken": []}]
    assert "http://localhost:8080" in [s["url"] for s in spec["servers"]]


def test_no_mapping_repeats_a_key() -> None:
    # yaml.safe_load keeps the last of two equal keys silently; a merge of two branches can leave both.
    repeated: list[tuple[str, int]] = []

    def walk(node: yaml.Node) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in seen:
                        repeated.append((key.value, key.start_mark.line + 1))
                    seen.add(key.value)
                walk(value)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item)

    walk(yaml.compose(SPEC_PATH.read_text()))
    assert repeated == []
