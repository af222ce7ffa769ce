"""The Bearer token challenge flow against the real registry configured for token auth.

The registry (Debian docker-registry 2.8) trusts a self-signed certificate; a small token server on 127.0.0.1
checks Basic credentials and issues RS256 JWTs carrying that certificate in ``x5c`` (docker token spec,
distribution/distribution ``docs/content/spec/auth/token.md``). The token server is another origin than the
registry, so it serves https (with the same certificate, which the client is given as its CA bundle): the
client sends the registry password only to an https realm or to the registry's own origin.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import shutil
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from previews.errors import AuthError, RegistryNotFoundError
from previews.registry.oci import OciRegistry
from tests.support import services

SERVICE = "previews-token-registry"
ISSUER = "previews-test-issuer"
USER, PASSWORD = "robot", "t0ken-pw"


class _TokenHandler(BaseHTTPRequestHandler):
    key: ClassVar[rsa.RSAPrivateKey]
    cert_der: ClassVar[bytes]
    issued: ClassVar[list[dict[str, str]]] = []

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
            return
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        type(self).issued.append(query)
        access = []
        scope = query.get("scope", "")
        if scope:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = datetime.now(UTC)
        claims = {
            "iss": ISSUER,
            "sub": USER,
            "aud": query.get("service", ""),
            "exp": now + timedelta(minutes=5),
            "nbf": now - timedelta(seconds=30),
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        headers = {"x5c": [base64.b64encode(type(self).cert_der).decode()]}
        token = jwt.encode(claims, type(self).key, algorithm="RS256", headers=headers)
        self._send(200, {"token": token, "expires_in": 300})

    def _send(self, status: int, body: dict[str, object]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@dataclass(frozen=True)
class TokenRegistry:
    """The registry's URL and the CA bundle that makes its https token realm trusted."""

    url: str
    ca_bundle: str

    def client(self, password: str) -> OciRegistry:
        return OciRegistry(self.url, username=USER, password=SecretStr(password), ca_bundle=self.ca_bundle)


@pytest.fixture(scope="module")
def token_registry(session_dir: Path) -> Iterator[TokenRegistry]:
    workdir = session_dir / f"token-registry-{uuid.uuid4().hex[:6]}"
    workdir.mkdir()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "previews test token issuer")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    (workdir / "root.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (workdir / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    _TokenHandler.key = key
    _TokenHandler.cert_der = cert.public_bytes(serialization.Encoding.DER)
    _TokenHandler.issued = []
    tokens = ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(workdir / "root.pem", workdir / "key.pem")
    tokens.socket = tls.wrap_socket(tokens.socket, server_side=True)
    thread = threading.Thread(target=tokens.serve_forever, daemon=True)
    thread.start()
    port = services.free_port()
    (workdir / "config.yml").write_text(
        f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {workdir / "data"}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
auth:
  token:
    realm: https://127.0.0.1:{tokens.server_address[1]}/token
    service: {SERVICE}
    issuer: {ISSUER}
    rootcertbundle: {workdir / "root.pem"}
"""
    )
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    log = workdir / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "serve", str(workdir / "config.yml")], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        services.wait_http(f"http://127.0.0.1:{port}/v2/", timeout=20, proc=proc, log=log)
        yield TokenRegistry(f"http://127.0.0.1:{port}", str(workdir / "root.pem"))
    finally:
        services.stop(proc)
        tokens.shutdown()
        tokens.server_close()


def test_bearer_flow_reads_writes_and_deletes(token_registry: TokenRegistry) -> None:
    repo = "cleanuptest/token-auth"
    with token_registry.client(PASSWORD) as oci:
        config = oci.ensure_blob(repo, json.dumps({"created": "2026-11-28T10:00:00.123456789Z"}).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 45},
            "layers": [],
        }
        raw = json.dumps(manifest).encode()
        digest = oci.put_manifest(repo, "pr-1-abcdef0", raw, "application/vnd.oci.image.manifest.v1+json")
        versions = oci.list_versions(repo)
        assert [(v.digest, v.tags) for v in versions] == [(digest, ("pr-1-abcdef0",))]
        assert versions[0].created == datetime(2026, 11, 28, 10, 0, 0, 123456, tzinfo=UTC)
        oci.delete_manifest(repo, digest)
        with pytest.raises(RegistryNotFoundError):
            oci.manifest(repo, digest)
    scopes = [q.get("scope") for q in _TokenHandler.issued]
    assert all(q.get("service") == SERVICE for q in _TokenHandler.issued)
    assert f"repository:{repo}:pull" in scopes
    assert any(s and s.startswith(f"repository:{repo}:") and "delete" in s for s in scopes)
    # Tokens are cached: far fewer token requests than registry requests.
    assert len(scopes) <= 5


def test_bearer_flow_with_wrong_password_is_an_auth_error(token_registry: TokenRegistry) -> None:
    started = time.monotonic()
    with (
        token_registry.client("nope") as oci,
        pytest.raises(AuthError) as caught,
    ):
        oci.tags("cleanuptest/token-auth")
    assert "nope" not in str(caught.value)
    assert time.monotonic() - started < 10
