"""deploy.sh's plan: its options, and the values of its gcloud steps, decided in Python.

deploy.sh stays a list of gcloud steps; everything it has to decide is decided here, from the one
registry of targets (``shared.targets``), ``env.yaml`` (``devtools.deploy_env``) and the budgets
(``devtools.deploy_budget``), and handed to it as tab-separated records on stdout (``var NAME VALUE``,
``api NAME``, ``sa ID EMAIL DISPLAY``, ``secret NAME PROJECT MEMBER``, ``sql MEMBER``, ``function NAME
TRIGGER ...``, ``invoker NAME MEMBER``). The plan's explanation goes to stderr. It also writes the
per-function env files, since they are part of the plan.

Invariants: the records hold no secret value (env.yaml may name secrets, never hold them: a URL with a
password, or a ``DATABASE_URL``, is refused however the YAML spells its key); every instances x
concurrency pair fits the ``--db-connections`` budget, counted over every registered function even
with ``--only``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from devtools.deploy_budget import SLICE_TOKENS, BudgetError, Size, is_scheduled, plan_sizes, queue_limits
from devtools.deploy_env import EnvFileError, read_env, split_secret
from shared import targets

PROG = "deploy.sh"
RUNTIME = "python312"
APIS = (
    "cloudfunctions.googleapis.com",
    "run.googleapis.com",
    "cloudbuild.googleapis.com",
    "artifactregistry.googleapis.com",
    "secretmanager.googleapis.com",
    "cloudscheduler.googleapis.com",
    "gmail.googleapis.com",
    "iam.googleapis.com",
)
# --ingress -> gcloud's --ingress-settings. Cloud Run counts as internal: this project's VPC networks and
# Cloud Scheduler, Cloud Tasks, Eventarc and Pub/Sub of the same project (or VPC-SC perimeter); a call from
# another Cloud Run service or function counts only when its egress goes through the VPC
# (https://cloud.google.com/run/docs/securing/ingress). Robeings are services of another system, in
# other projects or outside Google Cloud, so their functions default to "all", guarded by IAM
# (run.invoker per function) and CALLER_POLICY=enforce; targets that only Google's own services call
# (the scheduled run, Pub/Sub pushes) are "internal-only", whatever --ingress says.
INGRESS = {"all": "all", "internal": "internal-only"}
INTERNAL = "internal-only"
# Deliveries of one notification before Pub/Sub moves it to the dead-letter topic (Pub/Sub allows 5-100):
# enough to ride out a database restart with --retry's backoff, few enough that a poison message stops.
MAX_DELIVERY_ATTEMPTS = 10
# 1 vCPU everywhere: 2nd-gen functions accept a concurrency above 1 only with at least one vCPU, and a
# whole CPU also shortens the cold start (imports are CPU-bound).
CPU = "1"


class PlanError(Exception):
    """The options or env.yaml cannot be deployed; the message says why (exit 1)."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: str | None = None) -> None:
        super().add_usage(usage, actions, groups, "Usage: " if prefix is None else prefix)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # Like deploy.sh always did: the problem, a blank line, the usage; exit 2.
        sys.stderr.write(f"{PROG}: {message}\n\n")
        self.print_help(sys.stderr)
        raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    names = [t.name for t in targets.TARGETS]
    p = _Parser(
        prog=PROG,
        formatter_class=_Formatter,
        description=(
            f"Deploys {', '.join(names)} as 2nd-gen Cloud Functions\n"
            "(private: callers need roles/run.invoker), plus the Cloud Scheduler job for refresh_tokens."
        ),
    )
    add = p.add_argument
    add("--project", metavar="P", help="Google Cloud project (default: $GOOGLE_CLOUD_PROJECT)")
    add(
        "--region",
        metavar="R",
        help="region of the functions and the scheduler job (default: $REGION, else us-central1)",
    )
    add(
        "--service-account",
        metavar="NAME",
        default="skill-email-fn",
        help="runtime service account of the functions, an account id created if missing, or an existing "
        "account's e-mail (default: skill-email-fn)",
    )
    add("--env-vars-file", metavar="FILE", default="env.yaml", help="non-secret settings (default: env.yaml)")
    add(
        "--db-connections",
        metavar="N",
        type=int,
        default=20,
        help="database connections these functions may hold at once, all together (default: 20)",
    )
    add(
        "--cloudsql-instance",
        metavar="P:R:I",
        default="",
        help="connect the functions to this Cloud SQL instance (unix socket /cloudsql/P:R:I) and grant the "
        "service account roles/cloudsql.client",
    )
    add(
        "--robeing-invoker",
        "--invoker",
        dest="robeing_invokers",
        metavar="EMAIL",
        action="append",
        default=[],
        help="a robeing service: roles/run.invoker on the targets robeings call (never refresh_tokens); "
        "repeatable. A bare e-mail is a service account; user:, group:, serviceAccount: kept as is. "
        "--invoker is its old spelling",
    )
    add(
        "--operator",
        dest="operators",
        metavar="EMAIL",
        action="append",
        default=[],
        help="an operator: roles/run.invoker on every function; repeatable, spelled like --robeing-invoker",
    )
    add(
        "--ingress",
        choices=sorted(INGRESS),
        default="all",
        help="network ingress of the functions robeings call (default: all; internal when every robeing "
        "reaches them through this project's VPC). refresh_tokens is always internal",
    )
    add(
        "--audience",
        dest="audiences",
        metavar="URL",
        action="append",
        default=[],
        help="a further ID-token audience to accept (CALLER_AUDIENCES), e.g. a custom domain; repeatable",
    )
    add(
        "--only", metavar="TARGET", action="append", choices=names, help="deploy only this target; repeatable"
    )
    add(
        "--scheduler-job",
        metavar="NAME",
        default="skill-email-refresh-tokens",
        help="Cloud Scheduler job (default: skill-email-refresh-tokens)",
    )
    add(
        "--scheduler-service-account",
        metavar="NAME",
        default="skill-email-scheduler",
        help="identity the job calls refresh_tokens with (default: skill-email-scheduler)",
    )
    add(
        "--schedule",
        metavar="CRON",
        default="*/10 * * * *",
        help='when the job runs, UTC (default: "*/10 * * * *")',
    )
    add("--no-scheduler", action="store_true", help="leave the scheduler job alone")
    add(
        "--tasks-queue",
        metavar="NAME",
        default="skill-email-refresh",
        help="Cloud Tasks queue the scheduled run fans out over (default: skill-email-refresh)",
    )
    add(
        "--token-endpoint-rate",
        metavar="N",
        type=int,
        default=50,
        help="refreshes a second the fan-out may ask of Google's token endpoint (default: 50)",
    )
    add(
        "--pubsub-topic",
        metavar="NAME",
        default="skill-email-gmail-push",
        help="topic Gmail publishes new-mail notifications to, once a Pub/Sub target is registered "
        "(default: skill-email-gmail-push; its dead letters go to NAME-dead-letter)",
    )
    add(
        "--push-service-account",
        metavar="NAME",
        default="skill-email-push",
        help="runtime and trigger identity of the Pub/Sub-triggered functions (default: skill-email-push)",
    )
    add(
        "--migrate",
        action="store_true",
        help='run "python -m shared.cli migrate" here first, with DATABASE_URL read from the DB_URL_SECRET '
        "secret (interpreter: $PYTHON, else .venv/bin/python, made by tasks.py when missing)",
    )
    add(
        "--work-dir",
        metavar="DIR",
        default=".local/deploy",
        help="where the per-function env files are written (default: .local/deploy)",
    )
    add(
        "--dry-run",
        action="store_true",
        help="print the commands instead of running them (gcloud not needed)",
    )
    return p


