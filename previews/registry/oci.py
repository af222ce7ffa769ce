"""OCI Distribution client (httpx): tags, manifests, config blobs, delete by digest; Basic and Bearer token auth.

Follows the OCI distribution spec v1.1 and the Docker token auth spec (distribution/distribution
``docs/content/spec/auth/token.md``): pagination follows
the ``Link`` header as given (relative or absolute), manifests are read with the OCI and Docker media types, the
digest comes from ``Docker-Content-Digest`` (or is computed from the body), and a ``401`` with
``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` is answered by fetching a token from the realm.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from pydantic import SecretStr

from previews.core.names import parse_image_repository
from previews.core.retention import Backend, ImageVersion
from previews.errors import AuthError, RegistryError, RegistryNotFoundError, TransientRegistryError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_V2)
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
CREATED_LABEL = "org.opencontainers.image.created"
# The OCI "empty" descriptor: a 2-byte ``{}`` blob (image-spec v1.1 guidance for artifacts without config).
EMPTY_CONFIG = b"{}"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)="([^"]*)"', re.ASCII)
_WRITE_METHODS = frozenset({"DELETE", "PUT", "POST", "PATCH"})


def registry_url(host: str, *, insecure: bool | None = None) -> str:
    """``https://host`` (``http://`` for 127.0.0.1/localhost unless ``insecure`` says otherwise)."""
    local = host.split(":")[0] in {"127.0.0.1", "localhost", "::1"}
    plain = local if insecure is None else insecure
    return f"{'http' if plain else 'https'}://{host}"


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split ``WWW-Authenticate`` into its scheme (lower case) and parameters."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest))


