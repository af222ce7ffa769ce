"""Warm builds on cold engines: which image of the PR a new build can reuse as ``cache_from``.

The newest ``pr-<N>-<sha>`` image of the same PR is the best cache (usually one commit behind); a base-branch
image configured as ``PREVIEWS_CACHE_FROM_FALLBACK`` is the next best (see
:func:`previews.core.plan.cache_sources`). Pulling it is :meth:`previews.docker_engine.DockerEngine.pull`.
"""

from __future__ import annotations

from datetime import datetime

from previews.core.tags import parse_pr_tag
from previews.registry.oci import OciRegistry


def newest_pr_image(registry: OciRegistry, image: str, pr_number: int) -> str | None:
    """The tag of the most recently created ``pr-<N>-<sha>`` image of ``image``, or None."""
    newest: tuple[datetime, str] | None = None
    for tag in registry.tags(image):
        parsed = parse_pr_tag(tag)
        if parsed is None or parsed.pr_number != pr_number:
            continue
        created = registry.created(image, registry.manifest(image, tag))
        if created is not None and (newest is None or (created, tag) > newest):
            newest = (created, tag)
    return newest[1] if newest else None
