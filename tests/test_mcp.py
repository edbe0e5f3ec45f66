"""The ``mcp`` target, driven by the official MCP client (streamable HTTP + ClientSession) over a real HTTP
server on loopback serving main.py's ``mcp`` through functions-framework, against the same PostgreSQL and
Google fakes as the other targets' tests: what the tools answer, and that it is what the targets answer."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import functions_framework
import httpx2
import pytest
from mcp import Client, ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp_types import (
    INVALID_PARAMS,
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    InitializeResult,
    ListToolsResult,
)
from werkzeug.serving import make_server

from shared import callers, json_schema, mcp_server, request_types, targets
from shared import gmail as gmail_module
from tests.conftest import AUDIENCE, MAILBOX, ROOT, insert_row, row

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    """main.py's ``mcp`` target, built by functions-framework, served by werkzeug on a loopback port."""
    app = functions_framework.create_app(target="mcp", source=str(ROOT / "main.py"))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def in_session(url: str, use: Callable[[ClientSession], Awaitable[Any]]) -> Any:
    """Opens an MCP session the way an agent framework does (initialize first), and runs ``use`` in it."""

    async def run() -> Any:
        async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            return await use(session)

    return anyio.run(run)


def leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    found: list[BaseException] = []
    for error in group.exceptions:
        found.extend(leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return found


def call_tool(url: str, name: str, arguments: dict[str, Any]) -> CallToolResult:
    result: CallToolResult = in_session(url, lambda session: session.call_tool(name, arguments))
    return result


def answer(result: CallToolResult) -> dict[str, Any]:
    """A successful tool result's JSON, checked to be the same as text and as structured content."""
    assert not result.is_error, result.content
    (text,) = result.content
    body = json.loads(text.text)  # type: ignore[union-attr]
    assert body == result.structured_content
    return dict(body)


def tool_error(result: CallToolResult) -> dict[str, Any]:
    """A tool error's contract error object (``{"code", "message"}``), as text and structured content."""
    assert result.is_error, result.structured_content
    (text,) = result.content
    body = json.loads(text.text)  # type: ignore[union-attr]
    assert body == result.structured_content
    assert set(body) == {"error"}
    return dict(body["error"])


def http_answer(client: Callable[[str], Any], target: str, body: dict[str, Any]) -> tuple[int, Any]:
    """What the target's own URL answers for the same fields (POST JSON, or GET for a GET-only target)."""
    app = client(target)
    if "POST" in targets.get(target).methods:
        response = app.post("/", json=body)
    else:
        response = app.get("/", query_string=body)
    return response.status_code, response.get_json()


# -- the session and the tool list ----------------------------------------------------------------


def test_initialize_announces_tools_and_the_server(mcp_url):
    result: InitializeResult = in_session(mcp_url, lambda session: session.initialize())
    assert result.server_info.name == "skill-email"
    assert result.capabilities.tools is not None
    assert "user_id" in (result.instructions or "")


def test_the_tools_are_the_registered_targets_the_contract_names(mcp_url):
    listed: ListToolsResult = in_session(mcp_url, lambda session: session.list_tools())
    names = [tool.name for tool in listed.tools]
    registered = [target.name for target in targets.TARGETS]
    assert names == [name for name in registered if name in mcp_server.CONTRACT_TOOLS]
    assert {"send_email", "list_emails", "token_status"} <= set(names)
    assert "refresh_tokens" not in names and "mcp" not in names


def test_each_tool_schema_is_its_targets_request_schema(mcp_url):
    listed: ListToolsResult = in_session(mcp_url, lambda session: session.list_tools())
    for tool in listed.tools:
        request = targets.get(tool.name).request
        schema = dict(tool.input_schema)
        expected = json_schema.request_schema(request)
        if request.HEADERS:  # send_email: Idempotency-Key as an argument
            assert schema["properties"].pop("idempotency_key")["maxLength"] == 255
        assert schema == expected, tool.name
        assert schema["additionalProperties"] is False
        assert "user_id" in schema["required"]
    send = next(tool for tool in listed.tools if tool.name == "send_email")
    assert send.annotations is not None and send.annotations.read_only_hint is False
    status = next(tool for tool in listed.tools if tool.name == "token_status")
    assert status.annotations is not None and status.annotations.read_only_hint is True


@pytest.mark.parametrize("mode", ["legacy", "auto", "2026-07-28"])
def test_every_protocol_era_the_sdk_speaks_gets_the_same_tools_and_answers(mcp_url, alice, mode):
    # legacy: the initialize handshake; 2026-07-28: the per-request envelope; auto: discover, then either.
    async def run() -> tuple[list[str], Any]:
        async with Client(mcp_url, mode=mode) as client:
            listed = await client.list_tools()
            result = await client.call_tool("token_status", {"user_id": "alice"})
            return [tool.name for tool in listed.tools], result

    names, result = anyio.run(run)
    assert names == [target.name for target in mcp_server.tool_targets()]
    assert answer(result)["connected"] is True


# -- each tool answers what its target answers ------------------------------------------------------


def test_token_status_tool_answers_as_the_target(mcp_url, client, alice):
    body = answer(call_tool(mcp_url, "token_status", {"user_id": "alice"}))
    assert body["connected"] is True and body["user_id"] == "alice"
    assert "access_token" not in json.dumps(body)
    assert http_answer(client, "token_status", {"user_id": "alice"}) == (200, body)


def test_list_emails_tool_answers_as_the_target(mcp_url, client, alice, gmail):
    raw = (
        "From: =?UTF-8?B?6rmA7LKg7IiY?= <chulsoo@example.org>\r\n"
        f"To: {MAILBOX}\r\nSubject: =?UTF-8?B?7ZqM7J2YIOyekOujjA==?=\r\n"
        "Date: Tue, 02 Jan 2024 12:04:05 +0900\r\nMessage-ID: <m1@example.org>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n안녕하세요\r\n"
    ).encode()
    message_id = gmail.add_message(raw)
    arguments = {"user_id": "alice", "include_body": True, "max_results": 5}

    body = answer(call_tool(mcp_url, "list_emails", arguments))

    (message,) = body["messages"]
    assert message["id"] == message_id
    assert message["subject"] == "회의 자료"
    assert message["from"] == "김철수 <chulsoo@example.org>"
    assert "안녕하세요" in message["body_text"]
    assert http_answer(client, "list_emails", arguments) == (200, body)


PDF = b"%PDF-1.4 \x00\xff binary"


def with_attachment() -> bytes:
    """A Korean message with a text body and a PDF attachment whose name is Korean."""
    boundary = "b0undary"
    return (
        "From: =?UTF-8?B?6rmA7LKg7IiY?= <chulsoo@example.org>\r\n"
        f"To: {MAILBOX}\r\nSubject: =?UTF-8?B?7ZqM7J2YIOyekOujjA==?=\r\n"
        "Date: Mon, 04 Mar 2024 09:00:00 +0900\r\nMessage-ID: <m2@example.org>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n'
        f"\r\n--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n안녕하세요\r\n"
        f"--{boundary}\r\nContent-Type: application/pdf\r\n"
        "Content-Disposition: attachment; filename*=utf-8''%ED%9A%8C%EC%9D%98.pdf\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode(PDF).decode()
        + f"\r\n--{boundary}--\r\n"
    ).encode()


def test_get_email_and_get_thread_tools_answer_as_their_targets(mcp_url, client, alice, gmail):
    message_id = gmail.add_message(with_attachment())
    stored = gmail.message(message_id)
    email_arguments = {"user_id": "alice", "message_id": message_id, "max_body_chars": 3}
    thread_arguments = {"user_id": "alice", "thread_id": stored.thread_id}

    message = answer(call_tool(mcp_url, "get_email", email_arguments))
    thread = answer(call_tool(mcp_url, "get_thread", thread_arguments))

    assert message["subject"] == "회의 자료"
    assert message["body_text"] == "안녕하" and message["body_truncated"] is True
    assert [attachment["filename"] for attachment in message["attachments"]] == ["회의.pdf"]
    assert [item["id"] for item in thread["messages"]] == [message_id]
    assert http_answer(client, "get_email", email_arguments) == (200, message)
    assert http_answer(client, "get_thread", thread_arguments) == (200, thread)


def test_get_attachment_tool_answers_the_bytes_as_an_embedded_resource(mcp_url, client, alice, gmail):
    message_id = gmail.add_message(with_attachment())
    listed = answer(call_tool(mcp_url, "get_email", {"user_id": "alice", "message_id": message_id}))
    (attachment,) = listed["attachments"]
    arguments = {"user_id": "alice", "message_id": message_id, "attachment_id": attachment["attachment_id"]}

    result = call_tool(mcp_url, "get_attachment", arguments)

    assert not result.is_error, result.content
    (content,) = result.content
    assert isinstance(content, EmbeddedResource) and isinstance(content.resource, BlobResourceContents)
    assert base64.b64decode(content.resource.blob) == PDF
    assert content.resource.mime_type == "application/pdf"
    assert result.structured_content == {
        "filename": "회의.pdf",
        "mime_type": "application/pdf",
        "size": len(PDF),
    }
    assert client("get_attachment").get("/", query_string=arguments).data == PDF


def test_send_email_tool_sends_once_per_idempotency_key(mcp_url, alice, gmail):
    arguments = {
        "user_id": "alice",
        "to": ["김철수 <chulsoo@example.org>"],
        "subject": "회의 일정 안내",
        "body": "내일 오후 2시입니다.",
        "attachments": [{"filename": "자료.txt", "content": base64.b64encode(b"agenda").decode()}],
        "idempotency_key": "mcp-send-1",
    }

    first = answer(call_tool(mcp_url, "send_email", arguments))
    again = answer(call_tool(mcp_url, "send_email", arguments))

    assert again == first
    assert set(first) == {"id", "thread_id", "label_ids"}
    (sent,) = gmail.sent_messages()
    parsed = email.message_from_bytes(sent, policy=email.policy.default)
    assert parsed["Subject"] == "회의 일정 안내"
    assert parsed["To"] == "김철수 <chulsoo@example.org>"
    assert [part.get_filename() for part in parsed.iter_attachments()] == ["자료.txt"]  # type: ignore[attr-defined]


def test_an_idempotency_key_reused_for_another_message_is_a_conflict(mcp_url, alice, gmail):
    arguments = {"user_id": "alice", "to": "bob@example.org", "body": "one", "idempotency_key": "k-2"}
    answer(call_tool(mcp_url, "send_email", arguments))
    error = tool_error(call_tool(mcp_url, "send_email", {**arguments, "body": "two"}))
    assert error["code"] == "idempotency_conflict"
    assert len(gmail.sent_messages()) == 1


def test_concurrent_calls_each_get_their_own_answer(mcp_url, alice, log_lines):
    # Each HTTP request runs its own event loop on its own server thread; nothing is shared between them.
    users = ["alice", "nobody-1", "alice", "nobody-2", "alice", "nobody-3"]
    with ThreadPoolExecutor(max_workers=len(users)) as pool:
        results = list(pool.map(lambda user: call_tool(mcp_url, "token_status", {"user_id": user}), users))
    for user, result in zip(users, results, strict=True):
        if user == "alice":
            assert answer(result)["user_id"] == "alice"
        else:
            assert tool_error(result)["code"] == "not_found"
    lines = [json.loads(line) for line in log_lines if '"POST mcp 200"' in line]
    logged = sorted(line["user_id"] for line in lines if line.get("tool") == "token_status")
    assert logged == sorted(users)


# -- errors: MCP tool errors carrying the contract's code -------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        ({}, "user_id: required"),
        ({"user_id": "alice", "colour": "red"}, "unknown field: colour"),
        ({"user_id": "alice", "robeing_id": ""}, "robeing_id: must not be empty"),
        ({"user_id": 7}, "user_id: must be a string"),
    ],
)
def test_invalid_arguments_are_invalid_argument_tool_errors(mcp_url, client, database_url, arguments, words):
    result = call_tool(mcp_url, "token_status", arguments)
    error = tool_error(result)
    assert error["code"] == "invalid_argument"
    assert words in error["message"]
    assert http_answer(client, "token_status", arguments) == (400, result.structured_content)


