"""OCI Distribution answers, sans I/O: status, headers and body in; a manifest, tags or a typed error out.

The one decoder of the registry family (OCI distribution spec v1.1, Docker token auth),
used by :mod:`previews.registry.oci`, which does the I/O:

- 401/403 -> :class:`AuthError`; 404 -> :class:`RegistryNotFoundError`; 408, 429 and 5xx ->
  :class:`TransientRegistryError` with ``retry_after`` when the registry said how long to wait; anything
  else (other 4xx, an unfollowed redirect) -> :class:`RegistryError`. The message carries the spec's first
  error ``code`` and ``message`` and never a credential.
- a manifest's digest is ``Docker-Content-Digest`` (or the body's sha256), its media type the body's
  ``mediaType`` (else ``Content-Type``); a blob read by digest must hash to that digest.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from previews.errors import (
    AuthError,
    PreviewsError,
    RegistryError,
    RegistryNotFoundError,
    TransientRegistryError,
)
from previews.http import header, is_transient, retry_after

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_V2)
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)="([^"]*)"', re.ASCII)


def parse_challenge(value: str) -> tuple[str, dict[str, str]]:
    """Split ``WWW-Authenticate`` into its scheme (lower case) and parameters."""
    scheme, _, rest = value.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest))


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest as served: its digest, media type and parsed body."""

    digest: str
    media_type: str
    body: dict[str, Any]

    @property
    def is_index(self) -> bool:
        """True for an OCI image index or a Docker manifest list."""
        return self.media_type in INDEX_TYPES

    @property
    def children(self) -> tuple[str, ...]:
        """Digests of the manifests an index references (empty for an image manifest)."""
        if not self.is_index:
            return ()
        return tuple(str(m["digest"]) for m in self.body.get("manifests") or [] if isinstance(m, dict))

    @property
    def config_digest(self) -> str | None:
        """Digest of the image config blob, or None for an index."""
        config = self.body.get("config")
        return str(config["digest"]) if isinstance(config, dict) and "digest" in config else None


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def error_for(
    status: int, headers: Mapping[str, str], body: bytes, *, what: str, now: float
) -> PreviewsError:
    """The typed error for a registry answer that is not 2xx. ``now`` is the wall clock (epoch seconds)."""
    detail = ""
    try:
        errors = json.loads(body).get("errors") or []
        if errors and isinstance(errors[0], dict):
            detail = f": {errors[0].get('code', '')} {errors[0].get('message', '')}".rstrip()
    except (ValueError, AttributeError, UnicodeDecodeError):
        pass
    text = f"{what}: registry answered {status}{detail}"
    if status in (401, 403):
        return AuthError(text, status=status)
    if status == 404:
        return RegistryNotFoundError(text, status=status)
    if is_transient(status):
        return TransientRegistryError(text, status=status, retry_after=retry_after(headers, now=now))
    return RegistryError(text, status=status)


def decode_json_object(body: bytes, *, what: str) -> dict[str, Any]:
    """A 2xx body that must be a JSON object (a manifest, a tag list, a config blob)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{what}: the registry's answer is not JSON") from exc
    if not isinstance(data, dict):
        raise RegistryError(f"{what}: the registry's answer is not a JSON object")
    return data


def decode_manifest(headers: Mapping[str, str], body: bytes, *, what: str) -> Manifest:
    """The manifest in a 2xx answer to ``GET /v2/<name>/manifests/<reference>``."""
    data = decode_json_object(body, what=what)
    digest = header(headers, "docker-content-digest") or sha256_digest(body)
    media_type = str(data.get("mediaType") or "") or (
        (header(headers, "content-type") or "").split(";")[0].strip()
    )
    return Manifest(digest, media_type, data)


def decode_tags(body: bytes, *, what: str) -> list[str]:
    """The tags of one ``GET /v2/<name>/tags/list`` page."""
    return [str(tag) for tag in decode_json_object(body, what=what).get("tags") or []]


def check_blob(body: bytes, digest: str, *, what: str) -> bytes:
    """``body`` when it hashes to ``digest`` (a blob served from another origin must prove itself)."""
    if digest.startswith("sha256:") and sha256_digest(body) != digest:
        raise RegistryError(f"{what}: the blob served does not match its digest")
    return body
