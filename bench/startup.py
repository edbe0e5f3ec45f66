"""Issue 13's table: cold start, warm overhead and memory of every target beside a trivial function.

    python -m bench.startup [--repeat 5] [--warm 30] [--before REV] [--json]

Each variant is a real ``functions-framework --source S --target T`` server, launched the way
bench/trivial.py (a function answering "hello") is launched, polled every 5 ms until its first answer:

- cold start = ``Popen`` to the first 200, as a ratio of the trivial function's launch;
- warm overhead = median of ``--warm`` further requests on the same live server (HTTP on loopback,
  FakeGmail answering at once) minus the trivial function's median, in ms;
- memory = after the first answer, the PSS of the gunicorn master and its worker (pages they share
  since the fork counted once, as the instance's memory limit counts them) and the worker's VmHWM.

``send_email`` runs twice: with ``DATABASE_URL``, and with the URL in (fake) Secret Manager through
``DB_URL_SECRET``, production's configuration. Every target of ``shared/targets.py`` gets a memory row,
read at run time, so targets added later are measured too (a target this module has no request for is
asked ``{"user_id": ...}``; any answer counts as its first, and its status is printed).

``--before REV`` exports the tree at git revision REV into a temp dir and launches it the same way, in
the same rounds, so before and after come from one run. Variants are interleaved round by round and the
figures are medians, because the machine is shared (its load is printed).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench import _common
from bench import gmail as gmail_bench
from bench._common import BIN, ROOT, bench_database, free_port, progress, stop_process
from devtools.fakes.gmail import FakeGmail
from devtools.fakes.oauth import FakeTokenEndpoint
from devtools.fakes.secret_manager import FakeSecretManager
from shared import config
from shared.targets import TARGETS

USER = gmail_bench.USER
PROJECT = "bench-project"
SECRET = "bench-db-url"
# What each known target is asked first; the send has no from_name (see SEND_WITH_NAME).
SEND_BODY = {key: value for key, value in gmail_bench.SEND_BODY.items() if key != "from_name"}
SEND_WITH_NAME = gmail_bench.SEND_BODY
# gmail_push is a CloudEvent function: Pub/Sub's push of Gmail's notification, in binary content mode.
_PUSH_DATA = base64.b64encode(json.dumps({"emailAddress": gmail_bench.MAILBOX, "historyId": 1}).encode())
PUSH_EVENT = {"message": {"data": _PUSH_DATA.decode(), "messageId": "1"}, "subscription": "bench"}
PUSH_HEADERS = {
    "ce-id": "bench-1",
    "ce-source": "//pubsub.googleapis.com/projects/bench-project/topics/gmail",
    "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
    "ce-specversion": "1.0",
}
# Targets whose first answer may be an error (the status is printed): the seeded token is equipped to
# no robeing (watch_mailbox needs one), the pushed mailbox has no watch, the attachment does not exist.
ANY_ANSWER = frozenset({"get_attachment", "watch_mailbox", "gmail_push"})
KNOWN: dict[str, tuple[str, str, dict[str, Any] | None]] = {  # target: (method, path, JSON body)
    "token_status": ("GET", f"/?user_id={USER}", None),
    "send_email": ("POST", "/", SEND_BODY),
    "list_emails": ("GET", f"/?user_id={USER}&max_results=20&label_ids=INBOX", None),
    "refresh_tokens": ("POST", "/", {"user_id": USER}),
    "list_events": ("GET", "/?robeing_id=bench-robeing", None),
    "watch_mailbox": ("POST", "/", {"user_id": USER, "robeing_id": "bench-robeing"}),
    "gmail_push": ("POST", "/", PUSH_EVENT),
}
GOAL_COLD = {"token_status": 1.3, "send_email": 1.7, "send_email (DB_URL_SECRET)": 1.7}
GOAL_WARM_MS = 10.0
GOAL_MIB = 60.0


@dataclass
class Variant:
    """One way to launch a server: which tree, which target, which configuration, what to ask it."""

    label: str
    tree: Path
    source: str
    target: str
    request: tuple[str, str, dict[str, Any] | None]
    secret: bool = False
    strict: bool = True  # the first answer must be a 200
    launches: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    pss_kib: list[int] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    hwm_kib: list[int] = field(default_factory=list)
    status: int = 0


def _ask(port: int, request: tuple[str, str, dict[str, Any] | None]) -> int:
    method, path, body = request
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        if body is PUSH_EVENT:
            headers.update(PUSH_HEADERS)
        connection.request(method, path, payload, headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _members(leader: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == leader:  # same process group
                found.append(int(stat.parent.name))
    return found


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def launch(variant: Variant, env: dict[str, str], warm: int, log: IO[bytes]) -> None:
    """One cold start of ``variant``: launch, first answer, memory, then ``warm`` more answers."""
    port = free_port()
    args = [str(BIN / "functions-framework"), "--source", variant.source, "--target", variant.target]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    child_env = {**env, "PYTHONPATH": str(variant.tree)}
    child_env.pop("PYTHONDONTWRITEBYTECODE", None)  # as deployed: compiled once, then read
    if variant.secret:
        child_env.pop(config.DATABASE_URL, None)
    else:
        for name in (config.DB_URL_SECRET, config.SECRET_MANAGER_ENDPOINT):
            child_env.pop(name, None)
    started = time.perf_counter()
    proc = subprocess.Popen(
        args, cwd=variant.tree, env=child_env, stdout=log, stderr=log, start_new_session=True
    )
    try:
        while True:
            if time.perf_counter() - started > 60 or proc.poll() is not None:
                raise RuntimeError(f"{variant.label} gave no answer (exit {proc.poll()})")
            try:
                status = _ask(port, variant.request)
            except (ConnectionRefusedError, ConnectionResetError):
                time.sleep(0.005)  # 5 ms: fine enough for launches of ~0.5 s, light on 2 cores
                continue
            break
        elapsed = time.perf_counter() - started
        if variant.strict and status != 200:
            raise RuntimeError(f"{variant.label} answered {status}")
        variant.status = status
        variant.launches.append(elapsed)
        members = _members(proc.pid)
        variant.cpu_s.append(sum(_cpu_s(pid) for pid in members))
        variant.pss_kib.append(sum(_pss_kib(pid) for pid in members))
        variant.hwm_kib.append(
            max((_status_kib(pid, "VmHWM") for pid in members if pid != proc.pid), default=0)
        )
        for _ in range(warm):
            began = time.perf_counter()
            _ask(port, variant.request)
            variant.warm.append(time.perf_counter() - began)
    finally:
        stop_process(proc)


def export_tree(revision: str, into: Path) -> Path:
    """The repository at ``revision`` (``git archive``), for before/after launches in one run."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def compile_tree(tree: Path) -> None:
    """Byte-compiles a tree's own code, so no launch pays for compiling it (and before and after alike).

    An exported tree has no ``__pycache__``, and with ``PYTHONDONTWRITEBYTECODE`` set (as on the machine
    this ran on) every launch would compile every module of ours again: ~60 ms, measured.
    """
    paths = [str(tree / name) for name in ("main.py", "shared", "functions", "bench/trivial.py")]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *[path for path in paths if Path(path).exists()]],
        cwd=tree,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def variants_for(tree: Path, tag: str) -> list[Variant]:
    """The issue's figures for one tree, then a memory row for every registered target."""
    suffix = f" [{tag}]" if tag else ""
    out = [
        Variant(f"token_status{suffix}", tree, "main.py", "token_status", KNOWN["token_status"]),
        Variant(f"send_email{suffix}", tree, "main.py", "send_email", KNOWN["send_email"]),
        Variant(
            f"send_email (DB_URL_SECRET){suffix}", tree, "main.py", "send_email", KNOWN["send_email"], True
        ),
        Variant(
            f"send_email with from_name{suffix}", tree, "main.py", "send_email", ("POST", "/", SEND_WITH_NAME)
        ),
    ]
    for target in _registry(tree):
        if target in ("token_status", "send_email"):
            continue
        known = KNOWN.get(target)
        request = known or ("POST", "/", {"user_id": USER})
        strict = known is not None and target not in ANY_ANSWER
        out.append(Variant(f"{target}{suffix}", tree, "main.py", target, request, strict=strict))
    return out


