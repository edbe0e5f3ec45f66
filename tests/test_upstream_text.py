"""Upstream answers never travel in our exceptions: a Gmail or token-endpoint error body (which may echo
what we sent) reaches neither an answer nor a log line, traceback included; the status, Google's error
code and a short reason do."""

from __future__ import annotations

from devtools.fakes.gmail import google_error
from tests.conftest import secret


def _marker() -> str:
    # Registered with the guard: any log line or answer holding it fails the test on its own.
    return secret("UPSTREAM-BODY-ECHO")


def test_a_gmail_5xx_body_reaches_no_answer_and_no_log(client, alice, gmail, log_lines):
    marker = _marker()
    echo = google_error(500, message=f"backend error while handling {marker}")
    gmail.fail_next(r"/messages$", 500, count=10, body=__import__("json").loads(echo.body))
    response = client("list_emails").get("/?user_id=alice")
    assert response.status_code == 503
    error_lines = [line for line in log_lines if '"severity": "ERROR"' in line]
    assert error_lines, "the 503 is logged"
    assert any("500" in line and "backendError" in line for line in log_lines), "status and reason are kept"


def test_a_gmail_400_answer_names_googles_reason_not_its_text(client, alice, gmail):
    marker = _marker()
    gmail.fail_next(r"/messages$", 400, count=1, body={
        "error": {"code": 400, "message": f"Invalid query {marker}", "errors": [
            {"reason": "invalidArgument", "message": f"Invalid query {marker}", "domain": "global"}
        ], "status": "INVALID_ARGUMENT"}
    })  # fmt: skip
    response = client("list_emails").get("/?user_id=alice&q=x")
    assert response.status_code == 400
    assert "invalidArgument" in response.get_json()["error"]["message"]


def test_a_token_endpoint_5xx_body_reaches_no_answer_and_no_log(client, user_token, token_endpoint, gmail):
    marker = _marker()
    user_token("alice", expires_in=-60)
    token_endpoint.fail_next(503, count=10, body={"error": "backend_error", "error_description": marker})
    response = client("list_emails").get("/?user_id=alice")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "unavailable"


def test_a_token_endpoint_4xx_body_reaches_no_answer_and_no_log(client, user_token, token_endpoint, gmail):
    marker = _marker()
    user_token("alice", expires_in=-60)
    token_endpoint.fail_next(400, count=1, body={"error": "invalid_request", "error_description": marker})
    response = client("refresh_tokens").post("/", json={"user_id": "alice"})
    assert response.status_code == 502
