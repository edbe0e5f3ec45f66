"""The Python client (client/skill_email_client) against the real functions under ``serve --sandbox``.

Failures are made where they happen in production, in Gmail (the sandbox's fake, through its
``/_sandbox/fail`` control), so the functions answer 429 and 503 themselves and the client handles what
they really send. ID tokens come from google-auth's own ``fetch_id_token`` talking to a local issuer.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import google.auth.crypt
import google.auth.exceptions
import google.auth.jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from skill_email_client import (
    InvalidArgument,
    NotFound,
    RateLimited,
    SkillEmailClient,
    TransportError,
    Unauthenticated,
    Unavailable,
    WebhookVerificationError,
    attachment,
    errors,
    verify_webhook,
)
from skill_email_client.client import is_local
from standardwebhooks.webhooks import Webhook
from werkzeug.wrappers import Request as WerkzeugRequest

from devtools.fakes._server import FakeServer, RecordedRequest, Response
from shared import gmail, targets
from tests.conftest import ROOT
from tests.serving import Served, free_port

SEND_PATH = r"/messages/send$"
ISSUER = "https://accounts.google.com"
SEARCH_PATH = r"/messages$"


class Sleeps(list[float]):
    """Records each wait the client asks for, and waits it (the functions' answers depend on real time)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        time.sleep(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def mail(sandbox: Served, sleeps: Sleeps) -> SkillEmailClient:
    return SkillEmailClient(sandbox.url, sleep=sleeps)


def sent_count(sandbox: Served) -> int:
    return len(requests.get(f"{sandbox.url}/_sandbox/sent", timeout=10).json()["sent"])


def fail(sandbox: Served, **rule: Any) -> None:
    answer = requests.post(f"{sandbox.url}/_sandbox/fail", json=rule, timeout=10)
    assert answer.status_code == 200, answer.text


# -- calls that work ------------------------------------------------------------------------------


def test_send_then_find_it_with_list(mail: SkillEmailClient, sandbox: Served) -> None:
    before = sent_count(sandbox)
    sent = mail.send_email(
        "demo",
        ["Bob <bob@example.com>", "민수 <minsu@example.kr>"],
        subject="클라이언트에서 보낸 메일",
        body="본문입니다",
        attachments=[attachment("메모.txt", "첨부 내용".encode())],
    )
    assert sent["label_ids"] == ["SENT"]
    assert sent_count(sandbox) == before + 1

    found = mail.list_emails("demo", q='in:sent subject:"클라이언트에서 보낸 메일"', include_body=True)
    [message] = found["messages"]
    assert message["id"] == sent["id"]
    assert message["body_text"] == "본문입니다"
    assert [item["filename"] for item in message["attachments"]] == ["메모.txt"]


def test_iter_emails_follows_every_page(mail: SkillEmailClient) -> None:
    every = [message["id"] for message in mail.iter_emails("demo", max_results=2)]
    at_once = [message["id"] for message in mail.list_emails("demo", max_results=100)["messages"]]
    assert every == at_once
    assert len(every) > 2


def test_token_status_and_refresh(mail: SkillEmailClient) -> None:
    assert mail.token_status("demo")["connected"] is True
    summary = mail.refresh_tokens("demo")
    assert summary["refreshed"] == 1
    assert summary["failed"] == []


# -- errors ---------------------------------------------------------------------------------------


def test_each_error_code_raises_its_class(mail: SkillEmailClient, sleeps: Sleeps) -> None:
    with pytest.raises(NotFound) as missing:
        mail.token_status("nobody-here")
    assert missing.value.status == 404
    assert missing.value.code == "not_found"

    with pytest.raises(InvalidArgument) as bad:
        mail.send_email("demo", "not an address", subject="x", body="y")
    assert bad.value.status == 400
    assert "to" in bad.value.message
    assert sleeps == []  # a 4xx is never retried


def test_every_contract_code_has_a_class() -> None:
    codes = {
        "invalid_argument",
        "unauthenticated",
        "reauth_required",
        "permission_denied",
        "not_found",
        "method_not_allowed",
        "idempotency_conflict",
        "payload_too_large",
        "rate_limited",
        "upstream_error",
        "unavailable",
        "internal",
    }
    assert set(errors.BY_CODE) == codes
    assert len(set(errors.BY_CODE.values())) == len(codes)
    body = {"error": {"code": "permission_denied", "message": "m", "required_scopes": ["s1", "s2"]}}
    denied = errors.from_response(403, body, "", None)
    assert type(denied).__name__ == "PermissionDenied"
    assert denied.required_scopes == ["s1", "s2"]
    # Not the contract's JSON (a proxy's HTML page): the class still follows the status.
    assert isinstance(errors.from_response(503, None, "<html>busy</html>", 2.0), Unavailable)


# -- retries --------------------------------------------------------------------------------------


def test_429_is_retried_after_retry_after_and_sends_once(
    mail: SkillEmailClient, sandbox: Served, sleeps: Sleeps
) -> None:
    before = sent_count(sandbox)
    # Enough 429s that the function's own Gmail retries give up and it answers 429 with Retry-After: 1.
    fail(sandbox, path_regex=SEND_PATH, status=429, count=gmail.ATTEMPTS, retry_after=1)
    sent = mail.send_email("demo", "bob@example.com", subject="after a rate limit", body="hi")
    assert sleeps == [1.0]
    assert sent_count(sandbox) == before + 1
    assert mail.list_emails("demo", q='subject:"after a rate limit"')["messages"][0]["id"] == sent["id"]


def test_a_retry_after_past_the_budget_raises_at_once(sandbox: Served, sleeps: Sleeps) -> None:
    impatient = SkillEmailClient(sandbox.url, retry_budget=5, sleep=sleeps)
    fail(sandbox, path_regex=SEND_PATH, status=429, count=1, retry_after=30)
    with pytest.raises(RateLimited) as limited:
        impatient.send_email("demo", "bob@example.com", subject="too soon", body="hi")
    assert limited.value.retry_after == 30
    assert sleeps == []


def test_unknown_outcome_is_retried_with_the_same_key_and_sends_once(
    mail: SkillEmailClient, sandbox: Served, sleeps: Sleeps
) -> None:
    before = sent_count(sandbox)
    # Gmail stores the message but answers 500, and the search for it fails: the function answers 503
    # with error.message_id. The client's retry, under the same key, has the search done again.
    fail(sandbox, after_send=True, status=500)
    fail(sandbox, path_regex=SEARCH_PATH, status=400, method="GET")
    sent = mail.send_email("demo", "bob@example.com", subject="unknown outcome", body="once")
    assert len(sleeps) == 1
    assert sent_count(sandbox) == before + 1
    [found] = mail.list_emails("demo", q='in:sent subject:"unknown outcome"')["messages"]
    assert found["id"] == sent["id"]


def test_unknown_outcome_without_a_key_is_never_retried(sandbox: Served, sleeps: Sleeps) -> None:
    keyless = SkillEmailClient(sandbox.url, auto_idempotency_keys=False, sleep=sleeps)
    before = sent_count(sandbox)
    fail(sandbox, after_send=True, status=500)
    fail(sandbox, path_regex=SEARCH_PATH, status=400, method="GET")
    with pytest.raises(Unavailable) as unknown:
        keyless.send_email("demo", "bob@example.com", subject="keyless unknown", body="maybe")
    assert re.fullmatch(r"<[^<>@\s]+@[^<>@\s]+>", unknown.value.message_id or ""), unknown.value.message_id
    assert sleeps == []
    assert sent_count(sandbox) == before + 1


def test_no_answer_is_retried_for_reads_but_never_for_a_keyless_send(sleeps: Sleeps) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    reads = SkillEmailClient(nowhere, max_attempts=3, sleep=sleeps)
    with pytest.raises(TransportError):
        reads.list_emails("demo")
    assert len(sleeps) == 2

    sleeps.clear()
    keyless = SkillEmailClient(nowhere, max_attempts=3, auto_idempotency_keys=False, sleep=sleeps)
    with pytest.raises(TransportError):
        keyless.send_email("demo", "bob@example.com", body="x")
    assert sleeps == []


# -- Idempotency-Key and ID tokens, seen on the wire ------------------------------------------------


class Recorder(FakeServer):
    """Answers every request with ``{"id": "m1", "thread_id": "t1", "label_ids": []}`` after ``fail_first``
    answers of 503; records what it received."""

    name = "recorder"

    def __init__(self, fail_first: int = 0, refuse_first: int = 0) -> None:
        super().__init__()
        self.fail_first = fail_first
        self.refuse_first = refuse_first

    def handle(self, request: RecordedRequest) -> Response:
        if self.refuse_first > 0:
            self.refuse_first -= 1
            return Response.json(401, {"error": {"code": "unauthenticated", "message": "bad token"}})
        if self.fail_first > 0:
            self.fail_first -= 1
            return Response.json(503, {"error": {"code": "unavailable", "message": "busy"}})
        return Response.json(200, {"id": "m1", "thread_id": "t1", "label_ids": []})


def test_the_idempotency_key_is_the_same_on_every_retry_and_new_per_call(sleeps: Sleeps) -> None:
    with Recorder(fail_first=2) as server:
        client = SkillEmailClient(server.url, sleep=sleeps)
        client.send_email("demo", "bob@example.com", body="x")
        client.send_email("demo", "bob@example.com", body="x")
        client.send_draft("demo", "d1", idempotency_key="mine-1")
        client.list_emails("demo")
        keys = [request.headers.get("idempotency-key") for request in server.requests]
    assert len(sleeps) == 2
    first, second = keys[0], keys[3]
    assert keys[:3] == [first] * 3
    assert first and second and first != second
    assert keys[4] == "mine-1"
    assert keys[5] is None  # reads carry no key
    assert all(request.headers.get("authorization") is None for request in server.requests)  # local URL


def test_local_urls_get_no_id_token() -> None:
    assert is_local("http://localhost:8080")
    assert is_local("http://10.0.0.5:8080")  # plain http: never a bearer token in clear text
    assert is_local("https://localhost:8443")
    assert not is_local("https://us-central1-p.cloudfunctions.net")


class IdTokenIssuer(FakeServer):
    """Google's token endpoint for a service account asking for an ID token (the JWT-bearer grant that
    ``google.oauth2.service_account.IDTokenCredentials`` uses): answers ``{"id_token"}`` for the
    ``target_audience`` the signed assertion names, valid ``lifetime`` seconds."""

    name = "id-token-issuer"

    def __init__(self, signer: google.auth.crypt.Signer, lifetime: int = 3600) -> None:
        super().__init__()
        self.signer = signer
        self.lifetime = lifetime
        self.audiences: list[str] = []

    def handle(self, request: RecordedRequest) -> Response:
        form = request.form()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return Response.json(400, {"error": "unsupported_grant_type"})
        claims = google.auth.jwt.decode(form["assertion"], verify=False)
        audience = claims["target_audience"]
        self.audiences.append(audience)
        now = int(time.time())
        payload = {
            "iss": "https://accounts.google.com",
            "aud": audience,
            "iat": now,
            "exp": now + self.lifetime,
        }
        token = google.auth.jwt.encode(self.signer, payload).decode()
        return Response.json(200, {"id_token": token})


@pytest.fixture
def service_account(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[IdTokenIssuer]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    signer = google.auth.crypt.RSASigner.from_string(pem, "k1")
    with IdTokenIssuer(signer) as issuer:
        info = {
            "type": "service_account",
            "project_id": "sandbox",
            "private_key_id": "k1",
            "private_key": pem,
            "client_email": "robeing@sandbox.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": f"{issuer.url}/token",
        }
        path = tmp_path / "robeing-sa.json"
        path.write_text(json.dumps(info))
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
        yield issuer


def bearer_audience(request: RecordedRequest) -> str:
    token = request.headers["authorization"].removeprefix("Bearer ")
    return str(google.auth.jwt.decode(token, verify=False)["aud"])


def test_id_tokens_from_google_auth_are_cached_per_audience_until_near_expiry(
    service_account: IdTokenIssuer,
) -> None:
    with Recorder() as server:
        deployed = f"{server.url}/fn"
        client = SkillEmailClient(deployed, id_tokens=True)
        for _ in range(3):
            client.token_status("demo")
        client.list_emails("demo")
        assert service_account.audiences == [f"{deployed}/token_status", f"{deployed}/list_emails"]
        assert [bearer_audience(request) for request in server.requests] == [
            f"{deployed}/token_status"
        ] * 3 + [f"{deployed}/list_emails"]

        # A token within five minutes of its expiry is never sent: a new one is fetched.
        service_account.lifetime = 200
        client.get_email("demo", "m1")
        client.get_email("demo", "m1")
        assert service_account.audiences[2:] == [f"{deployed}/get_email"] * 2


def test_a_refused_id_token_is_replaced_once(service_account: IdTokenIssuer) -> None:
    with Recorder(refuse_first=1) as server:
        client = SkillEmailClient(f"{server.url}/fn", id_tokens=True)
        assert client.token_status("demo")
        assert len(service_account.audiences) == 2  # the cached token was dropped and a new one fetched
        tokens = [request.headers["authorization"] for request in server.requests]
        assert len(tokens) == 2

        server.refuse_first = 2
        with pytest.raises(Unauthenticated) as refused:
            client.token_status("demo")
        assert refused.value.status == 401
        assert len(service_account.audiences) == 3  # one renewal per call, not a loop


def test_no_id_token_to_be_had_is_unauthenticated_before_any_request() -> None:
    def no_credentials(audience: str) -> str:
        raise google.auth.exceptions.DefaultCredentialsError("no credentials found")

    with Recorder() as server:
        client = SkillEmailClient(server.url, id_tokens=True, id_token_fetcher=no_credentials)
        with pytest.raises(Unauthenticated) as missing:
            client.list_emails("demo")
        assert "no credentials found" in missing.value.message
        assert server.requests == []


# -- webhooks ---------------------------------------------------------------------------------------

SECRET = "whsec_" + base64.b64encode(b"a sandbox signing secret, 32 byt").decode()


def signed(body: bytes, *, at: int | None = None, event_id: str = "evt_1") -> dict[str, str]:
    timestamp = at if at is not None else int(time.time())
    signature = Webhook(SECRET).sign(event_id, datetime.fromtimestamp(timestamp, UTC), body.decode())
    return {"Webhook-Id": event_id, "Webhook-Timestamp": str(timestamp), "Webhook-Signature": signature}


def test_verify_webhook_accepts_a_signed_event_and_refuses_anything_else() -> None:
    event = {"id": "evt_1", "type": "message.received", "user_id": "demo", "message": {"subject": "안녕"}}
    body = json.dumps(event, ensure_ascii=False).encode()
    assert verify_webhook(body, signed(body), SECRET) == event

    tampered = body.replace("안녕".encode(), "잘가".encode())
    for bad_body, headers in (
        (tampered, signed(body)),
        (body, signed(body, at=int(time.time()) - 3600)),  # replayed an hour later
        (body, {**signed(body), "Webhook-Signature": "v1,bm9wZQ=="}),
        (body, {**signed(body), "Webhook-Signature": "garbage"}),
        (body, {}),
    ):
        with pytest.raises(WebhookVerificationError):
            verify_webhook(bad_body, headers, SECRET)


# -- one method per target ---------------------------------------------------------------------------

CONTRACT_TARGETS = {
    "send_email",
    "list_emails",
    "refresh_tokens",
    "token_status",
    "get_email",
    "get_thread",
    "get_attachment",
    "create_draft",
    "send_draft",
    "modify_email",
    "list_labels",
    "watch_mailbox",
    "list_events",
}
NOT_CALLED_BY_ROBEINGS = {"gmail_push", "mcp"}  # Pub/Sub's CloudEvent; MCP clients speak MCP
# Fields only the functions' own machinery sends: the scheduled run's Cloud Tasks slices.
INTERNAL_FIELDS = {"refresh_tokens": {"row_ids"}}


@pytest.mark.parametrize("name", sorted(CONTRACT_TARGETS | {t.name for t in targets.TARGETS}))
def test_the_client_has_a_method_for_every_target_taking_its_fields(name: str) -> None:
    if name in NOT_CALLED_BY_ROBEINGS:
        assert not hasattr(SkillEmailClient, name)
        return
    method = getattr(SkillEmailClient, name)
    parameters = set(inspect.signature(method).parameters) - {"self", "idempotency_key"}
    if name in targets.BY_NAME:  # built: the client takes exactly the fields its request type declares
        declared = set(targets.BY_NAME[name].request.FIELDS) - INTERNAL_FIELDS.get(name, set())
        assert parameters == declared, name


def test_the_client_installs_with_pip_from_git(tmp_path: Path) -> None:
    # As the README says, `pip install "git+URL#subdirectory=client"`, with this repository as the URL: pip
    # clones it and builds the package as any user's pip would (setuptools from PyPI, isolated build).
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target)]
    source = f"git+file://{ROOT}#subdirectory=client"
    done = subprocess.run([*install, source], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert (target / "skill_email_client" / "py.typed").exists()
    probe = "import skill_email_client; print(skill_email_client.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == str(target / "skill_email_client" / "__init__.py")


def form_of(request: RecordedRequest) -> WerkzeugRequest:
    """The body parsed by werkzeug, as the functions (Flask) parse it."""
    return WerkzeugRequest.from_values(
        input_stream=io.BytesIO(request.body),
        content_length=len(request.body),
        content_type=request.headers["content-type"],
        method="POST",
    )


def test_large_attachments_go_as_multipart_form_data_with_their_bytes_as_they_are() -> None:
    # The contract's form for bodies Cloud Run would refuse as JSON: a `json` part and file parts.
    big = bytes(range(256)) * 64
    with Recorder() as server:
        client = SkillEmailClient(server.url, multipart_over=1000)
        client.send_email(
            "demo",
            "bob@example.com",
            subject="큰 파일",
            attachments=[attachment("보고서.bin", big), attachment("small.txt", b"hi", "text/plain")],
        )
        client.send_email("demo", "bob@example.com", subject="small", attachments=[attachment("a.txt", b"a")])
        large, small = server.requests
    form = form_of(large)
    assert form.mimetype == "multipart/form-data"
    assert sorted(form.form) == ["json"]
    assert json.loads(form.form["json"]) == {"user_id": "demo", "to": "bob@example.com", "subject": "큰 파일"}
    first, second = form.files.getlist("attachments")
    assert (first.filename, first.mimetype, first.read()) == ("보고서.bin", "application/octet-stream", big)
    assert (second.filename, second.mimetype, second.read()) == ("small.txt", "text/plain", b"hi")
    assert small.headers["content-type"] == "application/json"
    assert small.json()["attachments"][0]["content"] == base64.b64encode(b"a").decode()
    assert large.headers["idempotency-key"]


def test_an_attachment_that_is_not_base64_is_refused_before_sending() -> None:
    with Recorder() as server:
        client = SkillEmailClient(server.url, multipart_over=0)
        with pytest.raises(InvalidArgument):
            client.send_email("demo", "bob@example.com", attachments=[{"filename": "x", "content": "%%%"}])
        assert server.requests == []


# -- targets other branches add: real calls once they exist, the index's not_found until then ---------


def seeded(sandbox: Served) -> dict[str, Any]:
    return dict(requests.get(f"{sandbox.url}/_sandbox", timeout=10).json()["seeded"])


def absent(target: str, call: Callable[[], Any]) -> bool:
    """True (after checking the answer) when ``target`` is not served yet: the server's 404 not_found."""
    if target in targets.BY_NAME:
        return False
    with pytest.raises(NotFound) as missing:
        call()
    assert "no target here" in missing.value.message
    return True


def test_get_email_thread_and_attachment(mail: SkillEmailClient, sandbox: Served) -> None:
    ids = seeded(sandbox)
    if not absent("get_email", lambda: mail.get_email("demo", ids["korean"])):
        detail = mail.get_email("demo", ids["korean"])
        assert detail["subject"] == "다음 주 회의 일정 안내"
        assert "화요일" in (detail["body_text"] or "")
        assert detail["headers"]["message_id"]
    if not absent("get_thread", lambda: mail.get_thread("demo", ids["thread_id"])):
        thread = mail.get_thread("demo", ids["thread_id"])
        subjects = [message["subject"] for message in thread["messages"]]
        assert subjects == ["Project kickoff", "Re: Project kickoff", "Re: Project kickoff"]
    listed = mail.list_emails("demo", q='subject:"견적서와 보고서"')["messages"]
    [csv] = [item for item in listed[0]["attachments"] if item["filename"] == "견적서.csv"]
    fetch = lambda: mail.get_attachment("demo", listed[0]["id"], csv["attachment_id"])  # noqa: E731
    if not absent("get_attachment", fetch):
        download = fetch()
        assert download["filename"] == "견적서.csv"
        assert "노트북".encode() in download["content"]
        assert download["mime_type"].startswith("text/csv")


def test_drafts_labels_and_modify(mail: SkillEmailClient, sandbox: Served) -> None:
    create = lambda: mail.create_draft("demo", "bob@example.com", subject="초안", body="검토 부탁")  # noqa: E731
    if not absent("create_draft", create):
        draft = create()
        assert set(draft) == {"draft_id", "message_id", "thread_id"}
        sent = mail.send_draft("demo", draft["draft_id"])
        assert "SENT" in sent["label_ids"]
        with pytest.raises(NotFound):
            mail.send_draft("demo", "r-no-such-draft")
    labels = lambda: mail.list_labels("demo", include_counts=True)  # noqa: E731
    if not absent("list_labels", labels):
        inbox = next(label for label in labels()["labels"] if label["id"] == "INBOX")
        assert inbox["type"] == "system"
        assert inbox["messages_total"] >= 1
    korean = seeded(sandbox)["korean"]
    modify = lambda: mail.modify_email("demo", message_id=korean, mark_read=True)  # noqa: E731
    if not absent("modify_email", modify):
        assert "UNREAD" not in modify()["label_ids"]
        with pytest.raises(InvalidArgument):
            mail.modify_email("demo", message_id=korean)  # nothing to change


def test_watch_and_list_events(mail: SkillEmailClient, sandbox: Served) -> None:
    watch = lambda: mail.watch_mailbox("demo", "demo-robeing")  # noqa: E731
    if absent("watch_mailbox", watch):
        absent("list_events", lambda: mail.list_events("demo-robeing"))
        return
    assert watch()["history_id"]
    delivered = requests.post(
        f"{sandbox.url}/_sandbox/deliver", json={"subject": "client event", "body": "x"}, timeout=60
    ).json()
    found, cursor = [], None
    while True:
        page = mail.list_events("demo-robeing", after=cursor, limit=50)
        found += [event["message"]["id"] for event in page["events"]]
        if not page["events"]:
            break
        cursor = page["next_cursor"]
    assert delivered["id"] in found
