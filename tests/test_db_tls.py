"""Database TLS as libpq users expect it: ``sslmode=require`` with ``sslrootcert`` verifies the server's CA,
a missing or unreadable ``sslrootcert`` is 503 naming the setting, and URL query values are percent-decoded
without turning ``+`` into a space.

The server is a fake PostgreSQL on loopback that speaks the protocol's TLS upgrade (SSLRequest, 'S') and
records whether the TLS handshake completed: a client that verifies the CA abandons a handshake with a
certificate from another CA.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared import db
from shared.config import ConfigError
from shared.errors import Unavailable

SSL_REQUEST_CODE = 80877103


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a server certificate it signed (for a name that is not the host's), plus another CA."""
    directory = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _ca("skill-email test CA")
    _, other_ca = _ca("some other CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("db.internal.example"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("db.internal.example")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {
        "ca": directory / "root+ca.crt",  # a '+' in the path, as a URL query value
        "other_ca": directory / "other-ca.crt",
        "server_cert": directory / "server.crt",
        "server_key": directory / "server.key",
    }
    paths["ca"].write_bytes(_pem(ca_cert))
    paths["other_ca"].write_bytes(_pem(other_ca))
    paths["server_cert"].write_bytes(_pem(server_cert))
    paths["server_key"].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


class FakeTlsPostgres:
    """Accepts connections, answers SSLRequest with 'S', runs the TLS handshake, then hangs up."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.handshakes: list[bool] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    _length, code = struct.unpack("!ii", conn.recv(8))
                    if code != SSL_REQUEST_CODE:
                        continue
                    conn.sendall(b"S")
                    with self.context.wrap_socket(conn, server_side=True) as tls:
                        self.handshakes.append(True)
                        tls.recv(1024)  # the startup message; then hang up
                except (ssl.SSLError, OSError, struct.error):
                    self.handshakes.append(False)

    def recorded(self, count: int = 1, timeout: float = 5.0) -> list[bool]:
        """The handshakes seen, once ``count`` are in: the client may give up before the server thread
        has recorded the handshake it refused, so wait (bounded) rather than race it."""
        deadline = time.monotonic() + timeout
        while len(self.handshakes) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.handshakes)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def tls_server(pki: dict[str, Path]) -> Iterator[FakeTlsPostgres]:
    server = FakeTlsPostgres(pki["server_cert"], pki["server_key"])
    yield server
    server.close()


def _url(port: int, query: str) -> str:
    return f"postgresql://app:pw@127.0.0.1:{port}/mail?{query}"


def _connect(url: str) -> None:
    db.connect(db.parse_database_url(url))


def test_require_with_sslrootcert_refuses_a_server_from_another_ca(tls_server, pki):
    with pytest.raises(Unavailable):
        _connect(_url(tls_server.port, f"sslmode=require&sslrootcert={pki['other_ca']}"))
    assert tls_server.recorded() == [False]


def test_require_with_sslrootcert_accepts_its_ca_without_checking_the_host_name(tls_server, pki):
    # As libpq: require + a root certificate behaves as verify-ca (the name is db.internal.example).
    with pytest.raises(Unavailable):  # the fake hangs up after the handshake
        _connect(_url(tls_server.port, f"sslmode=require&sslrootcert={pki['ca']}"))
    assert tls_server.recorded() == [True]


def test_require_without_sslrootcert_encrypts_without_verifying(tls_server):
    with pytest.raises(Unavailable):
        _connect(_url(tls_server.port, "sslmode=require"))
    assert tls_server.recorded() == [True]


def test_verify_full_checks_the_host_name_too(tls_server, pki):
    with pytest.raises(Unavailable):
        _connect(_url(tls_server.port, f"sslmode=verify-full&sslrootcert={pki['ca']}"))
    assert tls_server.recorded() == [False]


@pytest.mark.parametrize("mode", ["require", "verify-ca", "verify-full"])
def test_a_missing_sslrootcert_is_a_config_error_naming_it(tmp_path, mode):
    with pytest.raises(ConfigError) as raised:
        _connect(_url(1, f"sslmode={mode}&sslrootcert={tmp_path / 'absent.crt'}"))
    assert "sslrootcert" in raised.value.message
    assert raised.value.status == 503


def test_an_unreadable_sslrootcert_is_a_config_error(tmp_path):
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError) as raised:
        _connect(_url(1, f"sslmode=require&sslrootcert={garbage}"))
    assert "sslrootcert" in raised.value.message


def test_a_missing_sslrootcert_answers_503_through_a_function(client, monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", _url(1, f"sslmode=verify-ca&sslrootcert={tmp_path / 'absent.crt'}"))
    response = client("token_status").get("/?user_id=alice")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "unavailable"
    assert "sslrootcert" in response.get_json()["error"]["message"]


def test_query_values_are_percent_decoded_and_plus_stays_plus():
    params = db.parse_database_url(
        "postgresql://a@h/d?sslmode=verify-ca&sslrootcert=/etc/ssl/root+ca%20v2.crt&application_name=x"
    )
    assert params.sslrootcert == "/etc/ssl/root+ca v2.crt"
    socket_params = db.parse_database_url("postgresql://a@/d?host=%2Fcloudsql%2Fp%3Ar%3Ai")
    assert socket_params.unix_sock == "/cloudsql/p:r:i/.s.PGSQL.5432"


def test_a_repeated_query_value_keeps_the_last_as_libpq_does():
    assert db.parse_database_url("postgresql://a@h/d?sslmode=disable&sslmode=require").sslmode == "require"