# --- the plan ---------------------------------------------------------------------------------------


def sa_email(name: str, project: str) -> str:
    """``name`` -> ``name@PROJECT.iam.gserviceaccount.com``; an e-mail is kept."""
    return name if "@" in name else f"{name}@{project}.iam.gserviceaccount.com"


def member(who: str) -> str:
    """An IAM member: a bare e-mail is a service account; ``user:``, ``group:`` and the like are kept."""
    return who if ":" in who else f"serviceAccount:{who}"


def function_url(target: targets.Target, project: str, region: str) -> str:
    """The function's cloudfunctions.net URL: known before the first deploy, and an audience Cloud Run
    accepts for a 2nd-gen function, so it is what callers put in their ID tokens."""
    return f"https://{region}-{project}.cloudfunctions.net/{target.name}"


def ingress(target: targets.Target, choice: str) -> str:
    """The narrowest ingress that still admits the target's callers (see INGRESS)."""
    if target.trigger != targets.HTTP or targets.ROBEING not in target.roles:
        return INTERNAL
    return INGRESS[choice]


def grants(target: targets.Target, robeings: Sequence[str], operators: Sequence[str]) -> list[str]:
    """Who gets run.invoker on the target: robeings where robeings call it, operators everywhere.

    The scheduler's identity is granted with its job (only on the scheduled target), and a Pub/Sub
    target's with its trigger.
    """
    callers = [*robeings] if targets.ROBEING in target.roles and target.trigger == targets.HTTP else []
    return [member(who) for who in dict.fromkeys([*callers, *operators])]


