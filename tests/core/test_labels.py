"""OCI labels as docker/metadata-action writes them, from the configured GitHub server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from previews.core.labels import github_server_url, oci_labels
from previews.errors import ValidationError

SHA = "0123456789abcdef0123456789abcdef01234567"
CREATED = datetime(2026, 11, 30, 12, 0, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("api_url", "server"),
    [
        ("https://api.github.com", "https://github.com"),
        ("https://API.GITHUB.COM/", "https://github.com"),
        ("https://ghe.example.com/api/v3", "https://ghe.example.com"),
        ("https://ghe.example.com:8443/api/v3/", "https://ghe.example.com:8443"),
        ("https://api.acme.ghe.com", "https://acme.ghe.com"),
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
    ],
)
def test_the_server_comes_from_the_api_address(api_url: str, server: str) -> None:
    assert github_server_url(api_url) == server


@pytest.mark.parametrize(
    "api_url", ["ftp://ghe.example.com", "ghe.example.com", "https://u:p@ghe.example.com"]
)
def test_unusable_api_addresses_are_refused(api_url: str) -> None:
    with pytest.raises(ValidationError, match="PREVIEWS_GITHUB_API_URL"):
        github_server_url(api_url)


def test_the_metadata_action_label_set() -> None:
    labels = oci_labels(
        server_url="https://ghe.example.com",
        repository="Acme/App",
        revision=SHA,
        created=CREATED,
        version=f"pr-7-{SHA}",
    )
    assert labels == {
        "org.opencontainers.image.title": "App",
        "org.opencontainers.image.url": "https://ghe.example.com/Acme/App",
        "org.opencontainers.image.source": "https://ghe.example.com/Acme/App",
        "org.opencontainers.image.version": f"pr-7-{SHA}",
        "org.opencontainers.image.created": "2026-11-30T12:00:05Z",
        "org.opencontainers.image.revision": SHA,
    }


def test_created_is_written_in_utc() -> None:
    local = CREATED.astimezone(timezone(timedelta(hours=-5)))
    labels = oci_labels(
        server_url="https://github.com", repository="a/b", revision=SHA, created=local, version="pr-1-abc1234"
    )
    assert labels["org.opencontainers.image.created"] == "2026-11-30T12:00:05Z"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"revision": "abc1234"}, "revision"),  # a full SHA only
        ({"created": datetime(2026, 1, 1)}, "created"),  # naive
        ({"version": ""}, "version"),
        ({"repository": "not-a-repo"}, "repository"),
    ],
)
def test_bad_input_is_refused(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {
        "server_url": "https://github.com",
        "repository": "a/b",
        "revision": SHA,
        "created": CREATED,
        "version": "pr-1-abc1234",
    } | kwargs
    with pytest.raises(ValidationError) as caught:
        oci_labels(**args)  # type: ignore[arg-type]
    assert caught.value.field == field
