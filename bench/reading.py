"""Figures for get_email, get_thread and get_attachment: warm overhead beside naive twins, and peak memory.

    python -m bench.reading [--calls 30] [--latency 0.02] [--json]

An embedded PostgreSQL in a temp dir holds one user's token; FakeGmail (every answer delayed by
``--latency``) and the fake token endpoint run on loopback in this process. Section 1 measures, in
process, our overhead per warm call (function time minus time inside Gmail requests) of get_email and of
get_thread on a ten-message thread, beside naive twins (bench/_naive_reading.py: a new service per call,
one ``messages.get`` per message of the thread). Section 2 reads a 30 MB attachment in a child process
per implementation and reports that process's RSS before the call and its peak (``VmHWM``) during it,
ours streamed beside the naive twin that reads it whole. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from email.message import EmailMessage
from typing import Any

from bench._common import ROOT, Section, bench_database, machine, ms, progress, raise_on_sigterm, render
from bench.gmail import (
    ACCESS_TOKEN,
    CLOCK,
    MAILBOX,
    REFRESH_TOKEN,
    USER,
    app_client,
    check,
    environment,
    measure_calls,
    quiet_logs,
    seed_token,
)
from devtools.fakes.gmail import FakeGmail
from devtools.fakes.oauth import FakeTokenEndpoint

NAIVE_SOURCE = "bench/_naive_reading.py"
THREAD_MESSAGES = 10
ATTACHMENT_BYTES = 30 * 1000 * 1000
MiB = 1024 * 1024


def _message(index: int, *, attachment: bytes | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = "김철수 <chulsoo@example.kr>"
    message["To"] = MAILBOX
    message["Subject"] = f"회의 일정 {index}"
    message["Date"] = "Tue, 02 Jan 2024 12:04:05 +0900"
    message["Message-ID"] = f"<reading-{index}@example.kr>"
    message.set_content("안녕하세요.\n이번 주 회의는 목요일 오후 2시입니다.\n" * 20)
    message.add_alternative(
        "<p>안녕하세요.</p><p>이번 주 회의는 <b>목요일</b> 오후 2시입니다.</p>" * 20, subtype="html"
    )
    if attachment is not None:
        message.add_attachment(attachment, "application", "octet-stream", filename="회의자료.bin")
    return message.as_bytes()


def seed(gmail: FakeGmail) -> dict[str, str]:
    ids = [
        gmail.add_message(
            _message(i), thread_id="bench-thread", internal_date_ms=1_704_164_645_000 + i * 1000
        )
        for i in range(THREAD_MESSAGES)
    ]
    big = gmail.add_message(_message(99, attachment=os.urandom(ATTACHMENT_BYTES)))
    small = gmail.add_message(_message(98, attachment=b"warm-up"))
    return {"message": ids[0], "thread": "bench-thread", "big": big, "small": small}


# -- 1. warm overhead -----------------------------------------------------------------------------


def warm_overhead(ids: dict[str, str], calls: int, latency: float) -> tuple[Section, dict[str, Any]]:
    section = Section(
        "1. Warm call, in process: our overhead = function time - time inside Gmail requests "
        f"(fake latency {latency * 1000:.0f} ms)"
    )
    email_query = f"/?user_id={USER}&message_id={ids['message']}"
    thread_query = f"/?user_id={USER}&thread_id={ids['thread']}"
    ours_email, naive_email = app_client("main.py", "get_email"), app_client(NAIVE_SOURCE, "get_email_naive")
    ours_thread = app_client("main.py", "get_thread")
    naive_thread = app_client(NAIVE_SOURCE, "get_thread_naive")
    plan = [
        ("get_email", lambda: check(ours_email.get(email_query)), "ours: 1 messages.get"),
        ("  naive get_email (build per call)", lambda: check(naive_email.get(email_query)), "naive twin"),
        (
            f"get_thread, {THREAD_MESSAGES} messages",
            lambda: check(ours_thread.get(thread_query)),
            "ours: 1 threads.get",
        ),
        (
            f"  naive thread, {THREAD_MESSAGES} messages",
            lambda: check(naive_thread.get(thread_query)),
            "naive twin: threads.get + 1 messages.get per message",
        ),
    ]
    results: dict[str, Any] = {}
    for label, call, note in plan:
        progress(f"warm: {label.strip()}")
        figures = measure_calls(call, calls)
        results[label.strip()] = figures
        overhead, total, gmail = figures["overhead"], figures["total"], figures["gmail"]
        section.row(
            label,
            ms(overhead["median_ms"]),
            f"p95 {ms(overhead['p95_ms'])}; total {ms(total['median_ms'])}, "
            f"in Gmail {ms(gmail['median_ms'])}, "
            f"{'/'.join(map(str, figures['round_trips']))} round trips; {note}",
        )
    for ours, naive in (
        ("get_email", "naive get_email (build per call)"),
        (f"get_thread, {THREAD_MESSAGES} messages", f"naive thread, {THREAD_MESSAGES} messages"),
    ):
        ratio = results[naive]["total"]["median_ms"] / results[ours]["total"]["median_ms"]
        section.row(f"naive / ours, {ours.split(',')[0]}", f"{ratio:.1f}x", "ratio of median total times")
    section.notes.append(
        f"median of {calls} calls each after 3 warm-up calls, through functions_framework.create_app"
    )
    return section, results


# -- 2. peak memory of a 30 MB attachment -----------------------------------------------------------

CHILD = """
import json, sys
from bench.gmail import app_client, quiet_logs
source, target, user, message_id, small_id = sys.argv[1:6]
sink = quiet_logs()
client = app_client(source, target)
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
def read(mid):
    response = client.get(f"/?user_id={user}&message_id={mid}&attachment_id=part-1", buffered=False)
    assert response.status_code == 200, response.status_code
    size = 0
    for chunk in response.response:
        size += len(chunk)
    response.close()
    return size
