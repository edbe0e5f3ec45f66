"""A fake of Google's ID-token signing certificates (`GET /oauth2/v1/certs`) and a minter of ID tokens.

The certificates are served as Google serves them: a JSON object mapping key id -> PEM X.509 certificate,
with `Cache-Control: public, max-age=...`. `mint()` signs RS256 ID tokens with google-auth's own
`RSASigner` and `jwt.encode`, so the functions verify them exactly as they would Google's. Point the
functions at it with `ID_TOKEN_CERTS_URL=fake.certs_url`.

Knobs: `rotate()` adds a new signing key (served beside the old one), `fail_next` answers 503.
Records: `requests` (every fetch), `count("GET", "/oauth2/v1/certs")`.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import time
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from devtools.fakes._server import FakeServer, RecordedRequest, Response

CERTS_PATH = "/oauth2/v1/certs"
ISSUER = "https://accounts.google.com"
MAX_AGE_S = 21_600


@functools.lru_cache(maxsize=8)
def signing_key(index: int) -> tuple[str, str]:
    """A test RSA key (PEM, PKCS#8) and its self-signed certificate (PEM); the same per index in a run."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fake-google-{index}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


class FakeGoogleCerts(FakeServer):
    """Google's certificate endpoint for ID tokens, with the keys it serves and a way to sign with them."""

    name = "fake-google-certs"

    def __init__(self, *, latency: float = 0.0) -> None:
        super().__init__(latency=latency)
        self.keys: dict[str, str] = {}  # key id -> private key PEM
        self.served: dict[str, str] = {}  # key id -> certificate PEM
        self.fail_next = 0
        self.minted: set[str] = set()
        self.rotate()

    @property
    def certs_url(self) -> str:
        """The URL to set as ID_TOKEN_CERTS_URL."""
        return self.url + CERTS_PATH

    def rotate(self) -> str:
        """Adds a new signing key (the old ones stay served, as Google overlaps them); its key id."""
        with self.lock:
            index = len(self.keys)
            key_pem, cert_pem = signing_key(index)
            key_id = f"fake-kid-{index}-{int(time.time())}"
            self.keys[key_id] = key_pem
            self.served[key_id] = cert_pem
            self.current_kid = key_id
            return key_id

    def mint(
        self,
        email: str | None,
        audience: str,
        *,
        lifetime_s: int = 3600,
        issued_at: int | None = None,
        issuer: str = ISSUER,
        key_id: str | None = None,
        key_pem: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """An RS256 ID token for `email` and `audience`, signed with the current key (or `key_pem`)."""
        now = int(time.time()) if issued_at is None else issued_at
        payload: dict[str, Any] = {
            "iss": issuer,
            "aud": audience,
            "azp": "1234567890",
            "sub": "1234567890",
            "iat": now,
            "exp": now + lifetime_s,
        }
        if email is not None:
            payload.update(email=email, email_verified=True)
        payload.update(extra or {})
        kid = key_id or self.current_kid
        signer = crypt.RSASigner.from_string(key_pem or self.keys[kid], key_id=kid)
        token = jwt.encode(signer, payload).decode()
        with self.lock:
            self.minted.add(token)
        return token

    def issued_secrets(self) -> set[str]:
        # An ID token is a bearer credential for an hour; the signing keys sign any identity.
        with self.lock:
            return set(self.minted) | set(self.keys.values())

    def handle(self, request: RecordedRequest) -> Response:
        if request.method != "GET" or request.path != CERTS_PATH:
            return Response.json(404, {"error": "not_found"})
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return Response.json(503, {"error": "backend_error"})
            body = json.dumps(self.served).encode()
        return Response(
            200,
            body,
            {
                "Content-Type": "application/json; charset=UTF-8",
                "Cache-Control": f"public, max-age={MAX_AGE_S}",
            },
        )
