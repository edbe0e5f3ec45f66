"""A fake of the Secret Manager v1 REST API, enough for `access_secret_version`.

The real client reaches it with the REST transport and an http:// endpoint:

    SecretManagerServiceClient(
        credentials=AnonymousCredentials(),
        transport="rest",
        client_options=ClientOptions(api_endpoint=fake.url),   # "http://127.0.0.1:PORT"
    )

The REST transport keeps a scheme given in the endpoint (it only adds `https://` when there is none).
"""

from __future__ import annotations

import base64
import collections
import re

from devtools.fakes._server import FakeServer, RecordedRequest, Response

_ACCESS = re.compile(
    r"^/v1/projects/(?P<project>[^/]+)(?:/locations/(?P<location>[^/]+))?"
    r"/secrets/(?P<secret>[^/]+)/versions/(?P<version>[^/:]+):access$"
)

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as Secret Manager's `dataCrc32c`.

    Pure Python because google_crc32c is not installed in the venv; secrets are small.
    """
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class FakeSecretManager(FakeServer):
    """`GET /v1/projects/{p}/secrets/{s}/versions/{v}:access` (also the `locations/{l}` form).

    `v` is a version number or `latest`. Missing secret or version -> 404 NOT_FOUND; `down = True` ->
    503 UNAVAILABLE. Attributes: `down`, `accesses` (Counter of "projects/p/secrets/s"), `latency`,
    `requests`.

    Beware: the real client retries UNAVAILABLE for up to 60 s by default (exponential backoff from 2 s);
    tests of "Secret Manager down" must pass `retry=None` (or a short Retry) or they take a minute.
    """

    name = "fake-secret-manager"

    def __init__(self, *, latency: float = 0.0) -> None:
        super().__init__(latency=latency)
        self.down = False
        self.accesses: collections.Counter[str] = collections.Counter()
        self._versions: dict[tuple[str, str], list[bytes]] = {}
        self._failures: list[int] = []

    def set_secret(self, project: str, name: str, value: str | bytes) -> int:
        """Add a new version of secret `name` in `project`; returns its version number (1, 2, ...)."""
        data = value.encode("utf-8") if isinstance(value, str) else value
        with self.lock:
            versions = self._versions.setdefault((project, name), [])
            versions.append(data)
            return len(versions)

    def issued_secrets(self) -> set[str]:
        with self.lock:
            return {
                value.decode("utf-8", "replace")
                for versions in self._versions.values()
                for value in versions
                if value
            }

    def delete_secret(self, project: str, name: str) -> None:
        """Remove a secret and all its versions."""
        with self.lock:
            self._versions.pop((project, name), None)

    def fail_next(self, status: int = 503, count: int = 1) -> None:
        """Answer the next `count` access requests with `status` (Google error shape)."""
        with self.lock:
            self._failures.extend([status] * count)

    @property
    def access_count(self) -> int:
        """Total access requests received (failed ones included)."""
        with self.lock:
            return sum(1 for r in self.requests if r.path.endswith(":access"))

    def handle(self, request: RecordedRequest) -> Response:
        match = _ACCESS.match(request.path)
        if request.method != "GET" or match is None:
            return _error(404, f"Method not found: {request.method} {request.path}")
        project, secret, version = match["project"], match["secret"], match["version"]
        secret_name = f"projects/{project}/secrets/{secret}"
        with self.lock:
            self.accesses[secret_name] += 1
            if self.down:
                return _error(503, "The service is currently unavailable.")
            if self._failures:
                return _error(self._failures.pop(0), "Injected failure.")
            versions = self._versions.get((project, secret))
            if not versions:
                return _error(404, f"Secret [{secret_name}] not found or has no versions.")
            if version == "latest":
                number = len(versions)
            elif version.isdigit() and 1 <= int(version) <= len(versions):
                number = int(version)
            else:
                return _error(404, f"Secret Version [{secret_name}/versions/{version}] not found.")
            data = versions[number - 1]
        return Response.json(
            200,
            {
                "name": f"{secret_name}/versions/{number}",
                "payload": {
                    "data": base64.b64encode(data).decode("ascii"),
                    # int64 fields travel as decimal strings in proto3 JSON
                    "dataCrc32c": str(crc32c(data)),
                },
            },
        )


def _error(status: int, message: str) -> Response:
    status_name = _STATUS_NAMES.get(status, "UNKNOWN")
    return Response.json(status, {"error": {"code": status, "message": message, "status": status_name}})
