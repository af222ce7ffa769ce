"""Tag policy: the only tag `previews` ever writes is ``pr-<N>-<sha>``.

Checked in pure code before any network call, so no caller (flow parameter, CLI flag, setting) can make us
push ``latest``, ``master-*`` or anything else in the production namespace.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from previews.core.names import parse_pr_number, parse_sha
from previews.errors import TagPolicyError, ValidationError

PR_TAG_RE = re.compile(r"pr-([1-9][0-9]{0,4})-([0-9a-f]{7,40})", re.ASCII)
# Semver-looking tags (v1, 1.2, v1.2.3-rc.1, ...) are release tags.
SEMVER_RE = re.compile(r"v?[0-9]+(?:\.[0-9]+){0,2}(?:[-+][0-9A-Za-z.-]+)?", re.ASCII)
DEFAULT_PROTECTED: tuple[str, ...] = ("latest", "master", "main", "master-*", "main-*", "release-*", "stable")
MIN_SHA_LENGTH, MAX_SHA_LENGTH = 7, 40


@dataclass(frozen=True, slots=True)
class PrTag:
    """A parsed ``pr-<N>-<sha>`` tag."""

    pr_number: int
    sha: str

    def __str__(self) -> str:
        return f"pr-{self.pr_number}-{self.sha}"


def parse_pr_tag(tag: str) -> PrTag | None:
    """Return the PR number and SHA of a ``pr-<N>-<sha>`` tag, or None for any other tag."""
    match = PR_TAG_RE.fullmatch(tag)
    if match is None:
        return None
    return PrTag(int(match.group(1)), match.group(2))


def is_protected(tag: str, protected: Iterable[str] = DEFAULT_PROTECTED) -> bool:
    """True when ``tag`` is a release or production tag that `previews` must never write or delete."""
    return protected_matcher(tuple(protected))(tag)


@functools.lru_cache(maxsize=32)
def protected_matcher(protected: tuple[str, ...]) -> Callable[[str], bool]:
    """One compiled test for "semver-looking, or matches any of ``protected``" (fnmatch, case-sensitive)."""
    patterns = [SEMVER_RE.pattern, *(fnmatch.translate(p) for p in protected)]
    combined = re.compile("|".join(f"(?:{p})" for p in patterns), re.ASCII)

    def matches(tag: str) -> bool:
        return combined.fullmatch(tag) is not None

    return matches


def pr_tag(pr_number: int, sha: str, *, sha_length: int = MAX_SHA_LENGTH) -> str:
    """The tag for one PR at one commit. ``sha`` must be the full 40-character SHA."""
    if not MIN_SHA_LENGTH <= sha_length <= MAX_SHA_LENGTH:
        raise ValidationError(
            "tag_sha_length", f"{sha_length} is out of range {MIN_SHA_LENGTH}-{MAX_SHA_LENGTH}"
        )
    number = parse_pr_number(pr_number)
    full = parse_sha(sha, field="sha", full=True)
    return f"pr-{number}-{full[:sha_length]}"


def ensure_pushable(tag: str, *, protected: Iterable[str] = DEFAULT_PROTECTED) -> PrTag:
    """Refuse any tag other than ``pr-<N>-<sha>`` and any protected tag; return the parsed tag."""
    if is_protected(tag, protected):
        raise TagPolicyError(tag, "it is a protected tag; previews only writes pr-<N>-<sha>")
    parsed = parse_pr_tag(tag)
    if parsed is None:
        raise TagPolicyError(tag, "previews only writes tags of the form pr-<N>-<sha>")
    return parsed
