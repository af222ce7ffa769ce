"""Validation of every input of a build, with GitHub's and OCI's grammars and hostile values."""

from __future__ import annotations

import json

import pytest

from previews.core.names import (
    parse_git_ref,
    parse_image_repository,
    parse_pr_number,
    parse_registry,
    parse_repository,
    parse_sha,
)
from previews.core.request import Sibling, parse_siblings, validate_request
from previews.errors import ValidationError
from tests.support.fixtures import FIXTURES

HOSTILE = json.loads((FIXTURES / "security" / "hostile-inputs.json").read_text())
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("value", ["octocat/Hello-World", "Codertocat/hello.world_1", "a/b", "a-b/.github"])
def test_repository_accepts_github_names(value: str) -> None:
    assert parse_repository(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "octocat",
        "octocat/",
        "/repo",
        "-octo/repo",
        "octo-/repo",
        "a/b/c",
        "a/..",
        "a/.",
        "a/b.git",
        "a b/c",
        "a/b\n",
        "a/b;rm -rf /",
        "a/$(id)",
        "ü/b",
        "a/" + "x" * 101,
        "x" * 40 + "/b",
        42,
        None,
    ],
)
def test_repository_rejects_everything_else(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        parse_repository(value)
    assert info.value.field == "repository"


@pytest.mark.parametrize(("value", "expected"), [(1, 1), (99999, 99999), ("42", 42)])
def test_pr_number_accepts_range(value: object, expected: int) -> None:
    assert parse_pr_number(value) == expected


@pytest.mark.parametrize("value", [0, -1, 100000, "0x10", "1e3", " 1", "1\n", "", True, 1.0, None, "١٢"])
def test_pr_number_rejects(value: object) -> None:
    with pytest.raises(ValidationError, match="pr_number"):
        parse_pr_number(value)


@pytest.mark.parametrize("value", [SHA, SHA[:7], SHA[:12]])
def test_sha_accepts_7_to_40_lower_hex(value: str) -> None:
    assert parse_sha(value) == value


@pytest.mark.parametrize(
    "value", [SHA.upper(), SHA[:6], SHA + "0", SHA[:39] + "g", SHA + "\n", "HEAD", "main", "--all", "", None]
)
def test_sha_rejects(value: object) -> None:
    with pytest.raises(ValidationError, match="head_sha"):
        parse_sha(value)


def test_full_sha_required_when_asked() -> None:
    with pytest.raises(ValidationError, match="40"):
        parse_sha(SHA[:12], full=True)


LOWER_CASE_OCI_CASES = [c for c in HOSTILE["oci_repository_name_cases"] if c["value"] == c["value"].lower()]


@pytest.mark.parametrize("case", LOWER_CASE_OCI_CASES, ids=lambda c: repr(c["value"])[:40])
def test_image_repository_matches_recorded_oci_grammar(case: dict[str, object]) -> None:
    value = str(case["value"])
    if case["valid_name_regex"]:
        assert parse_image_repository(value) == value
    else:
        with pytest.raises(ValidationError, match="image"):
            parse_image_repository(value)


def test_image_repository_is_lowered() -> None:
    assert parse_image_repository("Codertocat/Hello-World") == "codertocat/hello-world"


@pytest.mark.parametrize("value", ["ghcr.io", "127.0.0.1:5000", "registry.example.com:443", "localhost"])
def test_registry_accepts_hosts(value: str) -> None:
    assert parse_registry(value) == value


@pytest.mark.parametrize(
    "value", ["https://ghcr.io", "ghcr.io/x", "user:pw@ghcr.io", "ghcr.io:", "", " ghcr.io"]
)
def test_registry_rejects(value: str) -> None:
    with pytest.raises(ValidationError, match="registry"):
        parse_registry(value)


@pytest.mark.parametrize("case", HOSTILE["branch_names"], ids=lambda c: repr(c["value"])[:40])
def test_hostile_branch_names_are_not_git_refs_we_pass(case: dict[str, object]) -> None:
    value = str(case["value"])
    with pytest.raises(ValidationError):
        parse_git_ref(value, field="siblings")


@pytest.mark.parametrize("value", ["main", "v1.2.3", "release/2024", SHA, "feature_x"])
def test_plain_refs_are_accepted(value: str) -> None:
    assert parse_git_ref(value, field="ref") == value


@pytest.mark.parametrize(
    "value", ["-x", "--upload-pack=touch", "a..b", "a//b", "x.lock", "HEAD@{1}", "a~1", "a^"]
)
def test_option_like_or_revision_refs_are_refused(value: str) -> None:
    with pytest.raises(ValidationError):
        parse_git_ref(value, field="ref")


def test_siblings_parse() -> None:
    assert parse_siblings("common=acme/common@v2, proto=acme/proto") == (
        Sibling("common", "acme/common", "v2"),
        Sibling("proto", "acme/proto", None),  # the remote's default branch, resolved at checkout
    )
    assert str(parse_siblings("proto=acme/proto")[0]) == "proto=acme/proto"
    assert str(parse_siblings("proto=acme/proto@v1")[0]) == "proto=acme/proto@v1"
    assert parse_siblings("") == ()


@pytest.mark.parametrize(
    "value",
    ["common", "=acme/x", "../x=acme/x", "a=acme/x,a=acme/y", "app=acme/x", "c=acme/x@--force", "c=bad"],
)
def test_siblings_reject(value: str) -> None:
    with pytest.raises(ValidationError, match="siblings"):
        parse_siblings(value)


def test_validate_request_names_the_first_bad_field() -> None:
    good = {"repository": "Acme/App", "pr_number": 7, "head_sha": SHA, "registry": "ghcr.io"}
    request = validate_request(**good)
    assert request.image == "acme/app"
    assert request.image_name == "ghcr.io/acme/app"
    for field, bad in [("repository", "acme"), ("pr_number", 0), ("head_sha", "main"), ("registry", "x/y")]:
        with pytest.raises(ValidationError) as info:
            validate_request(**{**good, field: bad})
        assert info.value.field == field
