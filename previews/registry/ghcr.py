"""GitHub Packages (GHCR) container package versions: list and delete by numeric version id.

GHCR rejects the registry's ``DELETE /v2/.../manifests/<digest>`` (405), so deletions go through the REST API.
A version is one manifest (``name`` is its digest) and carries all its tags (``metadata.container.tags``);
GitHub refuses to delete the last tagged version of a package (400), which is reported, not retried.
Pagination follows the ``Link`` header verbatim (GitHub switches to ``/organizations/{id}/...`` URLs).
Deletes are paced below GitHub's secondary limit (~180 per minute by default); ``403``/``429`` rate-limit
answers become :class:`TransientGitHubError` with ``retry_after`` from ``retry-after`` or ``x-ratelimit-reset``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from previews.core.names import parse_image_repository
from previews.core.retention import Backend, ImageVersion
from previews.errors import (
    AuthError,
    GitHubError,
    GitHubNotFoundError,
    RegistryError,
    RegistryNotFoundError,
    TransientGitHubError,
    ValidationError,
)
from previews.registry.oci import OciRegistry, retry_after_seconds

API_VERSION = "2022-11-28"
OwnerKind = Literal["org", "user"]
DEFAULT_SECONDARY_WAIT = 60.0


def split_image(image: str) -> tuple[str, str]:
    """``owner/name[/more]`` (the image path on ghcr.io) -> (owner, package name ``name[/more]``)."""
    text = parse_image_repository(image, field="image")
    owner, sep, package = text.partition("/")
    if not sep:
        raise ValidationError("image", f"{text!r} has no owner: expected owner/package on ghcr.io")
    return owner, package


def _rate_limit_wait(response: httpx.Response, now: float) -> float | None:
    """Seconds to wait when a 403/429 is a rate limit, else None (a 403 may be a plain permission error)."""
    headers = response.headers
    after = retry_after_seconds(headers, now=now)
    if after is not None:
        return after
    if headers.get("x-ratelimit-remaining") == "0" and headers.get("x-ratelimit-reset", "").isdigit():
        return max(0.0, float(headers["x-ratelimit-reset"]) - now)
    try:
        message = str(response.json().get("message", ""))
    except (ValueError, AttributeError):
        message = ""
    if "rate limit" in message.lower() or response.status_code == 429:
        return DEFAULT_SECONDARY_WAIT
    return None


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", ""))[:300]
    except (ValueError, AttributeError):
        return response.text[:300]


class GhcrPackage:
    """One container package on GHCR (org- or user-owned) as a cleanup target."""

    backend = Backend.GHCR
    supports_untag = False

    def __init__(
        self,
        *,
        owner: str,
        package: str,
        token: SecretStr,
        owner_kind: OwnerKind = "org",
        api_url: str = "https://api.github.com",
        deletes_per_minute: float = 180.0,
        timeout: float = 30.0,
        manifests: OciRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not token.get_secret_value():
            raise ValidationError(
                "PREVIEWS_REGISTRY_TOKEN", "a GitHub token is needed to manage GHCR packages"
            )
        if deletes_per_minute <= 0:
            raise ValidationError("cleanup_deletes_per_minute", "must be positive")
        self.owner = owner
        self.package = package
        self.owner_kind: OwnerKind = owner_kind
        self.manifests = manifests
        self._interval = 60.0 / deletes_per_minute
        self._clock, self._wall_clock, self._sleep = clock, wall_clock, sleep
        self._last_delete: float | None = None
        self._lock = threading.Lock()
        self._token = token
        self._http = httpx.Client(
            base_url=api_url.rstrip("/"),
            timeout=timeout,
            headers={"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION},
        )

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()
        if self.manifests is not None:
            self.manifests.close()

    def __enter__(self) -> GhcrPackage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _base(self) -> str:
        owners = "orgs" if self.owner_kind == "org" else "users"
        return f"/{owners}/{quote(self.owner, safe='')}/packages/container/{quote(self.package, safe='')}"

    def _send(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
        try:
            response = self._http.request(method, url, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise TransientGitHubError(f"{what}: {type(exc).__name__} talking to GitHub") from exc
        status = response.status_code
        if status < 400:
            return response
        text = f"{what}: GitHub answered {status}: {_message(response)}"
        if status in (403, 429):
            wait = _rate_limit_wait(response, self._wall_clock())
            if wait is not None:
                raise TransientGitHubError(text, status=status, retry_after=wait)
        if status in (401, 403):
            raise AuthError(text, status=status)
        if status == 404:
            raise GitHubNotFoundError(text, status=status)
        if status >= 500:
            raise TransientGitHubError(text, status=status, retry_after=retry_after_seconds(response.headers))
        raise GitHubError(text, status=status)

    def list_versions(self) -> list[ImageVersion]:
        """Every active version of the package, following ``Link`` pages as given."""
        versions = self._list()
        return self._with_children(versions) if self.manifests is not None else versions

    def current_tags(self, skip: frozenset[str]) -> dict[str, str]:
        """Tag -> version digest now, for every tag not in ``skip``."""
        return {tag: v.digest for v in self._list() for tag in v.tags if tag not in skip}

    def children_of(self, digest: str) -> tuple[str, ...]:
        """The children of an index read from ghcr.io (empty without a manifest reader)."""
        if self.manifests is None:
            return ()
        try:
            return self.manifests.manifest(f"{self.owner}/{self.package}", digest).children
        except RegistryNotFoundError:
            return ()

    def _list(self) -> list[ImageVersion]:
        url: str = f"{self._base}/versions"
        params: dict[str, Any] | None = {"per_page": 100, "state": "active"}
        versions: list[ImageVersion] = []
        seen: set[str] = set()
        while True:
            response = self._send("GET", url, f"list versions of {self.owner}/{self.package}", params=params)
            items = response.json()
            if not isinstance(items, list):
                raise GitHubError(f"list versions of {self.owner}/{self.package}: expected a JSON list")
            versions.extend(self._version(item) for item in items)
            next_url = response.links.get("next", {}).get("url")
            if not next_url:
                break
            if next_url in seen:
                raise GitHubError(f"list versions of {self.owner}/{self.package}: pagination loops")
            seen.add(next_url)
            url, params = next_url, None
        return versions

    @staticmethod
    def _version(item: object) -> ImageVersion:
        try:
            if not isinstance(item, dict):
                raise TypeError("a version is not a JSON object")
            container = (item.get("metadata") or {}).get("container") or {}
            tags = tuple(str(t) for t in container.get("tags") or [])
            stamp = item.get("updated_at") or item.get("created_at")
            created = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")) if stamp else None
            return ImageVersion(str(item["name"]), tags, created, (), int(item["id"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise GitHubError(f"unexpected package version shape from GitHub: {str(exc)[:200]}") from exc

    def _with_children(self, versions: list[ImageVersion]) -> list[ImageVersion]:
        """Read each tagged manifest from ghcr.io to learn an index's children (GitHub's API does not say)."""
        assert self.manifests is not None
        repository = f"{self.owner}/{self.package}"
        result = []
        for version in versions:
            children: tuple[str, ...] = ()
            if version.tags:
                try:
                    children = self.manifests.manifest(repository, version.digest).children
                except RegistryError:
                    children = ()
            result.append(
                ImageVersion(version.digest, version.tags, version.created, children, version.version_id)
            )
        return result

    def _pace(self) -> None:
        with self._lock:
            now = self._clock()
            if self._last_delete is not None:
                wait = self._last_delete + self._interval - now
                if wait > 0:
                    self._sleep(wait)
                    now = self._clock()
            self._last_delete = now

    def delete_version(self, version_id: int) -> None:
        """``DELETE .../versions/{id}``, paced to stay under the deletes-per-minute budget."""
        if isinstance(version_id, bool) or not isinstance(version_id, int) or version_id <= 0:
            raise ValidationError(
                "version_id", "must be a positive integer (the version's id, not its digest)"
            )
        self._pace()
        self._send("DELETE", f"{self._base}/versions/{version_id}", f"delete version {version_id}")

    def delete_manifest(self, digest: str) -> None:
        """Not possible on GHCR (the registry answers 405): delete the package version instead."""
        raise RegistryError(f"GHCR cannot delete {digest} by digest; delete its package version", status=405)

    def untag(self, tag: str) -> None:
        """Not possible through the GitHub Packages API."""
        raise RegistryError(f"GHCR cannot remove the single tag {tag!r} from a version")
