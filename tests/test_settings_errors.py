"""A refused setting names its variable, what is wrong with the value and what is allowed (issue 18)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from previews.errors import SettingsError, ValidationError
from previews.settings import allowed_values, load_settings, variable_of


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"retries": 99}, "PREVIEWS_RETRIES=99: must be at most 10 (allowed: 0 to 10)"),
        ({"retries": -1}, "PREVIEWS_RETRIES=-1: must be at least 0 (allowed: 0 to 10)"),
        ({"tag_sha_length": "abc"}, "PREVIEWS_TAG_SHA_LENGTH=abc: is not an integer (allowed: 7 to 40)"),
        (
            {"cleanup_ttl_days": 0},
            "PREVIEWS_CLEANUP_TTL_DAYS=0: must be more than 0 (allowed: more than 0 and at most 3650)",
        ),
        ({"build_timeout": "soon"}, "PREVIEWS_BUILD_TIMEOUT=soon: is not a number (allowed: more than 0)"),
        (
            {"fork_build_secrets": "maybe"},
            "PREVIEWS_FORK_BUILD_SECRETS=maybe: is not a boolean (allowed: true or false)",
        ),
        (
            {"registry_kind": "s3"},
            "PREVIEWS_REGISTRY_KIND=s3: is not one of the allowed values (allowed: 'oci' or 'ghcr')",
        ),
        (
            {"registry": "http://x y"},
            "PREVIEWS_REGISTRY=http://x y: 'http://x y' is not a registry host[:port]",
        ),
        (
            {"max_body_bytes": 10**9},
            "PREVIEWS_MAX_BODY_BYTES=1000000000: must be at most 26214400 (allowed: more than 0 and at most 26214400)",
        ),
        ({"prefect_api_url": 5}, "PREFECT_API_URL=5: Input should be a valid string"),
    ],
)
def test_the_message_names_variable_value_problem_and_range(values: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(**values)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValidationError)  # exit 2 in the CLI, never retried in a flow


def test_a_secret_value_is_never_shown() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(github_app_private_key=12345)
    assert "12345" not in str(caught.value)
    assert str(caught.value).startswith("PREVIEWS_GITHUB_APP_PRIVATE_KEY=<hidden>: ")


def test_further_bad_variables_are_named_after_the_first() -> None:
    with pytest.raises(SettingsError, match=r"; also refused: PREVIEWS_RETRIES, PREVIEWS_RETRY_DELAY$"):
        load_settings(tag_sha_length=3, retries=11, retry_delay=-1)


def test_good_values_load() -> None:
    settings = load_settings(retries=10, registry_token=SecretStr("t"))
    assert settings.retries == 10


@pytest.mark.parametrize(
    ("field", "variable", "allowed"),
    [
        ("retries", "PREVIEWS_RETRIES", "0 to 10"),
        ("outbox_retention_hours", "PREVIEWS_OUTBOX_RETENTION_HOURS", "at least 0"),
        ("fork_policy", "PREVIEWS_FORK_POLICY", "'skip' or 'label' or 'allow'"),
        ("github_app_id", "PREVIEWS_GITHUB_APP_ID", "an integer"),
        ("prefect_api_url", "PREFECT_API_URL", None),
        ("image", "PREVIEWS_IMAGE", None),
    ],
)
def test_variables_and_their_allowed_values(field: str, variable: str, allowed: str | None) -> None:
    assert variable_of(field) == variable
    assert allowed_values(field) == allowed
