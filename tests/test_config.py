"""Configuration: DATABASE_URL parsing, the Secret Manager path, and failures that must answer 503."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from devtools.fakes.secret_manager import FakeSecretManager
from shared import config, db
from shared.config import ConfigError
from shared.errors import Unavailable
from tests.conftest import utc_in

# -- URL parsing --------------------------------------------------------------------------------------


def test_tcp_url_with_percent_encoded_user_and_password():
    params = db.parse_database_url("postgresql://us%40er:p%40ss%3Aw%2Frd@db.example.com:6543/mail")
    assert (params.user, params.password, params.host, params.port, params.database) == (
        "us@er",
        "p@ss:w/rd",
        "db.example.com",
        6543,
        "mail",
    )
    assert params.unix_sock is None


def test_cloud_sql_socket_url_means_the_socket_file():
    params = db.parse_database_url("postgresql://app:pw@/mail?host=/cloudsql/proj:europe-west1:main")
    assert params.unix_sock == "/cloudsql/proj:europe-west1:main/.s.PGSQL.5432"
    assert params.host is None
    assert db.ssl_context_for(params) is False


def test_default_port_and_connect_timeout():
    params = db.parse_database_url("postgres://app@localhost/mail")
    assert params.port == 5432
    assert params.connect_timeout == db.DEFAULT_CONNECT_TIMEOUT_S
    assert params.password is None


def test_connect_timeout_parameter_is_honoured():
    assert db.parse_database_url("postgresql://a@h/d?connect_timeout=3").connect_timeout == 3


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("mysql://a@h/d", "postgresql://"),
        ("postgresql://h/d", "user"),
        ("postgresql://a@h:notaport/d", "port"),
        ("postgresql://a@h/d?sslmode=sometimes", "sslmode"),
        ("postgresql://a@h/d?connect_timeout=soon", "connect_timeout"),
        ("postgresql://a@h/d?pool=5", "unsupported"),
        ("postgresql://a:pw@/d?host=/cloudsql/x&sslmode=require", "unix socket"),
    ],
)
def test_malformed_urls_are_config_errors_that_never_echo_the_password(url, words):
    with pytest.raises(ConfigError) as error:
        db.parse_database_url(url.replace("a@", "a:hunter2@") if "a@" in url else url)
    assert words in str(error.value)
    assert "hunter2" not in str(error.value)
    assert error.value.status == 503


def test_password_is_not_in_repr():
    assert "hunter2" not in repr(db.parse_database_url("postgresql://a:hunter2@h/d"))


@pytest.mark.parametrize("mode", ["require", "verify-full", "verify-ca"])
def test_tls_modes_get_an_explicit_context_built_once(mode):
    params = db.parse_database_url(f"postgresql://a@h/d?sslmode={mode}")
    context = db.ssl_context_for(params)
    assert isinstance(context, ssl.SSLContext)
    assert db.ssl_context_for(params) is context
    assert context.verify_mode == (ssl.CERT_NONE if mode == "require" else ssl.CERT_REQUIRED)
    assert context.check_hostname is (mode == "verify-full")


def test_sslmode_disable_is_plaintext():
    assert db.ssl_context_for(db.parse_database_url("postgresql://a@h/d?sslmode=disable")) is False


def test_require_never_falls_back_to_plaintext(pg_admin_url):
    """The test server has no TLS: asking for it must fail rather than silently connect in the clear."""
    parts = db.parse_database_url(pg_admin_url)
    required = db.ConnectParams(**{**parts.__dict__, "sslmode": "require"})
    with pytest.raises(Unavailable):
        db.connect(required)


def test_prefer_falls_back_when_the_server_has_no_tls(pg_admin_url):
    parts = db.parse_database_url(pg_admin_url)
    preferred = db.ConnectParams(**{**parts.__dict__, "sslmode": "prefer"})
    connection = db.Connection(db.connect(preferred))
    try:
        assert connection.one("SELECT 1 AS one") == {"one": 1}
    finally:
        connection.close()


def test_connection_sets_statement_timeout(database_url):
    with db.connection() as conn:
        assert conn.one("SELECT current_setting('statement_timeout') AS value") == {"value": "15s"}


def test_socket_url_reaches_the_embedded_server(pg_admin_url, monkeypatch):
    import os

    if os.environ.get("TEST_DATABASE_URL"):
        pytest.skip("the unix-socket case needs the embedded server, whose socket directory we know")
    # The server names its own socket directory (a temp dir wherever TMPDIR points), so no path is assumed.
    params = db.parse_database_url(pg_admin_url)
    with db.connection(params) as conn:
        socket_dir = conn.one("SELECT current_setting('unix_socket_directories') AS d")["d"].split(",")[0]
    url = f"postgresql://postgres@/postgres?host={socket_dir.strip()}&port={params.port}"
    with db.connection(db.parse_database_url(url)) as conn:
        assert conn.one("SELECT 1 AS one") == {"one": 1}


# -- the database down --------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_database_down_answers_503_json_quickly(client, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:pw@127.0.0.1:{_closed_port()}/mail")
    started = time.monotonic()
    response = client("token_status").get("/?user_id=alice")
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.get_json() == {
        "error": {"code": "unavailable", "message": "the database could not be reached"}
    }
    # not a benchmark: it must not sit out the 10 s connect timeout when the port refuses at once
    assert elapsed < 5


def test_no_database_configured_is_503_naming_the_variables(client):
    response = client("token_status").get("/?user_id=alice")
    assert response.status_code == 503
    assert "DATABASE_URL" in response.get_json()["error"]["message"]


def test_statement_timeout_answers_503(database_url, conn, monkeypatch):
    """A row lock held elsewhere makes the refresh wait; the lock timeout ends it with 503, not a hang."""
    monkeypatch.setattr(db, "LOCK_TIMEOUT_MS", 300)  # the value, not the code path, is what is shortened
    from shared.tokens.store import DatabaseTokenStore
    from tests.conftest import insert_row

    row_id = insert_row(
        conn, "slow", token_data={"access_token": "a", "refresh_token": "r"}, expiry=utc_in(-60)
    )
    with db.connection() as holder:
        holder.run("BEGIN")
        holder.run("SELECT id FROM gmail_token WHERE id = :id FOR UPDATE", id=row_id)
        with db.connection() as waiter, pytest.raises(Unavailable):
            DatabaseTokenStore(waiter).usable("slow")
        holder.run("ROLLBACK")


# -- Secret Manager -------------------------------------------------------------------------------------


@pytest.fixture
def secret_manager(monkeypatch):
    with FakeSecretManager() as fake:
        monkeypatch.setenv("SECRET_MANAGER_ENDPOINT", fake.url)
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj")
        monkeypatch.setenv("DB_URL_SECRET", "db-url")
        yield fake


def test_database_url_read_from_secret_manager_once_per_instance(client, secret_manager, migrated_url):
    secret_manager.set_secret("proj", "db-url", migrated_url)
    for _ in range(3):
        assert client("token_status").get("/?user_id=nobody").status_code == 404
    assert secret_manager.access_count == 1
    assert secret_manager.find("GET", "/v1/projects/proj/secrets/db-url/versions/latest:access")


def test_secret_manager_failing_then_recovering(client, secret_manager, migrated_url):
    secret_manager.set_secret("proj", "db-url", migrated_url)
    secret_manager.down = True
    failed = client("token_status").get("/?user_id=nobody")
    assert failed.status_code == 503
    assert failed.get_json()["error"]["code"] == "unavailable"
    secret_manager.down = False
    # the failure was not cached: the next call reads the secret and reaches the database
    assert client("token_status").get("/?user_id=nobody").status_code == 404


def test_missing_secret_is_503(client, secret_manager):
    response = client("token_status").get("/?user_id=nobody")
    assert response.status_code == 503


def test_full_secret_version_names_are_used_as_given():
    assert (
        config.secret_version_name("projects/p/secrets/s/versions/7", None)
        == "projects/p/secrets/s/versions/7"
    )
    assert config.secret_version_name("projects/p/secrets/s", None) == "projects/p/secrets/s/versions/latest"
    assert config.secret_version_name("s", "p") == "projects/p/secrets/s/versions/latest"
    with pytest.raises(ConfigError, match="GOOGLE_CLOUD_PROJECT"):
        config.secret_version_name("s", None)


def test_secret_manager_is_not_imported_when_database_url_is_set(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (
        "import sys, main; "
        "print('google.cloud.secretmanager' in sys.modules, 'googleapiclient.discovery' in sys.modules)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://a@h/d"},
    )
    assert output.stdout.split() == ["False", "False"] or output.stdout.split()[0] == "False"


def test_bad_token_provider_is_a_config_error(monkeypatch):
    monkeypatch.setenv("TOKEN_PROVIDER", "s3")
    with pytest.raises(ConfigError, match="TOKEN_PROVIDER"):
        config.load_settings()


def test_reading_the_database_url_from_secret_manager_never_imports_its_client_library(
    secret_manager, migrated_url
):
    """One REST call through google-auth instead of google-cloud-secret-manager (~120 ms of import saved)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    secret_manager.set_secret("proj", "db-url", migrated_url)
    code = (
        "import sys, main; from shared import config; assert config.database_url(); "
        "print('google.cloud.secretmanager' in sys.modules, 'grpc' in sys.modules)"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "SECRET_MANAGER_ENDPOINT": secret_manager.url,
        "GOOGLE_CLOUD_PROJECT": "proj",
        "DB_URL_SECRET": "db-url",
    }
    output = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env)
    assert output.returncode == 0, output.stderr[-2000:]
    assert output.stdout.split() == ["False", "False"]
    assert secret_manager.access_count == 1


def test_a_secret_manager_refusal_is_not_retried_and_names_no_value(client, secret_manager, log_lines):
    secret_manager.set_secret("proj", "db-url", "postgresql://u:hunter2@h/d")
    secret_manager.fail_next(403)
    response = client("token_status").get("/?user_id=nobody")
    assert response.status_code == 503
    assert secret_manager.access_count == 1
    assert not any("hunter2" in line for line in log_lines)
