"""GitHub Packages (GHCR) container package versions: list and delete by numeric version id.

GHCR rejects the registry's ``DELETE /v2/.../manifests/<digest>`` (405), so deletions go through the REST API,
spoken by :class:`~previews.github.client.GitHubClient` (one attempt per call, the GitHub decoder, the
``Link`` chain kept on GitHub's origin). A version is one manifest (``name`` is its digest) and carries all
its tags (``metadata.container.tags``); GitHub refuses to delete the last tagged version of a package (400),
which is reported, not retried. Deletes are paced below GitHub's secondary limit (~180 per minute by
default); a rate-limit answer raises :class:`TransientGitHubError` with ``retry_after``.

GitHub's API does not say which versions an index references, so each tagged version's manifest is read
from the registry (ghcr.io). A version whose manifest cannot be read is listed with ``unreadable`` set: the
retention planner keeps it and everything it could reference (fail closed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Literal, Protocol
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from previews.core.names import parse_image_repository
from previews.core.retention import Backend, ImageVersion
from previews.errors import (
    AuthError,
    GitHubError,
    PermanentError,
    RegistryError,
    TransientError,
    ValidationError,
)
from previews.github.client import DEFAULT_API_URL, GitHubClient

log = logging.getLogger("previews.github.packages")

OwnerKind = Literal["org", "user"]
MAX_PAGES = 1000


def split_image(image: str) -> tuple[str, str]:
    """``owner/name[/more]`` (the image path on ghcr.io) -> (owner, package name ``name[/more]``)."""
    text = parse_image_repository(image, field="image")
    owner, sep, package = text.partition("/")
    if not sep:
        raise ValidationError("image", f"{text!r} has no owner: expected owner/package on ghcr.io")
    return owner, package


class ManifestWithChildren(Protocol):
    """A manifest as read from a registry: what an index references."""

    @property
    def children(self) -> tuple[str, ...]:
        """Digests of the manifests an index references (empty for an image manifest)."""
        ...


class ManifestReader(Protocol):
    """Reads manifests from the registry (ghcr.io); :class:`previews.registry.oci.OciRegistry` is one."""

    def manifest(self, repository: str, reference: str) -> ManifestWithChildren:
        """The manifest of a tag or digest; raises a ``PreviewsError`` when it cannot be read."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class GhcrPackage:
    """One container package on GHCR (org- or user-owned) as a cleanup target."""

    backend = Backend.GHCR
    supports_untag = False
    concurrency = 1  # GitHub asks for mutating requests one at a time; deletes are paced below its limit

    def __init__(
        self,
        *,
        owner: str,
        package: str,
        token: SecretStr,
        manifests: ManifestReader,
        owner_kind: OwnerKind = "org",
        api_url: str = DEFAULT_API_URL,
        deletes_per_minute: float = 180.0,
        timeout: float = 30.0,
        max_pages: int = MAX_PAGES,
        transport: httpx.BaseTransport | None = None,
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
        self.max_pages = max_pages
        self._interval = 60.0 / deletes_per_minute
        self._clock, self._sleep = clock, sleep
        self._last_delete: float | None = None
        self._lock = threading.Lock()
        self._github = GitHubClient(
            base_url=api_url, token=token, timeout=timeout, transport=transport, clock=wall_clock
        )

    def close(self) -> None:
        """Close the HTTP connections."""
        self._github.close()
        self.manifests.close()

    def __enter__(self) -> GhcrPackage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def repository(self) -> str:
        """The image path on ghcr.io: ``owner/package``."""
        return f"{self.owner}/{self.package}"

    @property
    def _base(self) -> str:
        owners = "orgs" if self.owner_kind == "org" else "users"
        return f"/{owners}/{quote(self.owner, safe='')}/packages/container/{quote(self.package, safe='')}"

    def list_versions(self) -> list[ImageVersion]:
        """Every active version of the package; tagged ones with the children their manifest references."""
        return [self._with_children(version) if version.tags else version for version in self._list()]

    def current_tags(self, skip: frozenset[str]) -> dict[str, str]:
        """Tag -> version digest now, for every tag not in ``skip``."""
        return {tag: v.digest for v in self._list() for tag in v.tags if tag not in skip}

    def children_of(self, digest: str) -> tuple[str, ...]:
        """The children of an index read from ghcr.io; raises when the manifest cannot be read."""
        return self.manifests.manifest(self.repository, digest).children

    def _list(self) -> list[ImageVersion]:
        items = self._github.paginate(
            f"{self._base}/versions",
            params={"per_page": 100, "state": "active"},
            max_pages=self.max_pages,
            require_all=True,
        )
        return [self._version(item) for item in items]

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

    def _with_children(self, version: ImageVersion) -> ImageVersion:
        """The version with its manifest's children, or marked unreadable when the registry cannot say."""
        try:
            children = self.children_of(version.digest)
        except AuthError:
            raise
        except (PermanentError, TransientError) as exc:
            log.warning(
                "%s@%s (%s): its references could not be read, so it is kept with everything it could "
                "reference: %s",
                self.repository,
                version.digest,
                ", ".join(version.tags),
                exc,
            )
            return ImageVersion(
                version.digest, version.tags, version.created, (), version.version_id, unreadable=str(exc)
            )
        return ImageVersion(version.digest, version.tags, version.created, children, version.version_id)

    def delete_version(self, version_id: int) -> None:
        """``DELETE .../versions/{id}``, paced to stay under the deletes-per-minute budget.

        The interval runs from the end of the previous delete, so however late a request leaves, GitHub
        never sees two deletes closer together than ``60 / deletes_per_minute`` seconds.
        """
        if isinstance(version_id, bool) or not isinstance(version_id, int) or version_id <= 0:
            raise ValidationError(
                "version_id", "must be a positive integer (the version's id, not its digest)"
            )
        with self._lock:
            if self._last_delete is not None:
                wait = self._last_delete + self._interval - self._clock()
                if wait > 0:
                    self._sleep(wait)
            try:
                self._github.request("DELETE", f"{self._base}/versions/{version_id}")
            finally:
                self._last_delete = self._clock()

    def delete_manifest(self, digest: str) -> None:
        """Not possible on GHCR (the registry answers 405): delete the package version instead."""
        raise RegistryError(f"GHCR cannot delete {digest} by digest; delete its package version", status=405)

    def untag(self, tag: str) -> None:
        """Not possible through the GitHub Packages API."""
        raise RegistryError(f"GHCR cannot remove the single tag {tag!r} from a version")