read(small_id)  # imports, the Gmail service and the token: what every call has, before the big one
with open("/proc/self/clear_refs", "w") as reset:
    reset.write("5")  # resets VmHWM (ru_maxrss would carry the parent's peak across fork and exec)
before = status("VmRSS")
size = read(message_id)
print(json.dumps({"bytes": size, "before_kib": before, "after_kib": status("VmHWM")}))
"""


def peak_memory(env: dict[str, str], ids: dict[str, str]) -> tuple[Section, dict[str, Any]]:
    section = Section(
        f"2. get_attachment of a {ATTACHMENT_BYTES / 1e6:.0f} MB attachment: "
        "peak RSS of the function's process"
    )
    results: dict[str, Any] = {}
    for label, source, target in (
        ("get_attachment (streamed)", "main.py", "get_attachment"),
        ("  naive (execute, decode, answer whole)", NAIVE_SOURCE, "get_attachment_naive"),
    ):
        progress(f"memory: {label.strip()}")
        args = [sys.executable, "-c", CHILD, source, target, USER, ids["big"], ids["small"]]
        done = subprocess.run(
            args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{label}: {done.stderr[-2000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        if figures["bytes"] != ATTACHMENT_BYTES:
            raise RuntimeError(f"{label}: {figures['bytes']} bytes")
        results[label.strip()] = figures
        growth = (figures["after_kib"] - figures["before_kib"]) / 1024
        section.row(
            label,
            f"{figures['after_kib'] / 1024:.0f} MiB",
            f"peak RSS (VmHWM) during the call; +{growth:.1f} MiB over the warm process's RSS before it",
        )
    ours = results["get_attachment (streamed)"]
    naive = results["naive (execute, decode, answer whole)"]
    ratio = (naive["after_kib"] - naive["before_kib"]) / max(1, ours["after_kib"] - ours["before_kib"])
    section.row("naive growth / ours", f"{ratio:.0f}x", "ratio of the RSS growth for the big attachment")
    section.notes.append("each in its own child process; FakeGmail (holding the message) runs in the parent")
    return section, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30, help="warm calls measured per row (default 30)")
    parser.add_argument("--latency", type=float, default=0.02, help="FakeGmail latency in seconds (0.02)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    options = parser.parse_args(argv)
    raise_on_sigterm()
    CLOCK.install()
    sink = quiet_logs()
    try:
        progress("starting PostgreSQL")
        with (
            bench_database() as database,
            FakeTokenEndpoint() as token_endpoint,
            FakeGmail(email_address=MAILBOX, tokens=[ACCESS_TOKEN], latency=options.latency) as gmail,
        ):
            token_endpoint.add_refresh_token(REFRESH_TOKEN)
            gmail.trust(token_endpoint)
            seed_token(database, f"{token_endpoint.url}/token")
            progress("seeding the mailbox (a 30 MB message takes a few seconds)")
            ids = seed(gmail)
            with environment(database, gmail) as env:
                sections_and_results = [
                    warm_overhead(ids, options.calls, options.latency),
                    peak_memory(env, ids),
                ]
            info = machine(database.version)
    except KeyboardInterrupt:
        progress("interrupted; servers stopped")
        return 130
    finally:
        sink.close()
    sections = [section for section, _ in sections_and_results]
    results = {section.title: result for section, result in sections_and_results}
    if options.json:
        print(json.dumps({"machine": info, "results": results}, indent=2, ensure_ascii=False))
    else:
        header = [(name, str(value)) for name, value in info.items()]
        header.append(("settings", f"calls={options.calls} latency={options.latency}s"))
        print(render(header, sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