def test_a_user_without_a_token_is_a_not_found_tool_error(mcp_url, client, database_url):
    result = call_tool(mcp_url, "list_emails", {"user_id": "nobody"})
    assert tool_error(result)["code"] == "not_found"
    assert http_answer(client, "list_emails", {"user_id": "nobody"}) == (404, result.structured_content)


def test_a_bad_message_field_is_invalid_argument_and_nothing_is_sent(mcp_url, alice, gmail):
    result = call_tool(
        mcp_url, "send_email", {"user_id": "alice", "to": "bob@example.org", "subject": "a\r\nBcc: x"}
    )
    assert tool_error(result)["code"] == "invalid_argument"
    assert gmail.sent_messages() == []


def test_a_non_string_idempotency_key_is_invalid_argument(mcp_url, alice, gmail):
    result = call_tool(
        mcp_url, "send_email", {"user_id": "alice", "to": "bob@example.org", "idempotency_key": 5}
    )
    assert tool_error(result) == {"code": "invalid_argument", "message": "idempotency_key: must be a string"}
    assert gmail.sent_messages() == []


@pytest.mark.parametrize("arguments", [{}, {"user_id": "nobody"}, {"user_id": "alice", "unknown": 1}])
def test_every_tool_errs_as_its_target_does(mcp_url, client, database_url, arguments):
    """Holds for tools added later too: a tool's error is its target's error body, code and message."""
    for target in mcp_server.tool_targets():
        result = call_tool(mcp_url, target.name, arguments)
        status, body = http_answer(client, target.name, arguments)
        assert status >= 400, (target.name, body)
        assert result.structured_content == body, target.name
        assert result.is_error


