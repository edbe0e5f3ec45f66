"""``serve --sandbox`` as a robeing developer meets it: the banner's curl lines, the demo mailbox, the
controls, and nothing reaching Google."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from typing import Any

import requests

from shared import targets
from tests.conftest import ROOT
from tests.serving import Served


def curl_lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip().startswith("curl ")]


def run_printed(line: str) -> Any:
    """Runs a printed command line in bash exactly as printed; returns its output parsed as JSON."""
    done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, (line, done.stderr)
    return json.loads(done.stdout)


def list_all(served: Served, **query: Any) -> list[dict[str, Any]]:
    response = requests.post(
        f"{served.url}/list_emails", json={"user_id": "demo", "max_results": 100, **query}, timeout=30
    )
    assert response.status_code == 200, response.text
    return list(response.json()["messages"])


def test_the_banners_three_curl_lines_work_as_printed(sandbox: Served) -> None:
    send, listing, read = curl_lines(sandbox.output)
    assert "/send_email" in send and "/list_emails" in listing

    sent = run_printed(send)
    assert set(sent) == {"id", "thread_id", "label_ids"}
    assert sent["label_ids"] == ["SENT"]

    found = run_printed(listing)
    assert sent["id"] in [message["id"] for message in found["messages"]]
    mine = next(message for message in found["messages"] if message["id"] == sent["id"])
    assert mine["subject"] == "안녕하세요"
    assert mine["to"] == "friend@example.com"

    answer = run_printed(read)
    if "get_email" in targets.BY_NAME:
        assert answer["subject"] == "다음 주 회의 일정 안내"
        assert "화요일" in answer["body_text"]
    else:
        assert answer["connected"] is True
        assert answer["user_id"] == "demo"


def test_the_demo_mailbox_decodes_korean_legacy_charsets_threads_and_attachments(sandbox: Served) -> None:
    messages = list_all(sandbox, include_body=True, q="-in:sent")
    by_subject = {message["subject"]: message for message in messages}

    assert "다음 주 회의 일정 안내" in by_subject
    assert by_subject["다음 주 회의 일정 안내"]["from"] == "김민준 <minjun@example.kr>"
    # EUC-KR and ISO-2022-JP, subject (RFC 2047) and body, decoded to Unicode.
    assert "EUC-KR 문자 집합" in by_subject["옛날 메일 프로그램에서 보낸 편지"]["body_text"]
    assert "火曜日" in by_subject["会議のお知らせ"]["body_text"]
    # HTML-only mail keeps its HTML body.
    assert "<b>read mail</b>" in by_subject["This week in robeings"]["body_html"]

    invoice = by_subject["견적서와 보고서를 보내드립니다 (invoice and report)"]
    assert sorted(item["filename"] for item in invoice["attachments"]) == ["report.pdf", "견적서.csv"]
    assert all(item["attachment_id"] for item in invoice["attachments"])

    threads = Counter(message["thread_id"] for message in list_all(sandbox, q="subject:kickoff in:anywhere"))
    assert sorted(threads.values()) == [3]


def test_sent_mail_lands_in_the_sandbox_mailbox(sandbox: Served) -> None:
    before = requests.get(f"{sandbox.url}/_sandbox/sent", timeout=10).json()["sent"]
    sent = requests.post(
        f"{sandbox.url}/send_email",
        json={"user_id": "demo", "to": "Bob <bob@example.com>", "subject": "sandbox check 7", "body": "hi"},
        timeout=30,
    )
    assert sent.status_code == 200, sent.text
    after = requests.get(f"{sandbox.url}/_sandbox/sent", timeout=10).json()["sent"]
    assert len(after) == len(before) + 1
    assert after[-1]["to"] == "Bob <bob@example.com>"
    assert after[-1]["subject"] == "sandbox check 7"
    found = list_all(sandbox, q='in:sent subject:"sandbox check 7"')
    assert [message["id"] for message in found] == [sent.json()["id"]]


def test_delivered_mail_shows_up_in_the_inbox(sandbox: Served) -> None:
    delivered = requests.post(
        f"{sandbox.url}/_sandbox/deliver",
        json={"from": "Carol <carol@example.com>", "subject": "새 메일 도착", "body": "방금 보냈어요"},
        timeout=10,
    )
    assert delivered.status_code == 200
    [message] = list_all(sandbox, q="is:unread from:carol", include_body=True)
    assert message["id"] == delivered.json()["id"]
    assert message["subject"] == "새 메일 도착"
    assert message["label_ids"] == ["INBOX", "UNREAD"]


def test_sandbox_controls_answer_json_errors(sandbox: Served) -> None:
    unknown = requests.get(f"{sandbox.url}/_sandbox/nothing", timeout=10)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    for rule, words in (
        ({"status": 429}, "path_regex"),
        ({"path_regex": "(", "status": 429}, "position 0"),
        ({"path_regex": "/send$", "status": 429, "method": 7}, "method"),
        ({"path_regex": "/send$", "status": 429, "count": "many"}, "many"),
    ):
        bad = requests.post(f"{sandbox.url}/_sandbox/fail", json=rule, timeout=10)
        assert bad.status_code == 400, rule
        assert bad.json()["error"]["code"] == "invalid_argument"
        assert words in bad.json()["error"]["message"], bad.json()


def test_nothing_leaves_the_machine(sandbox: Served) -> None:
    described = requests.get(f"{sandbox.url}/_sandbox", timeout=10).json()
    assert described["user_id"] == "demo"
    for url in (described["gmail_url"], described["token_url"]):
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+(/token)?", url), url
    status = requests.get(f"{sandbox.url}/token_status", params={"user_id": "demo"}, timeout=10).json()
    assert status["connected"] is True
    # The banner names the fakes, and GMAIL_API_ENDPOINT from the environment (a dead port) was overridden,
    # or no Gmail call in this module would have worked.
    assert "nothing leaves this machine" in sandbox.output
    assert f"GMAIL_API_ENDPOINT={described['gmail_url']}" in sandbox.output


def test_new_mail_reaches_gmail_push_once_the_mailbox_is_watched(sandbox: Served) -> None:
    # Gmail notifies only a watched mailbox; the sandbox posts that notification to gmail_push as
    # Pub/Sub would, once the target exists. Until then a delivery notifies nobody.
    push = "gmail_push" in targets.BY_NAME
    if push:
        watched = requests.post(
            f"{sandbox.url}/watch_mailbox", json={"user_id": "demo", "robeing_id": "demo-robeing"}, timeout=30
        )
        assert watched.status_code == 200, watched.text
    delivered = requests.post(
        f"{sandbox.url}/_sandbox/deliver", json={"subject": "for the robeing", "body": "new"}, timeout=60
    ).json()
    assert delivered["notified"] is push
    if push:
        events = requests.get(
            f"{sandbox.url}/list_events", params={"robeing_id": "demo-robeing", "limit": 500}, timeout=30
        ).json()["events"]
        assert delivered["id"] in [event["message"]["id"] for event in events]


def test_the_banner_says_how_the_cli_reaches_the_sandbox_database(sandbox: Served) -> None:
    [command] = [line.strip() for line in sandbox.output.splitlines() if "export DATABASE_URL=" in line]
    done = subprocess.run(
        ["bash", "-c", f'{command}; "{sys.executable}" -m shared.cli status demo'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["connected"] is True
