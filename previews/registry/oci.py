"""OCI Distribution client (httpx): tags, manifests, config blobs, delete by digest; Basic and Bearer token auth.

Follows the distribution spec v1.1 and the Docker token auth spec
(distribution/distribution ``docs/content/spec/auth/token.md``); answers are
decoded by :mod:`previews.registry.sansio`. Credentials go only to the registry's own origin:

- pagination ``Link`` (relative or absolute), the blob upload ``Location`` and redirects are followed only
  on that origin; a foreign one raises :class:`CrossOriginError` naming it. The one exception is a blob
  read (``GET``/``HEAD /v2/<name>/blobs/<digest>``), which registries commonly redirect to a storage host:
  it is followed without any credentials, and the bytes must hash to the digest;
- a ``401`` with ``WWW-Authenticate: Bearer realm=...`` is answered by fetching a token from the realm only
  when the realm is ``https`` or on the registry's own origin (the username and password go there);
- a tag list stops after ``max_pages`` pages with an error (a partial listing could make a kept tag's
  manifest look unreferenced); a link already read ends it.

One attempt per call: failures worth retrying raise :class:`TransientRegistryError` for the caller's retry.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

import httpx
from pydantic import SecretStr

from previews.core.names import parse_image_repository
from previews.core.retention import Backend, ImageVersion
from previews.errors import (
    AuthError,
    PreviewsError,
    RegistryError,
    RegistryNotFoundError,
    TransientRegistryError,
    ValidationError,
)
from previews.http import MAX_REDIRECTS, PageChain, check_origin, is_https, origin, redirect_location
from previews.redact import redact_url
from previews.registry.sansio import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Manifest,
    check_blob,
    decode_json_object,
    decode_manifest,
    decode_tags,
    error_for,
    parse_challenge,
    sha256_digest,
)

__all__ = [
    "CREATED_LABEL",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Manifest",
    "OciRegistry",
    "OciRepository",
    "RegistryAuth",
    "parse_challenge",
    "registry_url",
]

CREATED_LABEL = "org.opencontainers.image.created"
# The OCI "empty" descriptor: a 2-byte ``{}`` blob (image-spec v1.1 guidance for artifacts without config).
EMPTY_CONFIG = b"{}"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
MAX_PAGES = 1000
_WRITE_METHODS = frozenset({"DELETE", "PUT", "POST", "PATCH"})
_READ_METHODS = frozenset({"GET", "HEAD"})


def registry_url(host: str, *, insecure: bool | None = None) -> str:
    """``https://host`` (``http://`` for 127.0.0.1/localhost unless ``insecure`` says otherwise)."""
    local = host.split(":")[0] in {"127.0.0.1", "localhost", "::1"}
    plain = local if insecure is None else insecure
    return f"{'http' if plain else 'https'}://{host}"


