"""HTTP to Google: one ``requests.Session`` per instance, and an httplib2-shaped adapter over it.

googleapiclient speaks httplib2. We hand it this adapter instead because ``requests`` keeps a pool of
TLS connections across invocations (a new TLS session costs ~21 ms here), takes a real timeout, and
never re-sends a request on its own: httplib2 silently repeats a POST whose connection dropped, which
for ``messages.send`` means a second copy of the mail.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httplib2
    import requests

# (connect, read). Gmail answers list/get in well under a second; a 35 MB upload plus Gmail's
# processing stays under 30 s on any link fast enough to send it within the function timeout.
GMAIL_TIMEOUT_S = (3.05, 30.0)

_session: requests.Session | None = None
_session_lock = threading.Lock()


def http_session() -> requests.Session:
    """The instance's one session, shared by the token endpoint and Gmail calls."""
    global _session
    with _session_lock:
        if _session is None:
            # Imported here: requests costs ~40 ms of import, which token_status never needs.
            import requests
            import requests.adapters

            session = requests.Session()
            # Pool sized for the scheduled refresh's workers and a threaded server's requests; no
            # automatic retries (max_retries=0): every retry is ours, capped and explained.
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            _session = session
        return _session


class RequestsHttp:
    """The slice of ``httplib2.Http`` that googleapiclient and google-auth-httplib2 call.

    Counts the requests it makes, so a function can report how many Gmail round trips it cost.
    """

    def __init__(self, session: requests.Session | None = None, timeout: Any = GMAIL_TIMEOUT_S) -> None:
        self.session = session or http_session()
        self.timeout = timeout
        self.calls = 0
        # googleapiclient reads these attributes off an Http object.
        self.timeout_seconds = timeout[1] if isinstance(timeout, tuple) else timeout

    def request(
        self,
        uri: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        redirections: int = 5,
        connection_type: Any = None,
        **kwargs: Any,
    ) -> tuple[httplib2.Response, bytes]:
        import httplib2  # only for its Response type, which googleapiclient reads

        self.calls += 1
        response = self.session.request(
            method, uri, data=body, headers=dict(headers or {}), timeout=self.timeout, allow_redirects=False
        )
        info = {name.lower(): value for name, value in response.headers.items()}
        info["status"] = str(response.status_code)
        result = httplib2.Response(info)
        result.reason = response.reason or ""
        return result, response.content

    def stream(self, uri: str, headers: dict[str, str]) -> requests.Response:
        """A GET whose body is read as it arrives (``iter_content``), counted like any other request.

        The caller must close the response (or read it to the end).
        """
        self.calls += 1
        return self.session.get(
            uri, headers=headers, timeout=self.timeout, stream=True, allow_redirects=False
        )

    def close(self) -> None:
        """Nothing to close: the session outlives the invocation on purpose."""


CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


def google_api_session(endpoint: str | None) -> requests.Session:
    """A session for a Google Cloud REST API (Secret Manager, Cloud Tasks): authorised with the instance's
    credentials, or plain when ``endpoint`` is an ``http://`` emulator, which takes no credentials.

    Raises:
        Unavailable: no Google credentials could be found (a cold start cannot read its secrets then).
    """
    import requests

    if endpoint and endpoint.startswith("http://"):
        return requests.Session()
    import google.auth
    from google.auth import exceptions as auth_exceptions
    from google.auth.transport.requests import AuthorizedSession

    from shared.errors import Unavailable

    try:
        credentials, _project = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
    except auth_exceptions.DefaultCredentialsError as exc:
        raise Unavailable(f"no Google credentials to call Google Cloud with ({type(exc).__name__})") from None
    return AuthorizedSession(credentials)
