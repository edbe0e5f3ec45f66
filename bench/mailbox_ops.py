"""Figures for list_labels and modify_email: Gmail round trips and wall time beside a naive twin.

    python -m bench.mailbox_ops [--repeat 5] [--labels 60] [--thread 20] [--latency 0.02] [--json]

An embedded PostgreSQL holds one user's token (gmail.modify); FakeGmail (every answer delayed by
``--latency``) and the fake token endpoint run on loopback in this process. Ours is the target through
functions-framework; its twin, in the same run, makes the same Gmail calls one request per item (one
``labels.get`` per label, one ``messages.modify`` per message of the thread) with the same client.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from google.oauth2.credentials import Credentials

from bench._common import Section, bench_database, machine, ms, progress, raise_on_sigterm, render, summary
from bench.gmail import ACCESS_TOKEN, MAILBOX, REFRESH_TOKEN, USER, app_client, check, environment, quiet_logs
from bench.gmail import seed_token as seed_send_token
from devtools.fakes.gmail import FakeGmail
from devtools.fakes.oauth import FakeTokenEndpoint
from shared import scopes
from shared.gmail import GmailClient


def measure(gmail: FakeGmail, repeat: int, run: Callable[[], Any]) -> tuple[dict[str, float], int]:
    """Median wall time of ``repeat`` runs after one warm-up, and the round trips of one run."""
    run()
    walls, trips = [], set()
    for _ in range(repeat):
        gmail.clear_requests()
        started = time.perf_counter()
        run()
        walls.append(time.perf_counter() - started)
        trips.add(len(gmail.requests))
    return summary(walls), max(trips)


def pair(
    section: Section,
    gmail: FakeGmail,
    repeat: int,
    what: str,
    ours: Callable[[], Any],
    naive: Callable[[], Any],
) -> dict[str, Any]:
    progress(f"{what}: ours")
    ours_wall, ours_trips = measure(gmail, repeat, ours)
    progress(f"{what}: naive")
    naive_wall, naive_trips = measure(gmail, repeat, naive)
    section.row(f"{what}: ours", ms(ours_wall["median_ms"]), f"{ours_trips} round trips")
    section.row(f"{what}: naive", ms(naive_wall["median_ms"]), f"{naive_trips} round trips")
    section.row(
        f"{what}: ratio",
        f"{ours_wall['median_ms'] / naive_wall['median_ms']:.2f}x",
        "ours / naive, wall median",
    )
    return {
        "ours": {"wall": ours_wall, "round_trips": ours_trips},
        "naive": {"wall": naive_wall, "round_trips": naive_trips},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="measured runs per row (default 5)")
    parser.add_argument("--labels", type=int, default=60, help="user labels in the mailbox (default 60)")
    parser.add_argument("--thread", type=int, default=20, help="messages in the modified thread (default 20)")
    parser.add_argument("--latency", type=float, default=0.02, help="FakeGmail latency in seconds (0.02)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    options = parser.parse_args(argv)
    raise_on_sigterm()
    sink = quiet_logs()
    try:
        progress("starting PostgreSQL")
        with (
            bench_database() as database,
            FakeTokenEndpoint() as token_endpoint,
            FakeGmail(email_address=MAILBOX, tokens=[ACCESS_TOKEN], latency=options.latency) as gmail,
        ):
            token_endpoint.add_refresh_token(REFRESH_TOKEN)
            seed_send_token(database, f"{token_endpoint.url}/token")
            with database.connection() as conn:
                conn.run("UPDATE gmail_token SET scopes = CAST(:scopes AS TEXT[])", scopes=[scopes.MODIFY])
            for index in range(options.labels):
                gmail.add_label(f"label {index}")
            raw = f"From: a@example.com\r\nTo: {MAILBOX}\r\nSubject: s\r\n\r\nhi\r\n".encode()
            first = gmail.add_message(raw)
            thread = [first] + [gmail.add_message(raw, thread_id=first) for _ in range(options.thread - 1)]
            with environment(database, gmail):
                twin = GmailClient(gmail.url, Credentials(token=ACCESS_TOKEN))
                labels = twin.service.users().labels()
                messages = twin.service.users().messages()
                listing = app_client("main.py", "list_labels")
                modify = app_client("main.py", "modify_email")

                def labels_ours() -> Any:
                    return check(listing.get(f"/?user_id={USER}&include_counts=true"))

                def labels_naive() -> Any:
                    listed = twin.execute(lambda: labels.list(userId="me"))["labels"]
                    return [
                        twin.execute(lambda i=label["id"]: labels.get(userId="me", id=i)) for label in listed
                    ]

                toggle = {"read": True}

                def thread_ours() -> Any:
                    toggle["read"] = not toggle["read"]
                    body = {"user_id": USER, "thread_id": first, "mark_read": toggle["read"]}
                    return check(modify.post("/", json=body))

                def thread_naive() -> Any:
                    toggle["read"] = not toggle["read"]
                    change = {"removeLabelIds" if toggle["read"] else "addLabelIds": ["UNREAD"]}
                    return [
                        twin.execute(lambda m=m: messages.modify(userId="me", id=m, body=change))
                        for m in thread
                    ]

                section = Section(
                    f"Gmail round trips and wall time (fake latency {options.latency * 1000:.0f} ms)"
                )
                total = options.labels + 14
                results = {
                    "list_labels": pair(
                        section,
                        gmail,
                        options.repeat,
                        f"{total} labels with counts",
                        labels_ours,
                        labels_naive,
                    ),
                    "modify_email": pair(
                        section,
                        gmail,
                        options.repeat,
                        f"thread of {options.thread}",
                        thread_ours,
                        thread_naive,
                    ),
                }
                section.notes.append(
                    "ours: through functions-framework, token read from PostgreSQL, audit row written; "
                    "naive: Gmail calls only, one request per item, same client and connection"
                )
            info = machine(database.version)
    finally:
        sink.close()
    if options.json:
        print(json.dumps({"machine": info, "results": results}, indent=2, ensure_ascii=False))
    else:
        header = [(name, str(value)) for name, value in info.items()]
        header.append(("settings", f"repeat={options.repeat} latency={options.latency}s"))
        print(render(header, [section]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