class RegistryAuth(httpx.Auth):
    """Basic auth or the Bearer token challenge flow, whichever the registry asks for.

    Tokens are cached per access kind (read for GET/HEAD, write for PUT/DELETE) until they expire (default
    60 s, the spec's default when ``expires_in`` is absent). The username and password go to a token realm
    only when it is ``https`` or on ``registry_origin``; another realm raises :class:`CrossOriginError`.
    Credentials are never put in URLs.
    """

    requires_response_body = True

    def __init__(self, username: str | None, password: SecretStr | None, *, registry_origin: str) -> None:
        self._username = username
        self._password = password
        self._origin = registry_origin
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}
        self._basic = False

    def _basic_header(self) -> str | None:
        if not self._username or self._password is None:
            return None
        pair = f"{self._username}:{self._password.get_secret_value()}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Send the request, answering one Basic or Bearer challenge."""
        kind = "write" if request.method in _WRITE_METHODS else "read"
        with self._lock:
            cached = self._tokens.get(kind)
            basic = self._basic
        if cached and cached[1] > time.monotonic():
            request.headers["Authorization"] = f"Bearer {cached[0]}"
        elif basic and (header := self._basic_header()):
            request.headers["Authorization"] = header
        response = yield request
        if response.status_code != 401:
            return
        scheme, params = parse_challenge(response.headers.get("www-authenticate", ""))
        if scheme == "basic":
            header = self._basic_header()
            if header is None:
                return
            with self._lock:
                self._basic = True
            request.headers["Authorization"] = header
            yield request
            return
        if scheme != "bearer" or not params.get("realm"):
            return
        realm = urljoin(str(request.url), params["realm"])
        if not is_https(realm):
            check_origin(realm, self._origin, what=f"token realm of {self._origin}")
        query = {key: params[key] for key in ("service", "scope") if params.get(key)}
        token_request = httpx.Request("GET", realm, params=query)
        if header := self._basic_header():
            token_request.headers["Authorization"] = header
        token_response = yield token_request
        if token_response.status_code != 200:
            return
        try:
            data = token_response.json()
            token = str(data.get("token") or data.get("access_token") or "")
            lifetime = float(data.get("expires_in") or 60)
        except (ValueError, AttributeError):
            return
        if not token:
            return
        with self._lock:
            self._tokens[kind] = (token, time.monotonic() + max(lifetime - 5, 1))
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    # Go writes nanoseconds; Python's fromisoformat takes at most microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class OciRegistry:
    """A client of one OCI registry. Every method takes the repository it acts on.

    ``ca_bundle`` is a PEM file of extra trusted certificates (a registry or token realm with a private CA).
    """

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: SecretStr | None = None,
        timeout: float = 30.0,
        workers: int = 8,
        max_pages: int = MAX_PAGES,
        ca_bundle: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.origin = origin(self.url)
        self.workers = workers
        self.max_pages = max_pages
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
        self._client = httpx.Client(
            auth=RegistryAuth(username, password, registry_origin=self.origin),
            timeout=timeout,
            follow_redirects=False,
            verify=verify,
            limits=httpx.Limits(max_connections=max(workers, 1) * 2),
        )
        self._configs: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> OciRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def _send(
        self, method: str, url: str, what: str, *, blob: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One request on the registry's origin, following its redirects; returns the 2xx answer.

        ``blob`` (a digest) marks a blob read, the one request that may be redirected to another origin:
        that hop and any after it go without credentials.
        """
        target = check_origin(urljoin(self.url + "/", url), self.origin, what=what)
        anonymous = False
        for _hop in range(MAX_REDIRECTS + 1):
            try:
                auth = None if anonymous else httpx.USE_CLIENT_DEFAULT
                response = self._client.request(method, target, auth=auth, **kwargs)
            except httpx.TransportError as exc:
                raise TransientRegistryError(
                    f"{what}: {type(exc).__name__} talking to {redact_url(self.url)}"
                ) from exc
            location = redirect_location(response.status_code, response.headers, target)
            if location is None:
                break
            if blob is not None and method in _READ_METHODS and origin(location) != self.origin:
                anonymous = True
            elif not anonymous:
                check_origin(location, self.origin, what=what)
            target = location
            if response.status_code == 303:
                method, kwargs = "GET", {}
        if not response.is_success:
            raise error_for(
                response.status_code, response.headers, response.content, what=what, now=time.time()
            )
        if anonymous and method == "GET" and blob is not None:
            check_blob(response.content, blob, what=what)
        return response

    def tags(self, repository: str, *, page_size: int = 1000) -> list[str]:
        """Every tag of ``repository``, following ``Link: <...>; rel="next"`` on the registry's origin."""
        repo = parse_image_repository(repository, field="repository")
        what = f"list tags of {repo}"
        chain = PageChain(allowed=self.origin, what=what, max_pages=self.max_pages)
        url: str | None = f"/v2/{repo}/tags/list?n={page_size}"
        found: list[str] = []
        while url is not None:
            response = self._send("GET", url, what)
            found.extend(decode_tags(response.content, what=what))
            url = chain.follow(str(response.url), response.headers)
        if chain.truncated:
            raise RegistryError(f"{what}: more than {self.max_pages} pages; refusing a partial tag list")
        return found

    def manifest(self, repository: str, reference: str) -> Manifest:
        """The manifest of a tag or digest, asking for every supported media type."""
        repo = parse_image_repository(repository, field="repository")
        what = f"read manifest {repo}:{reference}"
        response = self._send(
            "GET", f"/v2/{repo}/manifests/{reference}", what, headers={"Accept": ", ".join(MANIFEST_TYPES)}
        )
        return decode_manifest(response.headers, response.content, what=what)

    def blob_json(self, repository: str, digest: str) -> dict[str, Any]:
        """A JSON blob (an image config), cached by digest."""
        cached = self._configs.get(digest)
        if cached is not None:
            return cached
        repo = parse_image_repository(repository, field="repository")
        what = f"read blob {repo}@{digest[:19]}"
        response = self._send("GET", f"/v2/{repo}/blobs/{digest}", what, blob=digest)
        data = decode_json_object(response.content, what=what)
        self._configs[digest] = data
        return data

    def digest(self, repository: str, reference: str) -> str:
        """The digest a tag points at now (``HEAD`` with the manifest media types)."""
        repo = parse_image_repository(repository, field="repository")
        response = self._send(
            "HEAD",
            f"/v2/{repo}/manifests/{reference}",
            f"resolve {repo}:{reference}",
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
        )
        found = response.headers.get("docker-content-digest")
        return found if found else self.manifest(repository, reference).digest

    def blob_exists(self, repository: str, digest: str) -> bool:
        """True when the registry still serves the blob (``HEAD /v2/<name>/blobs/<digest>``)."""
        repo = parse_image_repository(repository, field="repository")
        try:
            self._send("HEAD", f"/v2/{repo}/blobs/{digest}", f"check blob {repo}@{digest[:19]}", blob=digest)
        except RegistryNotFoundError:
            return False
        return True

    def image_config(self, repository: str, reference: str) -> dict[str, Any]:
        """The config blob of an image (the first child's, for an index)."""
        manifest = self.manifest(repository, reference)
        if manifest.is_index:
            if not manifest.children:
                return {}
            manifest = self.manifest(repository, manifest.children[0])
        config = manifest.config_digest
        return self.blob_json(repository, config) if config else {}

    def manifest_labels(self, repository: str, reference: str) -> dict[str, str]:
        """The image's labels (``config.Labels`` of its config blob)."""
        config = self.image_config(repository, reference).get("config") or {}
        labels = config.get("Labels") if isinstance(config, dict) else None
        return {str(k): str(v) for k, v in (labels or {}).items()}

    def created(self, repository: str, manifest: Manifest) -> datetime | None:
        """When an image was built: the config's ``created``, else the ``org.opencontainers.image.created``
        label or annotation; for an index, its annotation or its first child's time."""
        annotations = manifest.body.get("annotations") or {}
        if manifest.is_index:
            stamp = _parse_time(annotations.get(CREATED_LABEL))
            if stamp is not None or not manifest.children:
                return stamp
            return self.created(repository, self.manifest(repository, manifest.children[0]))
        config_digest = manifest.config_digest
        config = self.blob_json(repository, config_digest) if config_digest else {}
        labels = (config.get("config") or {}).get("Labels") or {}
        for value in (config.get("created"), labels.get(CREATED_LABEL), annotations.get(CREATED_LABEL)):
            stamp = _parse_time(value)
            if stamp is not None:
                return stamp
        return None

    def list_versions(self, repository: str) -> list[ImageVersion]:
        """Every tagged manifest of ``repository`` grouped by digest, with created time and children.

        A tag whose manifest cannot be read (but whose digest can) is listed with ``unreadable`` set, so the
        planner keeps it and everything it could reference.
        """
        tags = self.tags(repository)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            reads = list(pool.map(lambda tag: self._read(repository, tag), tags))
            by_digest: dict[str, tuple[Manifest | str, list[str]]] = {}
            for tag, read in zip(tags, reads, strict=True):
                key = read.digest if isinstance(read, Manifest) else read[0]
                by_digest.setdefault(key, (read if isinstance(read, Manifest) else read[1], []))[1].append(
                    tag
                )
            entries = list(by_digest.items())
            times = list(
                pool.map(
                    lambda entry: (
                        self.created(repository, entry[1][0]) if isinstance(entry[1][0], Manifest) else None
                    ),
                    entries,
                )
            )
        return [
            ImageVersion(digest, tuple(sorted(t)), created, m.children)
            if isinstance(m, Manifest)
            else ImageVersion(digest, tuple(sorted(t)), None, (), unreadable=m)
            for (digest, (m, t)), created in zip(entries, times, strict=True)
        ]

    def _read(self, repository: str, tag: str) -> Manifest | tuple[str, str]:
        """The tag's manifest, or (its digest, why the manifest could not be read)."""
        try:
            return self.manifest(repository, tag)
        except AuthError:
            raise
        except PreviewsError as exc:
            try:
                digest = self.digest(repository, tag)
            except PreviewsError:
                raise exc from None
            return digest, str(exc)

    def delete_manifest(self, repository: str, digest: str) -> None:
        """``DELETE /v2/<name>/manifests/<digest>``: removes the manifest and every tag pointing at it."""
        repo = parse_image_repository(repository, field="repository")
        if not digest.startswith("sha256:"):
            raise RegistryError(
                f"delete {repo}: refusing to delete by anything but a digest ({digest[:40]!r})"
            )
        self._send("DELETE", f"/v2/{repo}/manifests/{digest}", f"delete {repo}@{digest}")

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        """Upload a manifest under a tag or digest; returns its digest."""
        repo = parse_image_repository(repository, field="repository")
        response = self._send(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            f"put manifest {repo}:{reference}",
            content=body,
            headers={"Content-Type": media_type},
        )
        return response.headers.get("docker-content-digest") or sha256_digest(body)

    def ensure_blob(self, repository: str, data: bytes) -> str:
        """Upload a small blob (monolithic POST then PUT) unless it exists; returns its digest."""
        repo = parse_image_repository(repository, field="repository")
        digest = sha256_digest(data)
        if self.blob_exists(repo, digest):
            return digest
        started = self._send("POST", f"/v2/{repo}/blobs/uploads/", f"start upload to {repo}")
        location = started.headers.get("location")
        if not location:
            raise RegistryError(f"start upload to {repo}: no Location header")
        upload = httpx.URL(urljoin(str(started.url), location)).copy_merge_params({"digest": digest})
        self._send(
            "PUT",
            str(upload),
            f"upload blob to {repo}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return digest

    def untag(self, repository: str, tag: str) -> None:
        """Remove one tag and keep the manifest it pointed at.

        Distribution 2.x cannot delete a tag, so the tag is first moved to a unique throw-away manifest
        (the empty config, no layers) and that manifest is deleted by digest: the shared digest is untouched.
        """
        config = self.ensure_blob(repository, EMPTY_CONFIG)
        dummy = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": config, "size": len(EMPTY_CONFIG)},
            "layers": [],
            "annotations": {"io.previews.untag": str(uuid.uuid4())},
        }
        raw = json.dumps(dummy, separators=(",", ":")).encode()
        digest = self.put_manifest(repository, tag, raw, OCI_MANIFEST)
        self.delete_manifest(repository, digest)


MAX_CONCURRENCY = 32


class OciRepository:
    """One repository of an OCI registry, as a cleanup target."""

    backend = Backend.OCI
    supports_untag = True

    def __init__(self, registry: OciRegistry, repository: str, *, concurrency: int = 1) -> None:
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ValidationError("cleanup_concurrency", f"must be between 1 and {MAX_CONCURRENCY}")
        self.registry = registry
        self.repository = parse_image_repository(repository, field="repository")
        self.concurrency = concurrency  # deletions a cleanup runs at once

    def list_versions(self) -> list[ImageVersion]:
        """Every tagged manifest of the repository."""
        return self.registry.list_versions(self.repository)

    def delete_manifest(self, digest: str) -> None:
        """Delete a manifest by digest."""
        self.registry.delete_manifest(self.repository, digest)

    def delete_version(self, version_id: int) -> None:
        """Not available on an OCI registry."""
        raise RegistryError(f"an OCI registry has no package version {version_id}")

    def untag(self, tag: str) -> None:
        """Remove one tag, keeping its manifest."""
        self.registry.untag(self.repository, tag)

    def current_tags(self, skip: frozenset[str]) -> dict[str, str]:
        """Tag -> digest now, for every tag not in ``skip`` (a tag deleted meanwhile is left out)."""
        names = [t for t in self.registry.tags(self.repository) if t not in skip]

        def resolve(tag: str) -> tuple[str, str | None]:
            try:
                return tag, self.registry.digest(self.repository, tag)
            except RegistryNotFoundError:
                return tag, None

        with ThreadPoolExecutor(max_workers=self.registry.workers) as pool:
            return {tag: digest for tag, digest in pool.map(resolve, names) if digest}

    def children_of(self, digest: str) -> tuple[str, ...]:
        """The children of an index (empty for an image); raises when the manifest cannot be read."""
        return self.registry.manifest(self.repository, digest).children

    def close(self) -> None:
        """Close the registry client."""
        self.registry.close()

    def exists(self, references: Iterable[str]) -> dict[str, bool]:
        """Whether each tag or digest still resolves to a manifest."""
        result: dict[str, bool] = {}
        for reference in references:
            try:
                self.registry.manifest(self.repository, reference)
                result[reference] = True
            except RegistryNotFoundError:
                result[reference] = False
        return result
