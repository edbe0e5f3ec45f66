"""The cost of the caller check (CALLER_POLICY=enforce), warm and cold, beside baselines from the same run.

    python -m bench.callers [--calls 2000] [--requests 200] [--colds 20] [--json]

One run starts an embedded PostgreSQL and the fake Google certificate endpoint on loopback, puts an
operator on the callers list, mints a real RS256 ID token (google-auth's signer) and measures:

1. warm: ``callers.authenticate`` + ``authorize`` with the certificates and the allow-list cached, per
   call; beside it ``jwt.decode`` alone (google-auth's signature and claim checks, the floor of any
   verification) and one ``SELECT 1`` on an open connection (what a per-call allow-list query would cost);
2. warm, whole request: ``token_status`` through functions-framework's test client with the policy off
   and on, interleaved, so the difference is the check as a caller sees it;
3. cold: the first check of an instance (certificates fetched, allow-list read over a new database
   connection, token verified), beside a warm check and a bare database connect + query.

Everything is on loopback: a real instance fetches Google's certificates over the internet (tens of ms)
once, which this does not show.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench._common import Section, bench_database, machine, progress, render, summary, timed
from devtools.fakes.google_certs import FakeGoogleCerts
from shared import callers, config, db, targets
from shared.request_types import TokenStatusRequest

OPERATOR = "ops@example.com"
AUDIENCE = "https://token-status-abc123-uc.a.run.app"


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.callers", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="warm checks measured (default 2000)")
    parser.add_argument("--requests", type=int, default=200, help="warm requests per policy (default 200)")
    parser.add_argument("--colds", type=int, default=20, help="cold checks measured (default 20)")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    args = parser.parse_args(argv)

    progress("starting PostgreSQL and the fake certificate endpoint")
    with bench_database() as database, FakeGoogleCerts() as certs:
        os.environ.update(
            {
                config.DATABASE_URL: database.socket_url,
                config.CALLER_POLICY: "enforce",
                config.CALLER_AUDIENCES: AUDIENCE,
                config.ID_TOKEN_CERTS_URL: certs.certs_url,
                "LOG_LEVEL": "WARNING",
            }
        )
        with database.connection() as conn:
            callers.add_caller(conn, OPERATOR, targets.OPERATOR, [])
        token = certs.mint(OPERATOR, AUDIENCE)
        header = f"Bearer {token}"
        settings = config.load_settings()
        target = targets.get("token_status")
        request = TokenStatusRequest(user_id="nobody")

        def check() -> None:
            caller = callers.authenticate(header, settings)
            callers.authorize(caller, target, request)

        def cold_check() -> None:
            callers.clear_caches()
            check()

        from google.auth import jwt

        cert_map = dict(certs.served)

        def decode_only() -> None:
            jwt.decode(token, certs=cert_map, audience=[AUDIENCE], clock_skew_in_seconds=10)

        progress("warm checks")
        check()
        warm = timed(check, args.calls, warmup=50)
        decode = timed(decode_only, args.calls, warmup=50)
        fetches_warm = certs.count("GET", "/oauth2/v1/certs")
        with database.connection() as conn:
            select_one = timed(lambda: conn.run("SELECT 1"), args.calls // 4, warmup=20)

        progress("cold checks")
        cold = timed(cold_check, args.colds, warmup=2)
        params = db.parse_database_url(database.socket_url)

        def connect_and_query() -> None:
            with db.connection(params) as conn:
                conn.run("SELECT 1")

        connect = timed(connect_and_query, args.colds, warmup=2)

        progress("warm requests through functions-framework, policy off and on, interleaved")
        off_samples, on_samples, inside_samples = _requests(header, args.requests)

    figures: dict[str, Any] = {
        "warm_check": summary(warm),
        "jwt_decode_only": summary(decode),
        "select_one_open_connection": summary(select_one),
        "cold_check": summary(cold),
        "connect_and_select": summary(connect),
        "request_policy_off": summary(off_samples),
        "request_policy_enforce": summary(on_samples),
        "authenticate_inside_requests": summary(inside_samples),
        "certificate_fetches_warm": fetches_warm,
        "machine": machine(database.version),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    sections = [
        Section(f"1. Warm check, in process (median of {args.calls} calls)"),
        Section(
            f"2. Warm request, token_status through functions-framework (median of {args.requests} each)"
        ),
        Section(f"3. Cold check: the first of an instance (median of {args.colds})"),
    ]
    warm_s, decode_s, select_s = _median(warm), _median(decode), _median(select_one)
    sections[0].row("authenticate + authorize (cached)", _us(warm_s), "goal < 1 ms")
    sections[0].row(
        "  baseline: jwt.decode alone", _us(decode_s), f"check / decode = {warm_s / decode_s:.2f}x"
    )
    sections[0].row(
        "  baseline: SELECT 1 on an open connection",
        _us(select_s),
        f"{select_s / warm_s:.2f}x the check: what a per-call read of the list would add at least",
    )
    off_s, on_s = _median(off_samples), _median(on_samples)
    sections[1].row("CALLER_POLICY=off", _us(off_s), "")
    sections[1].row(
        "CALLER_POLICY=enforce", _us(on_s), f"enforce / off = {on_s / off_s:.2f}x; +{_us(on_s - off_s)}"
    )
    inside_s = _median(inside_samples)
    sections[1].row(
        "  of which authenticate, timed inside",
        _us(inside_s),
        f"{inside_s / warm_s:.2f}x the tight loop of section 1",
    )
    cold_s, connect_s = _median(cold), _median(connect)
    sections[2].row(
        "certs fetch + allow-list read + verify", _us(cold_s), f"cold / warm = {cold_s / warm_s:.0f}x"
    )
    sections[2].row(
        "  baseline: DB connect + SELECT 1",
        _us(connect_s),
        f"cold check / connect = {cold_s / connect_s:.2f}x",
    )
    sections[2].notes.append(
        f"certificate fetches over the first check and {args.calls + 50} warm ones: {fetches_warm} (cached"
        " per instance); the allow-list is read again at most every 60 s"
    )
    header_rows = [
        ("machine", f"{figures['machine']['nproc']} CPUs, {figures['machine']['cpu']}"),
        ("python", figures["machine"]["python"]),
        ("load", " ".join(f"{value:.2f}" for value in os.getloadavg())),
    ]
    print(render(header_rows, sections))
    return 0


def _requests(header: str, count: int) -> tuple[list[float], list[float], list[float]]:
    """Warm token_status requests, policy off and enforce interleaved, and the time authenticate took
    inside each enforced request (the same code as section 1, but between other work: caches colder)."""
    import functions_framework

    from devtools.serve import ROOT

    app = functions_framework.create_app(target="token_status", source=str(ROOT / "main.py"))
    client = app.test_client()

    def one(policy: str) -> Callable[[], None]:
        def run() -> None:
            os.environ[config.CALLER_POLICY] = policy
            response = client.get("/?user_id=nobody", headers={"Authorization": header})
            assert response.status_code == 404, response.get_data()

        return run

    off: list[float] = []
    on: list[float] = []
    inside: list[float] = []
    authenticate = callers.authenticate

    def timed_authenticate(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return authenticate(*args, **kwargs)
        finally:
            if os.environ.get(config.CALLER_POLICY) == "enforce":
                inside.append(time.perf_counter() - started)

    callers.authenticate = timed_authenticate  # type: ignore[assignment]
    try:
        for _ in range(5):
            one("off")()
            one("enforce")()
        inside.clear()
        for _ in range(count):
            for policy, samples in (("off", off), ("enforce", on)):
                started = time.perf_counter()
                one(policy)()
                samples.append(time.perf_counter() - started)
    finally:
        callers.authenticate = authenticate  # type: ignore[assignment]
    return off, on, inside


if __name__ == "__main__":
    sys.exit(main())