def test_an_unknown_tool_is_a_protocol_error(mcp_url):
    # The MCP specification: an unknown tool is a JSON-RPC error (invalid params), not a tool result.
    with pytest.raises(BaseExceptionGroup) as caught:  # the client's task group wraps it
        call_tool(mcp_url, "refresh_tokens", {})
    group = caught.value.subgroup(MCPError)
    assert group is not None
    (error,) = leaves(group)
    assert isinstance(error, MCPError) and error.code == INVALID_PARAMS
    assert error.message == "unknown tool: refresh_tokens"


def test_a_rate_limited_call_says_when_to_retry(mcp_url, alice, gmail, monkeypatch):
    monkeypatch.setattr(gmail_module, "BACKOFF_BASE_S", 0.001)  # the retries' shape, not their waiting
    gmail.fail_next(r"/messages", 429, count=50)
    error = tool_error(call_tool(mcp_url, "list_emails", {"user_id": "alice"}))
    assert error["code"] == "rate_limited"
    assert error["retry_after"] >= 1  # HTTP's Retry-After, which a tool result has no header for


def test_a_bug_is_an_internal_tool_error_that_says_nothing_more(mcp_url, conn, log_lines):
    # A row claiming encrypted values while no key is configured: a bug-shaped failure (as in the
    # OpenAPI scenarios), answered 500 `internal` over HTTP.
    insert_row(conn, "carol", token_data={"access_token": "enc:v1:k1:AAAA", "refresh_token": "r"})
    error = tool_error(call_tool(mcp_url, "token_status", {"user_id": "carol"}))
    assert error == {"code": "internal", "message": "internal error"}
    errors = [json.loads(line) for line in log_lines if '"severity": "ERROR"' in line]
    assert any(
        "no token key is configured" in line["message"] and line["tool"] == "token_status" for line in errors
    )


