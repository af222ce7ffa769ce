"""The tag policy: only pr-<N>-<sha>, never a protected tag, checked in pure code."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from previews.core.tags import DEFAULT_PROTECTED, PrTag, ensure_pushable, is_protected, parse_pr_tag, pr_tag
from previews.errors import TagPolicyError, ValidationError
from tests.support.fixtures import FIXTURES

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_pr_tag_uses_full_sha_by_default() -> None:
    assert pr_tag(12, SHA) == f"pr-12-{SHA}"
    assert pr_tag(12, SHA, sha_length=7) == "pr-12-0123456"


@pytest.mark.parametrize("length", [6, 41, 0])
def test_pr_tag_sha_length_bounded(length: int) -> None:
    with pytest.raises(ValidationError, match="tag_sha_length"):
        pr_tag(1, SHA, sha_length=length)


def test_pr_tag_requires_full_sha() -> None:
    with pytest.raises(ValidationError):
        pr_tag(1, SHA[:7])


@pytest.mark.parametrize(
    "tag",
    [
        "latest",
        "master",
        "main",
        "master-abc123",
        "main-1",
        "v1.2.3",
        "1.2",
        "v2",
        "release-2024",
        "stable",
        "pr-1",
        "pr-1-xyz",
        "pr-0-0123456",
        "pr-100000-0123456",
        "pr-1-0123456\n",
        "PR-1-0123456",
        "pr-01-0123456",
        "x-pr-1-0123456",
        "pr-1-0123456-extra",
        "",
    ],
)
def test_ensure_pushable_refuses(tag: str) -> None:
    with pytest.raises(TagPolicyError):
        ensure_pushable(tag)


def test_configured_protection_beats_the_pr_grammar() -> None:
    with pytest.raises(TagPolicyError, match="protected"):
        ensure_pushable("pr-1-0123456", protected=(*DEFAULT_PROTECTED, "pr-1-*"))


def test_ensure_pushable_accepts_pr_tags() -> None:
    assert ensure_pushable(f"pr-99999-{SHA}") == PrTag(99999, SHA)
    assert str(parse_pr_tag("pr-5-abcdef0")) == "pr-5-abcdef0"


@pytest.mark.parametrize(
    "case",
    json.loads((FIXTURES / "security" / "hostile-inputs.json").read_text())["oci_tag_cases"],
    ids=lambda c: repr(c["value"])[:30],
)
def test_recorded_oci_tags_only_pr_tags_pass(case: dict[str, object]) -> None:
    value = str(case["value"])
    if parse_pr_tag(value) is not None and not is_protected(value):
        assert ensure_pushable(value).pr_number >= 1
    else:
        with pytest.raises(TagPolicyError):
            ensure_pushable(value)


@given(st.text(max_size=80))
def test_anything_pushable_is_a_pr_tag_and_not_protected(tag: str) -> None:
    try:
        parsed = ensure_pushable(tag)
    except TagPolicyError:
        return
    assert str(parsed) == tag
    assert tag.startswith("pr-")
    assert not is_protected(tag)


@given(st.integers(1, 99999), st.text("0123456789abcdef", min_size=40, max_size=40), st.integers(7, 40))
def test_every_generated_tag_is_pushable(number: int, sha: str, length: int) -> None:
    assert ensure_pushable(pr_tag(number, sha, sha_length=length)) == PrTag(number, sha[:length])