def _env_file_text(
    source_name: str, source: str, target: targets.Target, size: Size, added: dict[str, str]
) -> str:
    lines = [f'THREADS: "{size.concurrency}"']
    if is_scheduled(target):
        lines.append(f'REFRESH_CONCURRENCY: "{size.share - 1}"')
    lines += [f'{key}: "{value}"' for key, value in added.items()]
    return (
        f"# Generated by deploy.sh from {source_name}: do not edit, edit {source_name}.\n"
        f"{source}\n# Added by deploy.sh for {target.name}:\n" + "".join(f"{line}\n" for line in lines)
    )


def _validate(args: argparse.Namespace) -> None:
    if not args.project:
        raise _UsageError("no project: pass --project or set GOOGLE_CLOUD_PROJECT")
    if not re.fullmatch(r"[a-z][-a-z0-9.:]*[a-z0-9]", args.project):
        raise PlanError(f"--project '{args.project}' is not a project id")
    if not re.fullmatch(r"[a-z]+-[a-z]+[0-9]+", args.region):
        raise PlanError(f"--region '{args.region}' is not a region such as us-central1")
    if args.token_endpoint_rate < 1:
        raise PlanError(f"--token-endpoint-rate must be at least 1, not {args.token_endpoint_rate}")
    if args.db_connections < 0:
        raise PlanError(f"--db-connections must be a whole number, not '{args.db_connections}'")
    if args.cloudsql_instance and not re.fullmatch(
        r"[^:]+(:[^:]+)?:[a-z0-9-]+:[^:]+", args.cloudsql_instance
    ):
        raise PlanError(
            f"--cloudsql-instance must be PROJECT:REGION:INSTANCE, not '{args.cloudsql_instance}'"
        )


class _UsageError(Exception):
    pass


