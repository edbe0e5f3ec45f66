"""A fake of Google's OAuth 2.0 token endpoint (`POST /token`, refresh_token grant only).

Point google-auth at it with `Credentials(..., token_uri=fake.url + "/token")`.
"""

from __future__ import annotations

import collections
import itertools
from typing import Any

from devtools.fakes._server import FakeServer, RecordedRequest, Response

DEFAULT_CLIENT_ID = "test-client-id.apps.googleusercontent.com"
DEFAULT_CLIENT_SECRET = "test-client-secret"
DEFAULT_SCOPE = "https://www.googleapis.com/auth/gmail.send https://www.googleapis.com/auth/gmail.readonly"


class FakeTokenEndpoint(FakeServer):
    """Google's token endpoint for the refresh_token grant.

    Answers (bodies as Google's):
    - 200 {"access_token", "expires_in", "token_type": "Bearer", "scope"} (+ "refresh_token" when rotating);
    - 400 invalid_grant for an unknown or revoked refresh token;
    - 401 invalid_client for an unknown client id or a wrong secret;
    - 401 unauthorized_client when the refresh token was issued to another (known) client;
    - 400 unsupported_grant_type / invalid_request for other grants or missing fields;
    - queued `fail_next` statuses (500/503) before any of the above.

    Attributes tests set: `expires_in` (int, or a str to test parsers), `scope`, `rotate_refresh_tokens`,
    `latency`. Attributes tests read: `issued_access_tokens`, `calls_by_refresh_token`, `requests`.
    """

    name = "fake-oauth"

    def __init__(
        self,
        *,
        clients: dict[str, str] | None = None,
        refresh_tokens: dict[str, str] | None = None,
        expires_in: int | str = 3599,
        scope: str = DEFAULT_SCOPE,
        rotate_refresh_tokens: bool = False,
        latency: float = 0.0,
    ) -> None:
        """`clients` maps client_id -> client_secret (default: one test client);
        `refresh_tokens` maps refresh_token -> client_id."""
        super().__init__(latency=latency)
        self.clients: dict[str, str] = dict(clients or {DEFAULT_CLIENT_ID: DEFAULT_CLIENT_SECRET})
        self.refresh_tokens: dict[str, str] = dict(refresh_tokens or {})
        self.expires_in = expires_in
        self.scope = scope
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.issued_access_tokens: set[str] = set()
        # refresh token -> the access tokens issued for it, oldest first
        self.access_tokens_by_refresh_token: dict[str, list[str]] = collections.defaultdict(list)
        # refresh token -> how many POST /token named it (failed attempts included)
        self.calls_by_refresh_token: collections.Counter[str] = collections.Counter()
        self.rotated: dict[str, str] = {}  # old refresh token -> the one issued in its place
        self._failures: list[tuple[int, dict[str, Any]]] = []
        self._serial = itertools.count(1)

    def add_refresh_token(self, refresh_token: str, client_id: str = DEFAULT_CLIENT_ID) -> None:
        """Make `refresh_token` valid for `client_id`."""
        with self.lock:
            self.refresh_tokens[refresh_token] = client_id

    def revoke(self, refresh_token: str) -> None:
        """Revoke a refresh token: later refreshes get 400 invalid_grant."""
        with self.lock:
            self.refresh_tokens.pop(refresh_token, None)

    def fail_next(self, status: int = 503, count: int = 1, body: dict[str, Any] | None = None) -> None:
        """Answer the next `count` token requests with `status` (e.g. 500/503).

        Note google-auth retries 500/503/504/408/429 itself (3 attempts, ~1 s then ~2 s backoff), so one
        refresh() call consumes up to 3 queued failures.
        """
        payload = body or {"error": "internal_failure", "error_description": "Backend Error"}
        with self.lock:
            self._failures.extend([(status, payload)] * count)

    def issued_secrets(self) -> set[str]:
        with self.lock:
            return (
                set(self.issued_access_tokens)
                | set(self.refresh_tokens)
                | set(self.rotated.values())
                | set(self.clients.values())
            )

    def calls(self, refresh_token: str) -> int:
        """How many token requests named this refresh token."""
        with self.lock:
            return self.calls_by_refresh_token[refresh_token]

    def handle(self, request: RecordedRequest) -> Response:
        if request.method != "POST" or request.path != "/token":
            return Response.json(404, {"error": "not_found", "error_description": request.path})
        form = request.form() if request.body else {}
        with self.lock:
            refresh_token = form.get("refresh_token")
            if refresh_token:
                self.calls_by_refresh_token[refresh_token] += 1
            if self._failures:
                status, payload = self._failures.pop(0)
                return Response.json(status, payload)
            if form.get("grant_type") != "refresh_token":
                return _oauth_error(400, "unsupported_grant_type", "Invalid grant_type: ")
            client_id = form.get("client_id", "")
            if not refresh_token or not client_id:
                return _oauth_error(400, "invalid_request", "Missing required parameter: refresh_token")
            if self.clients.get(client_id) != form.get("client_secret"):
                return _oauth_error(401, "invalid_client", "The OAuth client was not found.")
            owner = self.refresh_tokens.get(refresh_token)
            if owner is None:
                return _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
            if owner != client_id:
                return _oauth_error(401, "unauthorized_client", "Unauthorized")
            serial = next(self._serial)
            access_token = f"ya29.fake-{serial}-{refresh_token[:12]}"
            self.issued_access_tokens.add(access_token)
            self.access_tokens_by_refresh_token[refresh_token].append(access_token)
            payload: dict[str, Any] = {
                "access_token": access_token,
                "expires_in": self.expires_in,
                "scope": self.scope,
                "token_type": "Bearer",
            }
            if self.rotate_refresh_tokens:
                # The old token stays valid, as with Google; tests can revoke() it to model strict rotation.
                new_refresh = f"1//fake-rotated-{serial}"
                self.refresh_tokens[new_refresh] = client_id
                self.rotated[refresh_token] = new_refresh
                payload["refresh_token"] = new_refresh
        return Response.json(200, payload, {"Cache-Control": "no-cache, no-store, max-age=0"})


def _oauth_error(status: int, error: str, description: str) -> Response:
    return Response.json(status, {"error": error, "error_description": description})
