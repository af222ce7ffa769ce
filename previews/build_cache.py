"""Warm builds on cold engines: find and pull an image whose layers a new build can reuse (``cache_from``).

The newest ``pr-<N>-*`` image of the same PR is the best cache (usually one commit behind); a base-branch
image configured as ``PREVIEWS_CACHE_FROM_FALLBACK`` is the next best. A cache image that cannot be listed or
pulled only costs time, so failures are reported to the caller, never raised.
"""

from __future__ import annotations

import re
from datetime import datetime

import docker
import docker.errors
import requests
from pydantic import SecretStr

from previews.docker_engine import engine_unavailable
from previews.errors import PreviewsError
from previews.redact import Redactor
from previews.registry.oci import OciRegistry


def newest_pr_image(registry: OciRegistry, image: str, pr_number: int) -> str | None:
    """The tag of the most recently created ``pr-<N>-<sha>`` image of ``image``, or None."""
    pattern = re.compile(rf"pr-{pr_number}-[0-9a-f]{{7,40}}", re.ASCII)
    newest: tuple[datetime, str] | None = None
    for tag in registry.tags(image):
        if not pattern.fullmatch(tag):
            continue
        created = registry.created(image, registry.manifest(image, tag))
        if created is not None and (newest is None or (created, tag) > newest):
            newest = (created, tag)
    return newest[1] if newest else None


def pull(
    client: docker.DockerClient,
    reference: str,
    *,
    username: str | None,
    password: SecretStr | None,
) -> str | None:
    """Pull ``registry/image:tag`` into the engine; returns None on success, else why it failed (redacted)."""
    repository, _, tag = reference.rpartition(":")
    if not repository or "/" in tag:
        return f"{reference!r} is not registry/repository:tag"
    secret = password.get_secret_value() if password is not None else ""
    auth = {"username": username, "password": secret} if username and secret else None
    redact = Redactor([secret])
    try:
        for chunk in client.api.pull(repository, tag=tag, stream=True, decode=True, auth_config=auth):
            if isinstance(chunk, dict) and ("error" in chunk or "errorDetail" in chunk):
                return redact(str(chunk.get("error") or chunk.get("errorDetail")))
    except (docker.errors.APIError, PreviewsError) as exc:
        return redact(str(exc))
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        return redact(str(engine_unavailable(exc)))
    return None
