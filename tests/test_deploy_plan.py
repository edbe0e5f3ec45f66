"""deploy.sh's planner: env.yaml read as YAML (no secret in any spelling), the budgets, the records."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools import deploy_budget, deploy_env, deploy_plan
from shared import request_types as rt
from shared import targets

REPO = Path(__file__).resolve().parent.parent
GOOD = 'DB_URL_SECRET: "skill-email-db-url"\nLOG_LEVEL: "INFO"\n'


def env_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "env.yaml"
    path.write_text(text)
    return path


def test_the_repository_env_yaml_is_accepted() -> None:
    settings = deploy_env.read_env(REPO / "env.yaml")
    assert settings["DB_URL_SECRET"] == "skill-email-db-url"
    assert "DATABASE_URL" not in settings


@pytest.mark.parametrize(
    "text",
    [
        'DATABASE_URL: "postgresql://u:pw@h/db"\n',
        '"DATABASE_URL": "postgresql://u:pw@h/db"\n',
        "'DATABASE_URL' : 'postgresql://u:pw@h/db'\n",
        "DATABASE_URL   : postgresql://u:pw@h/db\n",
        "{DB_URL_SECRET: s, DATABASE_URL: 'postgresql://u:pw@h/db'}\n",
        'database_url: "postgresql://u:pw@h/db"\n',
        '? DATABASE_URL\n: "postgresql://u:pw@h/db"\n',
        '<<: {DATABASE_URL: "postgresql://u:pw@h/db"}\n',
        '"DATABASE\\u005fURL": "postgresql://u:pw@h/db"\n',
        # The URL under another name is refused just the same.
        'OTHER_URL: "postgresql://u:pw@h/db"\n',
        'DB_URL_SECRET: "postgresql://u:pw@h/db"\n',
    ],
)
def test_a_database_url_is_refused_in_every_yaml_spelling(tmp_path: Path, text: str) -> None:
    path = env_file(tmp_path, text if text.startswith(("DB_URL_SECRET", "{")) else GOOD + text)
    with pytest.raises(deploy_env.EnvFileError, match="database URL") as raised:
        deploy_env.read_env(path)
    assert "pw" not in str(raised.value)


def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    # PyYAML keeps the last value: the first would reach gcloud without being checked.
    path = env_file(tmp_path, 'DATABASE_URL: "postgresql://u:pw@h/db"\n' + GOOD + '"DATABASE_URL": ""\n')
    with pytest.raises(deploy_env.EnvFileError, match="given twice"):
        deploy_env.read_env(path)


@pytest.mark.parametrize("key", ["THREADS", '"THREADS"', "REFRESH_CONCURRENCY "])
def test_settings_deploy_writes_itself_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(deploy_env.EnvFileError, match="leave it out"):
        deploy_env.read_env(env_file(tmp_path, f'{GOOD}{key}: "4"\n'))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('DB_URL_SECRET: "s"\nMAX: 4\n', "quoted string"),
        ("- DB_URL_SECRET\n", "mapping"),
        ('DB_URL_SECRET: "s"\n"BAD NAME": "x"\n', "not an environment variable name"),
        ('LOG_LEVEL: "INFO"\n', "no DB_URL_SECRET"),
        ('DB_URL_SECRET: "s\n', "not valid YAML"),
    ],
)
def test_malformed_env_files_are_refused_with_a_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(deploy_env.EnvFileError, match=message):
        deploy_env.read_env(env_file(tmp_path, text))


def test_a_url_without_credentials_is_fine(tmp_path: Path) -> None:
    settings = deploy_env.read_env(
        env_file(tmp_path, GOOD + 'GMAIL_API_ENDPOINT: "https://gmail.googleapis.com"\n')
    )
    assert settings["GMAIL_API_ENDPOINT"] == "https://gmail.googleapis.com"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("s", ("s", "proj", "latest")),
        ("projects/p2/secrets/s", ("s", "p2", "latest")),
        ("projects/p2/secrets/s/versions/3", ("s", "p2", "3")),
    ],
)
def test_secret_references(ref: str, expected: tuple[str, str, str]) -> None:
    secret = deploy_env.split_secret(ref, "proj")
    assert (secret.name, secret.project, secret.version) == expected


def test_a_malformed_secret_reference_is_refused() -> None:
    with pytest.raises(deploy_env.EnvFileError):
        deploy_env.split_secret("secrets/s", "proj")


# --- the connection budget ----------------------------------------------------------------------------


# The first registry's targets, whose split docs/deploy.md documents.
FIRST = tuple(
    t for t in targets.TARGETS if t.name in ("send_email", "list_emails", "refresh_tokens", "token_status")
)


def test_the_default_budget_gives_the_documented_split() -> None:
    sizes = deploy_budget.plan_sizes(20, FIRST)
    got = {name: (s.instances, s.concurrency, s.used) for name, s in sizes.items()}
    assert got == {
        "send_email": (2, 3, 6),
        "list_emails": (2, 3, 6),
        "refresh_tokens": (2, 1, 5),
        "token_status": (1, 3, 3),
    }


@pytest.mark.parametrize("registry", [FIRST, targets.TARGETS], ids=["first", "today"])
@pytest.mark.parametrize("offset", range(0, 300, 7))
def test_every_budget_is_kept(registry: tuple[targets.Target, ...], offset: int) -> None:
    budget = deploy_budget.minimum_budget(registry) + offset
    sizes = deploy_budget.plan_sizes(budget, registry)
    assert sum(s.used for s in sizes.values()) <= budget
    for name, size in sizes.items():
        target = targets.get(name)
        assert size.instances >= 1 and 1 <= size.concurrency <= target.max_concurrency
        assert size.used >= 1


def test_a_budget_below_one_connection_each_is_refused() -> None:
    assert deploy_budget.minimum_budget(FIRST) == 5
    with pytest.raises(deploy_budget.BudgetError, match="--db-connections 4 is too small"):
        deploy_budget.plan_sizes(4, FIRST)
    least = deploy_budget.minimum_budget(targets.TARGETS)
    assert least >= 5
    with pytest.raises(deploy_budget.BudgetError, match=f"--db-connections {least - 1} is too small"):
        deploy_budget.plan_sizes(least - 1, targets.TARGETS)


def test_what_rounding_leaves_is_spread_over_the_lightest_targets() -> None:
    light = [targets.Target(f"t{n}", ("GET",), rt.TokenStatusRequest, "x") for n in range(4)]
    registry = (*FIRST[:3], *light)  # send, list (weight 2), refresh, and four of weight 1
    shares = {name: size.share for name, size in deploy_budget.plan_sizes(21, registry).items()}
    # refresh 5; the rest 16 by weight 2,2,1,1,1,1 = 4,4,2,2,2,2, nothing left: even.
    assert [shares[t.name] for t in light] == [2, 2, 2, 2]
    shares = {name: size.share for name, size in deploy_budget.plan_sizes(23, registry).items()}
    # refresh 5; the rest 18 = 4,4,2,2,2,2 and 2 left: to the last two light targets.
    assert [shares[t.name] for t in light] == [2, 2, 3, 3]


def test_a_registered_target_takes_its_share_of_the_budget() -> None:
    extra = targets.Target("extra_target", ("GET",), rt.TokenStatusRequest, "one more")
    registry = (*FIRST, extra)
    sizes = deploy_budget.plan_sizes(20, registry)
    assert set(sizes) == {t.name for t in registry}
    assert sum(s.used for s in sizes.values()) <= 20
    assert sizes["extra_target"].used >= 1
    # Its connections come out of the others' shares: send_email had 6 of 20 without it.
    assert sizes["send_email"].used < deploy_budget.plan_sizes(20, FIRST)["send_email"].used
    assert deploy_budget.minimum_budget(registry) > deploy_budget.minimum_budget(FIRST)


# --- the records deploy.sh reads ------------------------------------------------------------------------


def records(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> list[list[str]]:
    argv = [
        "--project",
        "proj",
        "--env-vars-file",
        str(REPO / "env.yaml"),
        "--work-dir",
        str(tmp_path),
        *args,
    ]
    assert deploy_plan.main(argv, environ={}) == 0
    return [line.split("\t") for line in capsys.readouterr().out.splitlines()]


def variables(recs: list[list[str]]) -> dict[str, str]:
    return {r[1]: r[2] for r in recs if r[0] == "var"}


def test_pubsub_records_appear_once_such_a_target_is_registered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    http_only = tuple(t for t in targets.TARGETS if t.trigger == targets.HTTP)
    monkeypatch.setattr(targets, "TARGETS", http_only)
    before = records(tmp_path, capsys)
    assert variables(before)["TOPIC"] == ""
    assert [r[2] for r in before if r[0] == "function"] == ["http"] * len(http_only)
    assert len([r for r in before if r[0] == "sa"]) == 1  # no push account either

    push = targets.BY_NAME.get("gmail_push") or targets.Target(
        "gmail_push", (), rt.TokenStatusRequest, "Gmail's notification", trigger=targets.PUBSUB
    )
    monkeypatch.setattr(targets, "TARGETS", (*http_only, push))
    after = records(tmp_path, capsys, "--only", "gmail_push")
    assert variables(after)["TOPIC"] == "skill-email-gmail-push"
    (function,) = [r for r in after if r[0] == "function"]
    assert function[1:4] == ["gmail_push", "pubsub", "skill-email-push@proj.iam.gserviceaccount.com"]
    assert function[-1] == "internal-only"
    accounts = [r[1:3] for r in after if r[0] == "sa"]
    assert accounts[1] == ["skill-email-push", "skill-email-push@proj.iam.gserviceaccount.com"]
    env = (tmp_path / "env.gmail_push.yaml").read_text()
    assert 'PUBSUB_TOPIC: "projects/proj/topics/skill-email-gmail-push"' in env


def test_the_queue_follows_the_budgets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refresh = deploy_budget.plan_sizes(100, targets.TARGETS)["refresh_tokens"]
    queue = deploy_budget.queue_limits(refresh, token_endpoint_rate=30)
    assert queue.max_dispatches_per_second == 30 / deploy_budget.SLICE_TOKENS
    assert queue.max_concurrent_dispatches == refresh.instances - 1
    got = variables(records(tmp_path, capsys, "--db-connections", "100", "--token-endpoint-rate", "30"))
    assert (got["QUEUE_RATE"], got["QUEUE_CONCURRENT"]) == ("0.03", "1")
    assert variables(records(tmp_path, capsys, "--no-scheduler"))["QUEUE"] == ""
