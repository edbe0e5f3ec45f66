"""Fake Google servers (Gmail API, OAuth token endpoint, Secret Manager) on loopback HTTP.

Each fake is a context manager with `.url` ("http://127.0.0.1:PORT"), `.requests` (what it received) and
`.latency`. See each module's docstring for its endpoints and knobs, and tests/test_fakes.py for how the
real Google client libraries are pointed at them. The tests, the benchmarks and the sandbox
(`python3 tasks.py serve --sandbox`) all import them from here.
"""

from devtools.fakes._server import FakeServer, RecordedRequest, Response
from devtools.fakes.gmail import FakeGmail, StoredMessage, discovery_document, google_error
from devtools.fakes.google_certs import FakeGoogleCerts
from devtools.fakes.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, FakeTokenEndpoint
from devtools.fakes.secret_manager import FakeSecretManager, crc32c

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
