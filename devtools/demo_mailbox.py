"""The sandbox's demo mailbox: a handful of messages that show what the functions decode.

Korean and English mail, a three-message thread, attachments (one with a Korean filename), an HTML-only
message and two legacy-charset messages (EUC-KR and ISO-2022-JP, as older Korean and Japanese mailers
still send them). Every message is built as raw RFC 822 bytes, the way Gmail stores mail, so the fake
Gmail serves them exactly as the real one would.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.header import Header
from email.message import EmailMessage
from email.mime.text import MIMEText

from devtools.fakes.gmail import FakeGmail

DEMO_ADDRESS = "demo@sandbox.example"
# Dates run up to the start of the sandbox, so the newest mail is at the top of a listing.
_START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Seeded:
    """Gmail ids of the seeded messages a newcomer is shown first."""

    korean: str
    thread_id: str
    attachment: str
    euc_kr: str
    iso_2022_jp: str
    count: int


def _headers(message: EmailMessage | MIMEText, sender: str, to: str, subject: str, when: datetime) -> None:
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = email.utils.format_datetime(when)
    message["Message-ID"] = email.utils.make_msgid(domain="sandbox.example")


def _text(sender: str, subject: str, body: str, when: datetime, **extra: str) -> EmailMessage:
    message = EmailMessage()
    _headers(message, sender, f"Demo <{DEMO_ADDRESS}>", subject, when)
    for name, value in extra.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message


def _legacy(sender: str, subject: str, body: str, charset: str, when: datetime) -> bytes:
    """A text/plain message whose subject and body are in ``charset``, RFC 2047-encoded as old mailers do."""
    message = MIMEText(body, "plain", charset)
    message["From"] = sender
    message["To"] = DEMO_ADDRESS
    message["Subject"] = Header(subject, charset)
    message["Date"] = email.utils.format_datetime(when)
    message["Message-ID"] = email.utils.make_msgid(domain="sandbox.example")
    return message.as_bytes()


def seed(gmail: FakeGmail, address: str = DEMO_ADDRESS) -> Seeded:
    """Stores the demo messages in ``address``'s mailbox of ``gmail``; returns the ids worth showing.

    A new fake numbers its messages from one fixed start, in the order stored here, so the ids are the
    same at every start: the README's get_email line names the Korean message (the fifth) by its id.
    """

    def at(hours: int) -> datetime:
        return _START + timedelta(hours=hours)

    def add(raw: bytes, labels: tuple[str, ...] = ("INBOX", "UNREAD"), thread_id: str | None = None) -> str:
        return gmail.add_message(raw, labels=labels, thread_id=thread_id, email_address=address)

    english = _text(
        "Alice Kim <alice@example.com>",
        "Welcome to the skill-email sandbox",
        "Hi!\n\nEverything here runs on your machine: Gmail and Google's token endpoint are local fakes.\n"
        "Send mail with send_email and find it again with list_emails (q=in:sent).\n",
        at(0),
    )
    add(english.as_bytes(), ("INBOX",))

    kickoff = _text(
        "Alice Kim <alice@example.com>", "Project kickoff", "Can we meet on Thursday at 10?\n", at(1)
    )
    thread_id = add(kickoff.as_bytes())
    reply = EmailMessage()
    _headers(reply, f"Demo <{DEMO_ADDRESS}>", "Alice Kim <alice@example.com>", "Re: Project kickoff", at(2))
    reply["In-Reply-To"] = reply["References"] = kickoff["Message-ID"]
    reply.set_content("Thursday at 10 works. See you then.\n")
    add(reply.as_bytes(), ("SENT",), thread_id)
    confirm = _text(
        "Alice Kim <alice@example.com>",
        "Re: Project kickoff",
        "Great, I booked room 4.\n",
        at(3),
        In_Reply_To=reply["Message-ID"],
        References=f"{kickoff['Message-ID']} {reply['Message-ID']}",
    )
    add(confirm.as_bytes(), thread_id=thread_id)

    korean = _text(
        "김민준 <minjun@example.kr>",
        "다음 주 회의 일정 안내",
        "안녕하세요,\n\n다음 주 화요일 오후 2시에 회의가 있습니다. 참석 여부를 알려 주세요.\n\n"
        "감사합니다.\n김민준 드림\n",
        at(4),
    )
    korean_id = add(korean.as_bytes())

    invoice = _text(
        "Billing <billing@example.com>",
        "견적서와 보고서를 보내드립니다 (invoice and report)",
        "Please find the quote and the monthly report attached.\n",
        at(5),
    )
    invoice.add_attachment(
        "품목,수량,단가\n노트북,2,1500000\n".encode(), maintype="text", subtype="csv", filename="견적서.csv"
    )
    invoice.add_attachment(
        b"%PDF-1.4\n% sandbox demo\n", maintype="application", subtype="pdf", filename="report.pdf"
    )
    attachment_id = add(invoice.as_bytes())

    newsletter = EmailMessage()
    _headers(newsletter, "News <news@example.com>", DEMO_ADDRESS, "This week in robeings", at(6))
    newsletter.set_content(
        "<html><body><h1>This week</h1><p>Robeings learned to <b>read mail</b>.</p></body></html>",
        subtype="html",
    )
    add(newsletter.as_bytes(), ("INBOX", "UNREAD", "CATEGORY_UPDATES"))

    euc_kr = add(
        _legacy(
            "Lee <lee@example.kr>",
            "옛날 메일 프로그램에서 보낸 편지",
            "이 메일은 EUC-KR 문자 집합으로 인코딩되었습니다.\n",
            "euc-kr",
            at(7),
        )
    )
    iso_2022_jp = add(
        _legacy(
            "Tanaka <tanaka@example.jp>",
            "会議のお知らせ",
            "来週の会議は火曜日の午後二時からです。\n",
            "iso-2022-jp",
            at(8),
        )
    )
    return Seeded(
        korean=korean_id,
        thread_id=thread_id,
        attachment=attachment_id,
        euc_kr=euc_kr,
        iso_2022_jp=iso_2022_jp,
        count=9,
    )