def _registry(tree: Path) -> list[str]:
    if tree == ROOT:
        return [target.name for target in TARGETS]
    listed = subprocess.run(
        [sys.executable, "-m", "shared.targets"], cwd=tree, capture_output=True, text=True, check=True
    )
    return [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@contextlib.contextmanager
def fakes() -> Iterator[dict[str, Any]]:
    """PostgreSQL, FakeGmail (no latency), a token endpoint and Secret Manager holding the URL."""
    with (
        bench_database() as database,
        FakeTokenEndpoint() as token_endpoint,
        FakeGmail(email_address=gmail_bench.MAILBOX, tokens=[gmail_bench.ACCESS_TOKEN]) as gmail,
        FakeSecretManager() as secrets,
    ):
        token_endpoint.add_refresh_token(gmail_bench.REFRESH_TOKEN)
        gmail.trust(token_endpoint)
        _common.allow_token_uri(f"{token_endpoint.url}/token")
        gmail_bench.seed_token(database, f"{token_endpoint.url}/token")
        gmail_bench.seed_mailbox(gmail, 40)
        # get_email, get_thread and get_attachment ask for a seeded message; get_attachment for a part
        # that is not there, so its first answer is Gmail's 404, after the whole read path has loaded.
        seeded = next(iter(gmail.mailboxes[gmail_bench.MAILBOX].messages.values()))
        ids = f"/?user_id={USER}&message_id={seeded.id}"
        KNOWN["get_email"] = ("GET", ids, None)
        KNOWN["get_thread"] = ("GET", f"/?user_id={USER}&thread_id={seeded.thread_id}", None)
        KNOWN["get_attachment"] = ("GET", f"{ids}&attachment_id=ANGjdJ-no-such-part", None)
        secrets.set_secret(PROJECT, SECRET, database.socket_url)
        env = {
            **os.environ,
            config.DATABASE_URL: database.socket_url,
            config.GMAIL_API_ENDPOINT: gmail.url,
            config.LOG_LEVEL: "INFO",
            config.DB_URL_SECRET: SECRET,
            config.SECRET_MANAGER_ENDPOINT: secrets.url,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            config.PUBSUB_TOPIC: f"projects/{PROJECT}/topics/gmail",
            # Cloud Functions' gen2 Python runtime: one gunicorn worker, threads per CPU.
            "WORKERS": "1",
        }
        for name in (config.TOKEN_KEY_SECRET, config.TOKEN_KEYS, config.TOKEN_PROVIDER):
            env.pop(name, None)
        yield {
            "env": env,
            "database": database,
            "gmail": gmail,
            "secrets": secrets,
            "token_endpoint": token_endpoint,
        }


def calls_per_send(world: dict[str, Any], sends: int = 10) -> dict[str, float]:
    """What one warm send costs in calls, counted in this process through functions-framework:
    database connections and statements (each statement is one round trip, tests/test_db_statements.py),
    Gmail requests, token-endpoint requests."""
    import functions_framework

    from shared import db

    counts = {"connections": 0, "statements": 0}
    run, connect = db.Connection.run, db.connect

    def counted_run(self: db.Connection, sql: str, **params: Any) -> Any:
        counts["statements"] += 1
        return run(self, sql, **params)

    def counted_connect(params: db.ConnectParams) -> Any:
        counts["connections"] += 1
        return connect(params)

    env = world["env"]
    names = (config.DATABASE_URL, config.GMAIL_API_ENDPOINT, "GOOGLE_CLOUD_PROJECT")
    saved = {name: os.environ.get(name) for name in (*names, config.DB_URL_SECRET)}
    os.environ.update({name: env[name] for name in names})
    os.environ.pop(config.DB_URL_SECRET, None)
    db.Connection.run, db.connect = counted_run, counted_connect  # type: ignore[method-assign]
    sink = gmail_bench.quiet_logs()  # the request lines go to /dev/null, not the table
    try:
        client = functions_framework.create_app(
            target="send_email", source=str(ROOT / "main.py")
        ).test_client()
        assert client.post("/", json=SEND_BODY).status_code == 200  # the first send, not counted
        gmail, token_endpoint = world["gmail"], world["token_endpoint"]
        before = (gmail.count(), token_endpoint.count())
        counts.update(connections=0, statements=0)
        for _ in range(sends):
            assert client.post("/", json=SEND_BODY).status_code == 200
        after = (gmail.count(), token_endpoint.count())
    finally:
        db.Connection.run, db.connect = run, connect  # type: ignore[method-assign]
        sink.close()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return {
        "connections": counts["connections"] / sends,
        "statements": counts["statements"] / sends,
        "gmail": (after[0] - before[0]) / sends,
        "token_endpoint": (after[1] - before[1]) / sends,
    }


def measure(repeat: int, warm: int, before: str | None, workdir: Path) -> dict[str, Any]:
    """Launches every variant ``repeat`` times, interleaved round by round; returns the samples."""
    trees: list[tuple[Path, str]] = [(ROOT, "after" if before else "")]
    if before:
        trees.insert(0, (export_tree(before, workdir / "before"), "before"))
    for tree, _ in trees:
        compile_tree(tree)
    load_at_start = os.getloadavg()
    with fakes() as world, (workdir / "servers.log").open("wb") as log:
        trivial = Variant("trivial", ROOT, "bench/trivial.py", "hello", ("GET", "/", None))
        plan = [trivial] + [variant for tree, tag in trees for variant in variants_for(tree, tag)]
        for index in range(repeat):
            progress(f"round {index + 1}/{repeat}: {len(plan)} launches")
            for variant in plan:
                launch(variant, world["env"], warm, log)
        counted = calls_per_send(world)
    return {
        "plan": plan,
        "trivial": trivial,
        "trees": trees,
        "load": (load_at_start, os.getloadavg()),
        "calls_per_send": counted,
    }


def table(result: dict[str, Any]) -> str:
    trivial: Variant = result["trivial"]
    floor, floor_warm = median(trivial.launches), median(trivial.warm)
    floor_cpu = median(trivial.cpu_s)
    lines = [
        "load        " + " -> ".join(" ".join(f"{v:.2f}" for v in load) for load in result["load"]),
        f"trivial     cold {floor * 1000:.0f} ms (CPU {floor_cpu * 1000:.0f} ms), "
        f"warm {floor_warm * 1000:.2f} ms, "
        f"instance {median(trivial.pss_kib) / 1024:.1f} MiB (PSS), worker peak "
        f"{median(trivial.hwm_kib) / 1024:.1f} MiB",
        "",
        f"  {'variant':<42} {'cold':>7} {'ratio':>6} {'goal':>6} {'CPU':>6}  {'warm+':>8}  "
        f"{'PSS':>8} {'peak':>8}",
    ]
    for variant in result["plan"]:
        if variant is trivial:
            continue
        cold = median(variant.launches)
        name = variant.label.split(" [")[0]
        goal = GOAL_COLD.get(name)
        overhead = (median(variant.warm) - floor_warm) * 1000
        pss, hwm = median(variant.pss_kib) / 1024, median(variant.hwm_kib) / 1024
        status = "" if variant.status == 200 else f"  (first answer {variant.status})"
        cpu = median(variant.cpu_s) / floor_cpu if floor_cpu else float("nan")
        lines.append(
            f"  {variant.label:<42} {cold * 1000:5.0f}ms {cold / floor:5.2f}x "
            f"{'<=' + str(goal) if goal else '':>6} {cpu:5.2f}x  {overhead:6.1f}ms  {pss:5.1f}MiB "
            f"{hwm:5.1f}MiB{status}"
        )
    counted = result["calls_per_send"]
    lines += [
        "",
        "a warm send_email (this tree, counted in process): "
        f"{counted['connections']:g} database connection, {counted['statements']:g} statements "
        f"(one round trip each), {counted['gmail']:g} Gmail request, "
        f"{counted['token_endpoint']:g} token-endpoint requests",
    ]
    lines += [
        "",
        f"cold = launch to first answer (median of {len(trivial.launches)}), ratio = cold / trivial's cold;",
        "CPU = user + system CPU of master + worker at the first answer / trivial's (less load-sensitive);",
        f"warm+ = median warm answer minus trivial's (goal <= {GOAL_WARM_MS:.0f} ms for send_email);",
        f"PSS = master + worker after the first answer (goal <= {GOAL_MIB:.0f} MiB); peak = worker VmHWM.",
    ]
    return "\n".join(lines)


def as_json(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "load": result["load"],
        "calls_per_send": result["calls_per_send"],
        "variants": {
            variant.label: {
                "launch_s": variant.launches,
                "warm_median_ms": median(variant.warm) * 1000,
                "pss_kib": variant.pss_kib,
                "cpu_s": variant.cpu_s,
                "worker_hwm_kib": variant.hwm_kib,
                "first_status": variant.status,
            }
            for variant in result["plan"]
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="launches per variant (5)")
    parser.add_argument("--warm", type=int, default=30, help="warm requests after each first answer (30)")
    parser.add_argument("--before", help="also launch the tree at this git revision, in the same rounds")
    parser.add_argument("--json", action="store_true", help="print the samples as JSON")
    args = parser.parse_args(argv)
    _common.raise_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="skill-email-bench-startup-") as workdir:
        result = measure(args.repeat, args.warm, args.before, Path(workdir))
    print(json.dumps(as_json(result), indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