def build(args: argparse.Namespace, environ: dict[str, str]) -> tuple[list[list[str]], list[str]]:
    """The records for deploy.sh and the lines explaining the plan (for stderr). Writes the env files.

    Raises:
        PlanError: an option that cannot be deployed.
        EnvFileError: see :func:`devtools.deploy_env.read_env`.
        BudgetError: see :func:`devtools.deploy_budget.plan_sizes`.
    """
    args.project = args.project or environ.get("GOOGLE_CLOUD_PROJECT", "")
    args.region = args.region or environ.get("REGION") or "us-central1"
    _validate(args)
    env_path = Path(args.env_vars_file)
    settings = read_env(env_path)
    registered = list(targets.TARGETS)
    sizes = plan_sizes(args.db_connections, registered)
    deploying = [t for t in registered if not args.only or t.name in args.only]

    explain = [
        f"{t.name}: {s.memory}, {s.timeout}, max-instances {s.instances} x concurrency {s.concurrency} "
        f"= {s.used} connections (share {s.share})"
        for t, s in ((t, sizes[t.name]) for t in registered)
    ]
    explain.append(
        f"database connections: at most {sum(s.used for s in sizes.values())} of {args.db_connections}"
    )

    sa = sa_email(args.service_account, args.project)
    push_sa = sa_email(args.push_service_account, args.project)
    scheduler_sa = sa_email(args.scheduler_service_account, args.project)
    db_secret = split_secret(settings["DB_URL_SECRET"], args.project)
    scheduled = [t for t in deploying if is_scheduled(t)] if not args.no_scheduler else []
    # Pub/Sub steps exist only once a Pub/Sub-triggered target is registered (gmail_push).
    topic = args.pubsub_topic if any(t.trigger == targets.PUBSUB for t in registered) else ""
    pushing = [t for t in deploying if t.trigger == targets.PUBSUB]
    queue = queue_limits(sizes[scheduled[0].name], args.token_endpoint_rate) if scheduled else None
    records: list[list[str]] = [
        ["var", "PROJECT", args.project],
        ["var", "REGION", args.region],
        ["var", "RUNTIME", RUNTIME],
        ["var", "SCHEDULER_SA_NAME", _account_id(args.scheduler_service_account)],
        ["var", "SCHEDULER_SA_EMAIL", scheduler_sa],
        ["var", "SA_EMAIL", sa],
        ["var", "SCHEDULER_JOB", args.scheduler_job],
        ["var", "SCHEDULE", args.schedule],
        ["var", "SCHEDULED_TARGET", scheduled[0].name if scheduled else ""],
        [
            "var",
            "SCHEDULED_AUDIENCE",
            function_url(scheduled[0], args.project, args.region) if scheduled else "",
        ],
        ["var", "QUEUE", args.tasks_queue if queue else ""],
        ["var", "QUEUE_RATE", f"{queue.max_dispatches_per_second:g}" if queue else ""],
        ["var", "QUEUE_CONCURRENT", str(queue.max_concurrent_dispatches) if queue else ""],
        ["var", "TOPIC", topic],
        ["var", "DEAD_LETTER_TOPIC", f"{topic}-dead-letter" if topic else ""],
        ["var", "MAX_DELIVERY_ATTEMPTS", str(MAX_DELIVERY_ATTEMPTS)],
        ["var", "CLOUDSQL_INSTANCE", args.cloudsql_instance],
        ["var", "MIGRATE", "1" if args.migrate else "0"],
        ["var", "DRY_RUN", "1" if args.dry_run else "0"],
        ["var", "DB_SECRET_NAME", db_secret.name],
        ["var", "DB_SECRET_PROJECT", db_secret.project],
        ["var", "DB_SECRET_VERSION", db_secret.version],
    ]
    records += [["api", api] for api in APIS]
    if args.cloudsql_instance:
        records.append(["api", "sqladmin.googleapis.com"])
    if queue:
        records.append(["api", "cloudtasks.googleapis.com"])
    if topic:
        records += [["api", "pubsub.googleapis.com"], ["api", "eventarc.googleapis.com"]]

    # The runtime accounts: the functions', and the Pub/Sub targets' own one, each with the secrets.
    accounts = [(args.service_account, sa, "skill-email functions")]
    if pushing:
        accounts.append(
            (args.push_service_account, push_sa, "skill-email push (runs and triggers gmail_push)")
        )
    records += [["sa", _account_id(name) or "-", email, display] for name, email, display in accounts]
    for ref in (settings["DB_URL_SECRET"], settings.get("TOKEN_KEY_SECRET", "")):
        if ref:
            secret = split_secret(ref, args.project)
            records += [
                ["secret", secret.name, secret.project, f"serviceAccount:{e}"] for _, e, _ in accounts
            ]
    if args.cloudsql_instance:
        records += [["sql", f"serviceAccount:{email}"] for _, email, _ in accounts]

    # Every function checks callers (docs/deploy.md, "Who may call what"); an ID token's audience must be
    # one of the functions' URLs (all of them, so a partial --only deploy does not narrow the others').
    added = {} if "GOOGLE_CLOUD_PROJECT" in settings else {"GOOGLE_CLOUD_PROJECT": args.project}
    added["CALLER_POLICY"] = "enforce"
    urls = [function_url(t, args.project, args.region) for t in registered if t.trigger == targets.HTTP]
    added["CALLER_AUDIENCES"] = ",".join(dict.fromkeys([*urls, *args.audiences]))
    if topic:
        # watch_mailbox asks Gmail to publish here; one setting for every function, like env.yaml's.
        added["PUBSUB_TOPIC"] = f"projects/{args.project}/topics/{topic}"
    explain += [f"every function's env file adds {key}={value}" for key, value in added.items()]

    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    source = env_path.read_text(encoding="utf-8")
    for target in deploying:
        size = sizes[target.name]
        env_file = work_dir / f"env.{target.name}.yaml"
        own = dict(added)
        if queue and is_scheduled(target):
            # The fan-out (shared/tokens/tasks.py): the queue, and the URL and identity its tasks call
            # back with: an audience CALLER_AUDIENCES holds, and the scheduler, whom the caller rules admit.
            queue_path = f"projects/{args.project}/locations/{args.region}/queues/{args.tasks_queue}"
            own["REFRESH_TASKS_QUEUE"] = queue_path
            own["REFRESH_TASKS_URL"] = function_url(target, args.project, args.region)
            own["REFRESH_TASKS_SERVICE_ACCOUNT"] = scheduler_sa
        env_file.write_text(_env_file_text(args.env_vars_file, source, target, size, own), encoding="utf-8")
        runs_as = push_sa if target.trigger == targets.PUBSUB else sa
        numbers = [str(size.instances), str(size.concurrency)]
        where = [str(env_file), ingress(target, args.ingress)]
        records.append(
            [
                "function",
                target.name,
                target.trigger,
                runs_as,
                size.memory,
                CPU,
                size.timeout,
                *numbers,
                *where,
            ]
        )
        invokers = grants(target, args.robeing_invokers, args.operators)
        if target.trigger == targets.PUBSUB:
            # Eventarc pushes the topic's messages with the trigger's identity, which must be an invoker.
            invokers.insert(0, f"serviceAccount:{push_sa}")
        records += [["invoker", target.name, who] for who in invokers]
        explain.append(f"{target.name}: run.invoker for {', '.join(invokers) or 'nobody yet'}")
    if queue:
        workers = sizes[scheduled[0].name].share - 1
        explain.append(
            f"tasks queue {args.tasks_queue}: {queue.max_dispatches_per_second:g} slices/s"
            f" of {SLICE_TOKENS} tokens"
            f" (<= {args.token_endpoint_rate} token refreshes/s), {queue.max_concurrent_dispatches} at once"
            f" (<= {queue.max_concurrent_dispatches * workers} database connections)"
        )
    return records, explain


def _account_id(name: str) -> str:
    """The account id deploy.sh creates when missing; empty for an existing account's e-mail."""
    return "" if "@" in name else name


def main(argv: list[str], environ: dict[str, str] | None = None) -> int:
    """``python -m devtools.deploy_plan [deploy.sh options]``: print the records, explain them on stderr."""
    environ = dict(os.environ if environ is None else environ)
    p = parser()
    args = p.parse_args(argv)
    try:
        records, explain = build(args, environ)
    except _UsageError as exc:
        p.error(str(exc))
    except (PlanError, EnvFileError, BudgetError) as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    for line in explain:
        sys.stderr.write(f"{PROG}: {line}\n")
    for record in records:
        if any("\t" in field or "\n" in field for field in record):
            sys.stderr.write(f"{PROG}: error: a tab or newline in {record[1]!r}\n")
            return 1
        sys.stdout.write("\t".join(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
