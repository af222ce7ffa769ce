"""The one HMAC signer and verifier: ``sha256=<hex HMAC-SHA256 of the raw body>``.

GitHub signs its webhook deliveries this way (``X-Hub-Signature-256``) and `previews` signs what it sends to
an infra webhook the same way (``X-Previews-Signature-256``). The bytes are signed and verified exactly as
sent: never re-serialised JSON (GitHub writes ``\\u001B`` upper-case; ``json.dumps`` would not).
https://docs.github.com/webhooks/using-webhooks/validating-webhook-deliveries
"""

from __future__ import annotations

import hashlib
import hmac
import re

from pydantic import SecretStr

from previews.errors import SignatureError, ValidationError

PREFIX = "sha256="
_SIGNATURE_RE = re.compile(r"sha256=([0-9a-fA-F]{64})", re.ASCII)


def _key(secret: SecretStr | str | None) -> bytes | None:
    if secret is None:
        return None
    value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    return value.encode("utf-8") if value else None


def sign(body: bytes, secret: SecretStr | str) -> str:
    """The signature header value for ``body``: ``sha256=<64 hex digits>``."""
    key = _key(secret)
    if key is None:
        raise ValidationError("secret", "must not be empty")
    return PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(
    body: bytes,
    header: str | None,
    secret: SecretStr | str | None,
    *,
    header_name: str = "X-Hub-Signature-256",
) -> None:
    """Check a ``sha256=<hex>`` signature of the raw ``body``; raise :class:`SignatureError` if it fails.

    Fails closed: no secret, a missing or malformed header, or a wrong digest all raise. The comparison is
    constant-time over the full digest (hex case does not matter). Messages never show the secret or digest.
    """
    key = _key(secret)
    if key is None:
        raise SignatureError(f"no secret to verify {header_name} with; refusing the body")
    if header is None or not header.strip():
        raise SignatureError(f"missing {header_name} header")
    match = _SIGNATURE_RE.fullmatch(header.strip())
    if match is None:
        raise SignatureError(f"malformed {header_name} header (want sha256=<64 hex digits>)")
    expected = hmac.new(key, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode("ascii"), match.group(1).lower().encode("ascii")):
        raise SignatureError(f"{header_name} does not match the body")
