"""Which repository decides the cleanup, and which tags in-flight builds may write (issue 13, item 9)."""

from __future__ import annotations

import pytest

from previews.core.cleanup_scope import (
    choose_repository,
    in_flight_tags,
    repository_from_image,
    repository_from_source,
)
from previews.errors import ValidationError

A = "abcdef0123456789abcdef0123456789abcdef01"
B = "b" * 40


@pytest.mark.parametrize(
    ("builds", "tags", "expected"),
    [
        # a run started from the UI with a short SHA, tags with the full SHA
        ([(3, A[:9])], [f"pr-3-{A}"], [(3, A)]),
        # a full-SHA run, tags cut to 7 (PREVIEWS_TAG_SHA_LENGTH=7)
        ([(3, A)], [f"pr-3-{A[:7]}"], [(3, A[:7])]),
        # short on both sides, different lengths
        ([(3, A[:12])], [f"pr-3-{A[:7]}"], [(3, A[:7])]),
        # upper-case SHA from a hand-typed form
        ([(3, A[:9].upper())], [f"pr-3-{A}"], [(3, A)]),
        # another PR, another SHA, another tag: untouched
        ([(4, A)], [f"pr-3-{A}"], []),
        ([(3, B)], [f"pr-3-{A}"], []),
        ([(3, A)], ["latest", "v1.2"], []),
    ],
)
def test_in_flight_builds_match_tags_by_sha_prefix(
    builds: list[tuple[int, str]], tags: list[str], expected: list[tuple[int, str]]
) -> None:
    assert in_flight_tags(tags, builds) == expected


@pytest.mark.parametrize(
    ("url", "repository"),
    [
        ("https://github.com/Acme/App", "Acme/App"),
        ("https://github.example.com/acme/app.git", "acme/app"),
        ("http://github.com/acme/app/", "acme/app"),
        ("https://github.com/acme", None),
        ("https://github.com/acme/app/tree/main", None),
        ("git@github.com:acme/app.git", None),
        ("", None),
        (None, None),
    ],
)
def test_the_source_label_names_the_repository(url: str | None, repository: str | None) -> None:
    assert repository_from_source(url) == repository


def test_the_ghcr_image_name_is_the_repository() -> None:
    assert repository_from_image("ghcr.io", "acme/app") == "acme/app"
    assert repository_from_image("GHCR.io", "acme/app") == "acme/app"
    assert repository_from_image("ghcr.io", "acme/app/sub") is None
    assert repository_from_image("registry.example.com", "acme/app") is None


def test_the_setting_then_the_label_then_the_image_name_decide() -> None:
    label = {"org.opencontainers.image.source": "https://github.com/acme/from-label"}
    common = {"labelled_tag": f"pr-1-{A}", "registry": "ghcr.io", "image": "acme/from-image"}
    chosen = choose_repository("acme/set", labels=label, **common)
    assert (chosen.repository, chosen.decided_by) == ("acme/set", "PREVIEWS_CLEANUP_REPOSITORY")
    chosen = choose_repository(None, labels=label, **common)
    assert chosen.repository == "acme/from-label"
    assert chosen.decided_by == f"org.opencontainers.image.source label of pr-1-{A}"
    chosen = choose_repository(None, labels={}, **common)
    assert (chosen.repository, chosen.decided_by) == ("acme/from-image", "image name ghcr.io/acme/from-image")
    chosen = choose_repository(None, labels={}, **{**common, "registry": "registry.example.com"})
    assert chosen.repository is None
    assert "PREVIEWS_CLEANUP_REPOSITORY" in chosen.decided_by
    with pytest.raises(ValidationError, match="PREVIEWS_CLEANUP_REPOSITORY"):
        choose_repository("not a repo", labels={}, **common)
