"""Fake Google servers (Gmail API, OAuth token endpoint, Secret Manager) on loopback HTTP.

Each fake is a context manager with `.url` ("http://127.0.0.1:PORT"), `.requests` (what it received) and
`.latency`. See each module's docstring for its endpoints and knobs, and tests/test_fakes.py for how the
real Google client libraries are pointed at them.
"""

from tests.fakes._server import FakeServer, RecordedRequest, Response
from tests.fakes.gmail import FakeGmail, StoredMessage, discovery_document, google_error
from tests.fakes.google_certs import FakeGoogleCerts
from tests.fakes.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, FakeTokenEndpoint
from tests.fakes.secret_manager import FakeSecretManager, crc32c

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "FakeGmail",
    "FakeGoogleCerts",
    "FakeSecretManager",
    "FakeServer",
    "FakeTokenEndpoint",
    "RecordedRequest",
    "Response",
    "StoredMessage",
    "crc32c",
    "discovery_document",
    "google_error",
]