def retry_after_seconds(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), or None."""
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class RegistryAuth(httpx.Auth):
    """Basic auth or the Bearer token challenge flow, whichever the registry asks for.

    Tokens are cached per access kind (read for GET/HEAD, write for PUT/DELETE) until they expire (default
    60 s, the spec's default when ``expires_in`` is absent). Credentials are sent only to the registry's own
    challenge realm, never put in URLs.
    """

    requires_response_body = True

    def __init__(self, username: str | None, password: SecretStr | None) -> None:
        self._username = username
        self._password = password
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
        query = {key: params[key] for key in ("service", "scope") if params.get(key)}
        token_request = httpx.Request("GET", params["realm"], params=query)
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


def _error(response: httpx.Response, what: str) -> Exception:
    status = response.status_code
    detail = ""
    try:
        errors = response.json().get("errors") or []
        if errors and isinstance(errors[0], dict):
            detail = f": {errors[0].get('code', '')} {errors[0].get('message', '')}".rstrip()
    except (ValueError, AttributeError):
        pass
    text = f"{what}: registry answered {status}{detail}"
    if status in (401, 403):
        return AuthError(text, status=status)
    if status == 404:
        return RegistryNotFoundError(text, status=status)
    if status == 429 or status >= 500:
        return TransientRegistryError(text, status=status, retry_after=retry_after_seconds(response.headers))
    return RegistryError(text, status=status)


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
    """A client of one OCI registry. Every method takes the repository it acts on."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: SecretStr | None = None,
        timeout: float = 30.0,
        workers: int = 8,
    ) -> None:
        self.url = url.rstrip("/")
        self.workers = workers
        self._client = httpx.Client(
            base_url=self.url,
            auth=RegistryAuth(username, password),
            timeout=timeout,
            follow_redirects=True,
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

    def _send(self, method: str, url: str | httpx.URL, what: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise TransientRegistryError(f"{what}: {type(exc).__name__} talking to {self.url}") from exc
        if response.status_code >= 400:
            raise _error(response, what)
        return response

    def tags(self, repository: str, *, page_size: int = 1000) -> list[str]:
        """Every tag of ``repository``, following ``Link: <...>; rel="next"`` as given."""
        repo = parse_image_repository(repository, field="repository")
        url: str | httpx.URL = f"/v2/{repo}/tags/list"
        params: dict[str, Any] | None = {"n": page_size}
        found: list[str] = []
        seen: set[str] = set()
        while True:
            response = self._send("GET", url, f"list tags of {repo}", params=params)
            found.extend(str(t) for t in response.json().get("tags") or [])
            next_link = response.links.get("next", {}).get("url")
            if not next_link:
                return found
            url = response.url.join(next_link)
            params = None
            if str(url) in seen:
                raise RegistryError(f"list tags of {repo}: pagination loops at {url.path}")
            seen.add(str(url))

    def manifest(self, repository: str, reference: str) -> Manifest:
        """The manifest of a tag or digest, asking for every supported media type."""
        repo = parse_image_repository(repository, field="repository")
        response = self._send(
            "GET",
            f"/v2/{repo}/manifests/{reference}",
            f"read manifest {repo}:{reference}",
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
        )
        raw = response.content
        digest = response.headers.get("docker-content-digest") or "sha256:" + hashlib.sha256(raw).hexdigest()
        body = json.loads(raw)
        media_type = response.headers.get("content-type", "").split(";")[0].strip() or str(
            body.get("mediaType", "")
        )
        if body.get("mediaType"):
            media_type = str(body["mediaType"])
        return Manifest(digest, media_type, body)

    def blob_json(self, repository: str, digest: str) -> dict[str, Any]:
        """A JSON blob (an image config), cached by digest."""
        cached = self._configs.get(digest)
        if cached is not None:
            return cached
        repo = parse_image_repository(repository, field="repository")
        response = self._send("GET", f"/v2/{repo}/blobs/{digest}", f"read blob {repo}@{digest[:19]}")
        data = response.json()
        if not isinstance(data, dict):
            raise RegistryError(f"read blob {repo}@{digest[:19]}: not a JSON object")
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
            self._send("HEAD", f"/v2/{repo}/blobs/{digest}", f"check blob {repo}@{digest[:19]}")
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
        """Every tagged manifest of ``repository`` grouped by digest, with created time and children."""
        tags = self.tags(repository)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            manifests = list(pool.map(lambda tag: self.manifest(repository, tag), tags))
            by_digest: dict[str, tuple[Manifest, list[str]]] = {}
            for tag, manifest in zip(tags, manifests, strict=True):
                by_digest.setdefault(manifest.digest, (manifest, []))[1].append(tag)
            entries = list(by_digest.values())
            times = list(pool.map(lambda entry: self.created(repository, entry[0]), entries))
        return [
            ImageVersion(m.digest, tuple(sorted(t)), created, m.children)
            for (m, t), created in zip(entries, times, strict=True)
        ]

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
        return response.headers.get("docker-content-digest") or "sha256:" + hashlib.sha256(body).hexdigest()

    def ensure_blob(self, repository: str, data: bytes) -> str:
        """Upload a small blob (monolithic POST then PUT) unless it exists; returns its digest."""
        repo = parse_image_repository(repository, field="repository")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.blob_exists(repo, digest):
            return digest
        started = self._send("POST", f"/v2/{repo}/blobs/uploads/", f"start upload to {repo}")
        location = started.headers.get("location")
        if not location:
            raise RegistryError(f"start upload to {repo}: no Location header")
        upload = started.url.join(location)
        self._send(
            "PUT",
            upload.copy_merge_params({"digest": digest}),
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


class OciRepository:
    """One repository of an OCI registry, as a cleanup target."""

    backend = Backend.OCI
    supports_untag = True

    def __init__(self, registry: OciRegistry, repository: str) -> None:
        self.registry = registry
        self.repository = parse_image_repository(repository, field="repository")

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
        """The children of an index; empty for an image or a manifest that is gone."""
        try:
            return self.registry.manifest(self.repository, digest).children
        except RegistryNotFoundError:
            return ()

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