# -- callers (CALLER_POLICY=enforce): the HTTP request is authenticated, each tool call authorized ----------

ROBEING_CALLER = "robeing-svc@robeing-prod.iam.gserviceaccount.com"


def call_tool_as(url: str, token: str, name: str, arguments: dict[str, Any]) -> CallToolResult:
    async def run() -> CallToolResult:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
        async with (
            streamable_http_client(url, http_client=http) as (read, write),
            ClientSession(read, write) as s,
        ):
            await s.initialize()
            return await s.call_tool(name, arguments)

    result: CallToolResult = anyio.run(run)
    return result


def test_enforce_without_an_id_token_is_401_before_any_tool_runs(client, enforce, log_lines):
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    message["params"] = {"name": "token_status", "arguments": {"user_id": "alice"}}
    response = client("mcp").post("/", json=message, headers={"Accept": "application/json"})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthenticated"
    assert not [line for line in log_lines if '"tool"' in line]


def test_a_robeing_caller_is_held_to_its_robeing_ids_per_tool(mcp_url, enforce, conn, user_token, gmail):
    callers.add_caller(conn, ROBEING_CALLER, "robeing", ["robeing-7"])
    row_id = user_token("alice", expires_in=3600, equipped_to="robeing-7")
    gmail.allow_token(row(conn, row_id)["token_data"]["access_token"])
    token = enforce.mint(ROBEING_CALLER, AUDIENCE)

    mine = call_tool_as(mcp_url, token, "token_status", {"user_id": "alice", "robeing_id": "robeing-7"})
    other = call_tool_as(mcp_url, token, "token_status", {"user_id": "alice", "robeing_id": "robeing-9"})
    unnamed = call_tool_as(mcp_url, token, "list_emails", {"user_id": "alice"})

    assert answer(mine)["equipped_to"] == "robeing-7"
    assert tool_error(other)["code"] == "permission_denied"
    assert tool_error(unnamed)["code"] == "permission_denied"


