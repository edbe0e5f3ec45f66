"""Figures for new mail: notification-to-webhook latency, a burst of notifications, events vs new messages.

    python -m bench.push [--latency 0.02] [--samples 40] [--notifications 1000] [--mailboxes 100]
                         [--duplicates 0.3] [--concurrency 32] [--json]

An embedded PostgreSQL in a temp dir; FakeGmail (every answer delayed by ``--latency``, 20 ms by default),
the fake token endpoint and a webhook receiver on loopback, in this process. ``gmail_push`` runs through
functions-framework (``create_app(...).test_client()``), as deployed code would, one client per worker.

1. Latency: a message arrives, its notification is posted, the signed event reaches the webhook. Beside it,
   the floor: the same two Gmail round trips (history.list, one batch get) made directly with
   googleapiclient, no database, no signing, in the same run.
2. Burst: ``--notifications`` notifications over ``--mailboxes`` mailboxes (watched by 10 robeings with
   webhooks), a share ``--duplicates`` of them redelivered copies, posted by ``--concurrency`` workers
   (as Pub/Sub pushes in parallel), each new message added just before its notification. Beside it, the
   floor: the bare Gmail calls of every notification that needs Gmail, at the same concurrency.
3. Events queued and webhook deliveries beside the new messages: they must be equal.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import functions_framework
import google_auth_httplib2
import httplib2
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build_from_document
from googleapiclient.http import BatchHttpRequest

from bench._common import ROOT, Section, bench_database, machine, ms, progress, render, summary
from devtools.fakes.gmail import FakeGmail, discovery_document
from devtools.fakes.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, FakeTokenEndpoint
from devtools.fakes.webhook import FakeWebhook
from shared import db, logs
from shared.events import watch, webhooks

TOPIC = "projects/bench/topics/gmail-push"
PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
ROBEINGS = 10


def raw_message(subject: str, mailbox: str) -> bytes:
    return (
        f"From: Kim <kim@example.com>\r\nTo: {mailbox}\r\nSubject: {subject}\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n"
    ).encode()


def cloud_event(notification: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    data = base64.b64encode(json.dumps(notification).encode()).decode()
    message_id = uuid.uuid4().hex
    headers = {
        "ce-id": message_id,
        "ce-source": f"//pubsub.googleapis.com/{TOPIC}",
        "ce-type": PUBLISHED,
        "ce-specversion": "1.0",
        "Content-Type": "application/json",
    }
    return headers, json.dumps({"message": {"data": data, "messageId": message_id}}).encode()


class Bench:
    """The fakes, the database and ``mailboxes`` watched mailboxes with their tokens."""

    def __init__(self, database_url: str, gmail: FakeGmail, mailboxes: int) -> None:
        self.database_url = database_url
        self.gmail = gmail
        self.addresses = [f"bench{index}@example.com" for index in range(mailboxes)]
        self.tokens: dict[str, str] = {}
        self._local = threading.local()
        self.apps: list[Any] = []

    def seed(self, token_endpoint: FakeTokenEndpoint, webhook: FakeWebhook) -> None:
        expiry = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=2)
        with db.connection(db.parse_database_url(self.database_url)) as conn:
            for index, address in enumerate(self.addresses):
                access = f"ya29.bench-{index}"
                self.tokens[address] = access
                self.gmail.allow_token(access, address)
                conn.run(
                    "INSERT INTO gmail_token (user_id, robeing_id, token_data, oauth_config, expiry, "
                    "is_equipped, equipped_to) "
                    "VALUES (:u, :r, CAST(:t AS JSONB), CAST(:o AS JSONB), :e, TRUE, :r)",
                    u=f"user-{index}",
                    r=f"robeing-{index % ROBEINGS}",
                    t=json.dumps({"access_token": access, "refresh_token": f"1//bench-{index}"}),
                    o=json.dumps(
                        {
                            "client_id": DEFAULT_CLIENT_ID,
                            "client_secret": DEFAULT_CLIENT_SECRET,
                            "token_uri": f"{token_endpoint.url}/token",
                        }
                    ),
                    e=expiry,
                )
            for robeing in range(ROBEINGS):
                webhooks.set_webhook(conn, f"robeing-{robeing}", webhook.url)
        for index, _address in enumerate(self.addresses):
            watch.start(f"user-{index}", f"robeing-{index % ROBEINGS}", ["INBOX"])

    def client(self) -> Any:
        """A functions-framework test client of gmail_push for this thread."""
        client = getattr(self._local, "client", None)
        if client is None:
            app = functions_framework.create_app(target="gmail_push", source=str(ROOT / "main.py"))
            client = self._local.client = app.test_client()
        return client

    def post(self, notification: dict[str, Any]) -> int:
        headers, body = cloud_event(notification)
        return int(self.client().post("/", headers=headers, data=body).status_code)

    def bare_gmail(self, address: str, start: int, message_id: str) -> None:
        """The floor: history.list and a one-message batch get, straight through googleapiclient."""
        service = getattr(self._local, "service", None)
        if service is None:
            service = self._local.service = build_from_document(
                discovery_document(self.gmail.url), http=httplib2.Http()
            )
        http = google_auth_httplib2.AuthorizedHttp(
            Credentials(token=self.tokens[address]), http=httplib2.Http()
        )
        users = service.users()
        users.history().list(userId="me", startHistoryId=str(start), historyTypes=["messageAdded"]).execute(
            http=http
        )
        batch = BatchHttpRequest(batch_uri=f"{self.gmail.url}/batch/gmail/v1")
        batch.add(users.messages().get(userId="me", id=message_id, format="full"))
        batch.execute(http=http)

    def count(self, sql: str) -> int:
        with db.connection(db.parse_database_url(self.database_url)) as conn:
            return int(conn.run(sql)[0]["n"])


def measure_latency(bench: Bench, webhook: FakeWebhook, samples: int) -> tuple[list[float], list[float]]:
    address = bench.addresses[0]
    ours: list[float] = []
    floor: list[float] = []
    for index in range(samples + 3):  # the first 3 warm the client and the instance's caches
        start = bench.gmail.notification(address)["historyId"]
        message_id = bench.gmail.add_message(raw_message(f"latency {index}", address), email_address=address)
        before = len(webhook.deliveries)
        sent = time.monotonic()
        assert bench.post(bench.gmail.notification(address)) == 200
        arrived = webhook.arrivals[-1] if len(webhook.deliveries) > before else float("nan")
        started = time.monotonic()
        bench.bare_gmail(address, start, message_id)
        if index >= 3:
            ours.append(arrived - sent)
            floor.append(time.monotonic() - started)
    return ours, floor


def burst(bench: Bench, notifications: int, duplicate_share: float, concurrency: int) -> dict[str, Any]:
    rng = random.Random(7)
    unique = round(notifications * (1 - duplicate_share))
    actions: list[tuple[str, int]] = [("new", index) for index in range(unique)]
    for _ in range(notifications - unique):  # a redelivery of a notification sent some time before
        actions.insert(rng.randrange(1, len(actions) + 1), ("again", -1))
    sent: list[dict[str, Any]] = []
    lock = threading.Lock()
    statuses: list[int] = []
    floor_work: list[tuple[str, int, str]] = []

    def run(action: tuple[str, int]) -> None:
        kind, index = action
        if kind == "new":
            address = bench.addresses[index % len(bench.addresses)]
            start = bench.gmail.notification(address)["historyId"]
            message_id = bench.gmail.add_message(
                raw_message(f"burst {index}", address), email_address=address
            )
            notification = bench.gmail.notification(address)
            with lock:
                sent.append(notification)
                floor_work.append((address, start, message_id))
        else:
            with lock:
                notification = rng.choice(sent) if sent else None
            if notification is None:
                return
        status = bench.post(notification)
        with lock:
            statuses.append(status)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(run, actions))
    wall = time.monotonic() - started

    floor_started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(lambda work: bench.bare_gmail(*work), floor_work))
    floor_wall = time.monotonic() - floor_started
    return {
        "notifications": len(statuses),
        "new_messages": unique,
        "non_2xx": sum(1 for status in statuses if not 200 <= status < 300),
        "wall_s": wall,
        "per_s": len(statuses) / wall,
        "floor_wall_s": floor_wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.push", description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.02, help="Gmail's answer delay, s (default 0.02)")
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--notifications", type=int, default=1000)
    parser.add_argument("--mailboxes", type=int, default=100)
    parser.add_argument("--duplicates", type=float, default=0.3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logs.configure("ERROR")  # the per-notification log lines would swamp the table

    with (
        bench_database() as database,
        FakeTokenEndpoint() as token_endpoint,
        FakeWebhook() as webhook,
        FakeGmail(email_address="bench0@example.com") as gmail,
    ):
        os.environ.update(
            DATABASE_URL=database.tcp_url,
            GMAIL_API_ENDPOINT=gmail.url,
            PUBSUB_TOPIC=TOPIC,
            LOG_LEVEL="ERROR",
        )
        bench = Bench(database.tcp_url, gmail, args.mailboxes)
        progress(f"seeding {args.mailboxes} watched mailboxes")
        bench.seed(token_endpoint, webhook)
        gmail.latency = args.latency
        progress(f"latency: {args.samples} notifications, Gmail at {args.latency * 1000:.0f} ms")
        ours, floor = measure_latency(bench, webhook, args.samples)
        with db.connection(db.parse_database_url(database.tcp_url)) as conn:
            conn.run("TRUNCATE gmail_events")
        deliveries_before = len(webhook.deliveries)
        progress(f"burst: {args.notifications} notifications over {args.mailboxes} mailboxes")
        result = burst(bench, args.notifications, args.duplicates, args.concurrency)
        events = bench.count("SELECT count(*) AS n FROM gmail_events")
        delivered = bench.count("SELECT count(*) AS n FROM gmail_events WHERE delivered_at IS NOT NULL")
        posted = len(webhook.deliveries) - deliveries_before
        version = database.version
    figures = {
        "latency": {"ours": summary(ours), "floor": summary(floor)},
        "burst": result,
        "events": events,
        "delivered": delivered,
        "webhook_posts": posted,
        "machine": machine(version),
    }
    if args.json:
        print(json.dumps(figures, indent=2, default=str))
        return 0 if events == result["new_messages"] else 1
    lat, base = figures["latency"]["ours"], figures["latency"]["floor"]
    one = Section("1. Notification to webhook (one mailbox, Gmail at %.0f ms)" % (args.latency * 1000))
    one.row(
        "p50",
        ms(lat["median_ms"]),
        f"floor {ms(base['median_ms'])}  ratio {lat['median_ms'] / base['median_ms']:.2f}",
    )
    one.row(
        "p95", ms(lat["p95_ms"]), f"floor {ms(base['p95_ms'])}  ratio {lat['p95_ms'] / base['p95_ms']:.2f}"
    )
    one.notes.append("floor: history.list + one batch get through googleapiclient, no database, no signing")
    two = Section(
        f"2. Burst: {result['notifications']} notifications, {args.mailboxes} mailboxes, "
        f"{args.duplicates:.0%} duplicates, {args.concurrency} at a time"
    )
    two.row("throughput", f"{result['per_s']:.0f}/s", f"wall {result['wall_s']:.2f} s")
    floor_rate = result["notifications"] / result["floor_wall_s"]
    two.row(
        "floor", f"{floor_rate:.0f}/s", f"ratio {result['per_s'] / floor_rate:.2f} (bare Gmail calls only)"
    )
    two.row("non-2xx answers", str(result["non_2xx"]))
    three = Section("3. Events beside new messages (must be equal)")
    three.row("new messages", str(result["new_messages"]))
    three.row("events queued", str(events), "EQUAL" if events == result["new_messages"] else "DIFFERENT")
    three.row("delivered", f"{delivered} ({posted} POSTs)")
    header = [
        ("machine", f"{figures['machine']['nproc']} CPU, {figures['machine']['python']}"),
        ("postgres", version),
    ]
    print(render(header, [one, two, three]))
    return 0 if events == result["new_messages"] else 1


if __name__ == "__main__":
    sys.exit(main())
