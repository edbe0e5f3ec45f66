"""The suite's secret guard (tests/conftest.py, ``isolated``) itself: it knows every value each fake issued,
and it fails a test whose log lines or answers hold one of them."""

from __future__ import annotations

import google.auth.transport.requests
import pytest
from google.oauth2.credentials import Credentials

from devtools.fakes import FakeGmail, FakeGoogleCerts, FakeSecretManager, FakeTokenEndpoint
from tests.conftest import AUDIENCE

pytest_plugins = ["pytester"]


def test_each_fake_reports_every_secret_it_issued_or_holds():
    with FakeTokenEndpoint(clients={"cid": "a-client-secret-42"}, rotate_refresh_tokens=True) as oauth:
        oauth.add_refresh_token("1//refresh-abcdefgh", "cid")
        credentials = Credentials(
            None, refresh_token="1//refresh-abcdefgh", client_id="cid", client_secret="a-client-secret-42",
            token_uri=oauth.url + "/token",
        )  # fmt: skip
        credentials.refresh(google.auth.transport.requests.Request())
        issued = oauth.issued_secrets()
    assert {
        "a-client-secret-42",
        "1//refresh-abcdefgh",
        credentials.token,
        credentials.refresh_token,
    } <= issued
    with FakeGoogleCerts() as certs:
        token = certs.mint("a@example.com", AUDIENCE)
        assert token in certs.issued_secrets()
        assert any("PRIVATE KEY" in value for value in certs.issued_secrets())
    with FakeSecretManager() as secrets:
        secrets.set_secret("p", "db", "postgresql://u:a-db-password@h/d")
        assert "postgresql://u:a-db-password@h/d" in secrets.issued_secrets()
    with FakeGmail() as gmail:
        gmail.allow_token("ya29.allowed-token")
        assert "ya29.allowed-token" in gmail.issued_secrets()


GUARDED = """
import logging
from devtools.fakes import FakeTokenEndpoint

def test_logs_a_client_secret():
    with FakeTokenEndpoint(clients={"cid": "leaky-client-secret-{n}"}):
        logging.getLogger("x").warning("client secret is leaky-client-secret-{n}")

def test_answers_a_client_secret(client):
    with FakeTokenEndpoint(clients={"cid": "leaky-client-secret-{n}"}):
        # The 400 names the unknown field (the value here), in the answer only, not in any log line.
        client("token_status").post("/", json={"leaky-client-secret-{n}": 1})

def test_logs_nothing_secret():
    with FakeTokenEndpoint(clients={"cid": "quiet-client-secret-{n}"}):
        logging.getLogger("x").warning("nothing to see")
"""


def test_the_guard_fails_a_test_that_logs_or_answers_a_fake_issued_value(pytester: pytest.Pytester):
    pytester.makeconftest("from tests.conftest import *  # noqa: F403")
    pytester.makepyfile(test_guarded=GUARDED.replace("{n}", "7"))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 3  # the tests themselves; the guard fails two of them at teardown
    assert outcomes.get("errors") == 2
    result.stdout.fnmatch_lines(["*a secret reached a log line*", "*a secret reached an answer*"])