# -- the HTTP exchange ----------------------------------------------------------------------------------


def test_the_request_log_line_names_the_tool_and_user(mcp_url, alice, log_lines):
    call_tool(mcp_url, "token_status", {"user_id": "alice"})
    requests = [json.loads(line) for line in log_lines if '"POST mcp 200"' in line]
    tool_calls = [line for line in requests if line.get("mcp_method") == "tools/call"]
    assert tool_calls and tool_calls[-1]["tool"] == "token_status" and tool_calls[-1]["user_id"] == "alice"
    assert not [line for line in log_lines if "session manager" in line]  # the SDK's per-request chatter


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT"])
def test_other_methods_are_405_with_the_contract_body(client, method):
    # Stateless: there is no session to stream to (GET) or end (DELETE).
    response = client("mcp").open("/", method=method)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_a_body_over_the_limit_is_413_with_the_contract_body(client):
    # The limit is send_email's (a tools/call carries the same attachments); the SDK never runs.
    response = client("mcp").post(
        "/", data=b" " * (targets.get("mcp").max_body + 1), content_type="application/json"
    )
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"


def test_a_send_over_the_sdks_default_body_limit_goes_through(mcp_url, alice, gmail):
    # 6 MiB of attachment is ~8 MiB of JSON: over the SDK's default 4 MiB, within send_email's limit.
    attachment = bytes(range(256)) * (6 * MiB // 256)
    arguments = {
        "user_id": "alice",
        "to": "bob@example.org",
        "attachments": [{"filename": "big.bin", "content": base64.b64encode(attachment).decode()}],
    }
    answer(call_tool(mcp_url, "send_email", arguments))
    (sent,) = gmail.sent_messages()
    parsed = email.message_from_bytes(sent, policy=email.policy.default)
    (part,) = parsed.iter_attachments()  # type: ignore[attr-defined]
    assert part.get_content() == attachment


def test_a_malformed_message_is_a_json_rpc_error(client):
    response = client("mcp").post(
        "/", data=b"{not json", content_type="application/json", headers={"Accept": "application/json"}
    )
    assert response.status_code == 400
    body = response.get_json()
    assert body["jsonrpc"] == "2.0" and body["error"]["code"] == -32700


def test_header_fields_are_declared_for_every_header_a_request_reads():
    for target in targets.TARGETS:
        assert set(target.request.HEADERS) <= set(request_types.HEADER_FIELDS), target.name


def test_the_readmes_python_example_works_as_printed(mcp_url, alice, gmail, tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Use it from an agent (MCP)") :]
    example = section[section.index("```python\n") + len("```python\n") : section.index("\n```\n")]
    assert '"http://localhost:8080/mcp"' in example
    gmail.add_message(b"From: a@example.org\r\nSubject: unread one\r\n\r\nhi\r\n")
    gmail.add_message(b"From: a@example.org\r\nSubject: read one\r\n\r\nhi\r\n", labels=["INBOX"])
    script = tmp_path / "example.py"
    script.write_text(example.replace("http://localhost:8080/mcp", mcp_url), encoding="utf-8")

    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)

    assert run.returncode == 0, run.stderr[-2000:]
    printed = run.stdout.splitlines()
    assert "'list_emails'" in printed[0] and "'send_email'" in printed[0]
    assert printed[1] == "['unread one']"


def test_importing_main_does_not_import_the_mcp_sdk():
    # Every target's cold start imports main.py; only the mcp target's first request may pay for the SDK.
    probe = (
        "import main, sys; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mcp', 'mcp_types', 'anyio'}))"
    )
    run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"
