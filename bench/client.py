"""Figures for the robeing developer's path: the sandbox's start-up, and the client's cost per call.

    .venv/bin/python -m bench.client [--calls 200]

1. ``serve --sandbox`` from nothing (initdb, migrations, fakes, seeding) and again on the same data
   directory (what a developer's second start costs): seconds to its banner and an open port.
2. One call through ``SkillEmailClient`` beside the same call with a bare ``requests.Session`` (the
   baseline), interleaved on the same sandbox: the client's own cost (auto Idempotency-Key, error mapping,
   retry bookkeeping; no ID token on a local URL). token_status is a database read; list_emails goes to
   the fake Gmail with a batch. Medians in milliseconds and the client/baseline ratio.

Everything is on 127.0.0.1 in a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from bench._common import ROOT, free_port, summary

sys.path.insert(0, str(ROOT / "client"))
from skill_email_client import SkillEmailClient  # the client from this checkout


def start(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], float]:
    """Starts ``serve --sandbox``; returns it and the seconds until it printed its banner and listens."""
    began = time.perf_counter()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "devtools.serve", "--sandbox"),
            *("--port", str(port), "--db-port", "0", "--data-dir", str(data_dir)),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "WARNING"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if "Ctrl-C stops" in line:
            break
    else:
        raise RuntimeError("serve --sandbox exited before its banner")
    while True:
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=2)
            break
        except requests.ConnectionError:
            time.sleep(0.01)
    return process, time.perf_counter() - began


def stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    if process.stdout is not None:
        process.stdout.close()


def interleaved(pairs: dict[str, Callable[[], Any]], calls: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in pairs}
    for function in pairs.values():  # warm-up: connections, the token refresh, the first batch
        function()
        function()
    for _ in range(calls):
        for name, function in pairs.items():
            began = time.perf_counter()
            function()
            samples[name].append(time.perf_counter() - began)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per variant (default 200)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="skill-email-bench-client-"))
    process: subprocess.Popen[str] | None = None
    try:
        port = free_port()
        process, cold = start(work / "pg", port)
        stop(process)
        process, warm = start(work / "pg", port)
        print("1. serve --sandbox start-up (to banner and open port)")
        print(f"   first start (initdb): {cold:6.2f} s")
        print(f"   second start:         {warm:6.2f} s   ratio second/first {warm / cold:.2f}")

        url = f"http://127.0.0.1:{port}"
        client = SkillEmailClient(url)
        session = requests.Session()

        def raw(target: str, body: dict[str, Any]) -> Callable[[], Any]:
            def call() -> Any:
                response = session.post(f"{url}/{target}", json=body, timeout=30)
                response.raise_for_status()
                return response.json()

            return call

        rows = [
            (
                "token_status",
                interleaved(
                    {
                        "client": lambda: client.token_status("demo"),
                        "baseline": raw("token_status", {"user_id": "demo"}),
                    },
                    args.calls,
                ),
            ),
            (
                "list_emails (5, batch)",
                interleaved(
                    {
                        "client": lambda: client.list_emails("demo", max_results=5),
                        "baseline": raw("list_emails", {"user_id": "demo", "max_results": 5}),
                    },
                    max(10, args.calls // 4),
                ),
            ),
        ]
        print("2. one call, client vs a bare requests.Session, interleaved (median / p95 ms)")
        for name, samples in rows:
            mine, base = summary(samples["client"]), summary(samples["baseline"])
            ratio = mine["median_ms"] / base["median_ms"]
            print(
                f"   {name:23} n={mine['n']:<4.0f} client {mine['median_ms']:6.2f} / {mine['p95_ms']:6.2f}"
                f"   baseline {base['median_ms']:6.2f} / {base['p95_ms']:6.2f}   ratio {ratio:.2f}"
            )
        return 0
    finally:
        if process is not None and process.poll() is None:
            stop(process)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
