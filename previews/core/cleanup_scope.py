"""What the cleanup compares against, decided before the retention plan (issue 13, item 9): pure.

- Which GitHub repository's PR states decide: ``PREVIEWS_CLEANUP_REPOSITORY``, else the repository the images
  come from, by their ``org.opencontainers.image.source`` label (every preview image carries it), else the
  image name on ghcr.io (``ghcr.io/<owner>/<name>`` is GitHub's ``owner/name``). :class:`RepositoryChoice`
  says which of these decided, for the report.
- Which tags an in-flight build may be writing: the same PR, and one SHA a prefix of the other, so a run
  started from the UI with a short SHA and tags cut to ``PREVIEWS_TAG_SHA_LENGTH`` still match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from previews.core.labels import SOURCE
from previews.core.names import parse_repository
from previews.core.tags import parse_pr_tag
from previews.errors import ValidationError

_SOURCE_RE = re.compile(r"https?://[^/?#\s]+/([^/?#\s]+/[^/?#\s]+?)(?:\.git)?/?", re.ASCII | re.IGNORECASE)
FROM_SETTING = "PREVIEWS_CLEANUP_REPOSITORY"


@dataclass(frozen=True, slots=True)
class RepositoryChoice:
    """The repository whose PR states decide (None: only the TTL applies) and what chose it."""

    repository: str | None
    decided_by: str


def repository_from_source(url: str | None) -> str | None:
    """``owner/name`` from an ``org.opencontainers.image.source`` URL (``https://<server>/<owner>/<name>``)."""
    match = _SOURCE_RE.fullmatch(url.strip()) if url else None
    if match is None:
        return None
    try:
        return parse_repository(match.group(1))
    except ValidationError:
        return None


def repository_from_image(registry: str, image: str) -> str | None:
    """``owner/name`` for an image ``ghcr.io/<owner>/<name>``; None for other registries or deeper names."""
    parts = image.split("/")
    if registry.lower() != "ghcr.io" or len(parts) != 2:
        return None
    try:
        return parse_repository(image)
    except ValidationError:
        return None


def choose_repository(
    setting: str | None, *, labels: Mapping[str, str], labelled_tag: str | None, registry: str, image: str
) -> RepositoryChoice:
    """The setting, else the images' source label (read from ``labelled_tag``), else the ghcr.io image name."""
    if setting:
        return RepositoryChoice(parse_repository(setting, field=FROM_SETTING), FROM_SETTING)
    from_label = repository_from_source(labels.get(SOURCE))
    if from_label is not None:
        return RepositoryChoice(from_label, f"{SOURCE} label of {labelled_tag}")
    from_image = repository_from_image(registry, image)
    if from_image is not None:
        return RepositoryChoice(from_image, f"image name {registry}/{image}")
    return RepositoryChoice(None, f"none: set {FROM_SETTING} (the images carry no {SOURCE} label)")


def in_flight_tags(tags: Iterable[str], builds: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
    """The ``(pr, tag sha)`` of every ``pr-<N>-<sha>`` tag an in-flight build ``(pr, head sha)`` may write."""
    by_pr: dict[int, list[str]] = {}
    for number, sha in builds:
        by_pr.setdefault(number, []).append(sha.lower())
    found: set[tuple[int, str]] = set()
    for tag in tags:
        parsed = parse_pr_tag(tag)
        if parsed is None:
            continue
        for sha in by_pr.get(parsed.pr_number, ()):
            if sha.startswith(parsed.sha) or parsed.sha.startswith(sha):
                found.add((parsed.pr_number, parsed.sha))
    return sorted(found)
