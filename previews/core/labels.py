"""The OCI labels every preview image carries, computed as docker/metadata-action computes them.

https://github.com/docker/metadata-action#overwrite-labels-and-annotations lists the labels the action sets
from the repository and the run: ``title`` (the repository's name), ``url`` and ``source`` (its web address
on the GitHub server the event came from), ``version`` (the tag), ``created`` and ``revision`` (the commit).
The GitHub server comes from the configured API address, so GitHub Enterprise images point at the right host.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from previews.core.names import parse_repository, parse_sha
from previews.errors import ValidationError

SOURCE = "org.opencontainers.image.source"
REVISION = "org.opencontainers.image.revision"
CREATED = "org.opencontainers.image.created"
TITLE = "org.opencontainers.image.title"
URL = "org.opencontainers.image.url"
VERSION = "org.opencontainers.image.version"


_URL_RE = re.compile(r"(?P<scheme>https?)://(?P<netloc>[^/?#\s]+)(?:[/?#].*)?", re.ASCII | re.IGNORECASE)


def github_server_url(api_url: str) -> str:
    """The web address of the GitHub server behind a REST API address.

    ``https://api.github.com`` is ``https://github.com``; a GitHub Enterprise Server API
    (``https://ghe.example.com/api/v3``) is served by ``https://ghe.example.com``; any other API address is its
    own server (a proxy or a test double).
    """
    match = _URL_RE.fullmatch(api_url.strip())
    if match is None:
        raise ValidationError("PREVIEWS_GITHUB_API_URL", f"{api_url!r} is not an http(s) URL")
    scheme, host = match.group("scheme").lower(), match.group("netloc")
    if "@" in host:
        raise ValidationError("PREVIEWS_GITHUB_API_URL", "must not carry credentials")
    if host.lower() == "api.github.com":
        return "https://github.com"
    if host.lower().startswith("api.") and host.lower().endswith(".ghe.com"):  # GitHub Enterprise Cloud
        host = host[len("api.") :]
    return f"{scheme}://{host}"


def oci_labels(
    *, server_url: str, repository: str, revision: str, created: datetime, version: str
) -> dict[str, str]:
    """The metadata-action label set for ``repository`` at ``revision``, tagged ``version``.

    ``created`` must be timezone-aware; it is written in UTC as RFC 3339 (``2026-11-30T12:00:00Z``).
    """
    repo = parse_repository(repository)
    sha = parse_sha(revision, field="revision", full=True)
    if created.tzinfo is None:
        raise ValidationError("created", "must be timezone-aware")
    if not version:
        raise ValidationError("version", "must not be empty")
    web = f"{server_url.rstrip('/')}/{repo}"
    return {
        TITLE: repo.split("/", 1)[1],
        URL: web,
        SOURCE: web,
        VERSION: version,
        CREATED: created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        REVISION: sha,
    }
