"""Composition of the cleanup target and rules from Settings (PREVIEWS_REGISTRY_KIND, PREVIEWS_CLEANUP_*)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import SecretStr
from pydantic import ValidationError as PydanticValidationError

from previews.core.retention import Backend
from previews.errors import ValidationError
from previews.github.packages import GhcrPackage
from previews.registry import cleanup_image, cleanup_target, registry_kind, retention_rules
from previews.registry.oci import OciRepository
from previews.settings import Settings


def test_kind_defaults_to_ghcr_for_ghcr_io_only() -> None:
    assert registry_kind(Settings(registry="ghcr.io")) is Backend.GHCR
    assert registry_kind(Settings(registry="registry.example.com:5000")) is Backend.OCI
    assert registry_kind(Settings(registry="ghcr.io", registry_kind="oci")) is Backend.OCI


def test_rules_come_from_cleanup_settings() -> None:
    rules = retention_rules(
        Settings(
            cleanup_grace_hours=2, cleanup_keep_per_open_pr=3, cleanup_ttl_days=7, protected_tags="prod-*"
        )
    )
    assert (rules.grace, rules.keep_per_open_pr, rules.ttl) == (timedelta(hours=2), 3, timedelta(days=7))
    assert "prod-*" in rules.protected
    assert "latest" in rules.protected


def test_bad_cleanup_settings_name_the_field() -> None:
    with pytest.raises(PydanticValidationError, match="cleanup_keep_per_open_pr"):
        Settings(cleanup_keep_per_open_pr=0)
    with pytest.raises(PydanticValidationError, match="cleanup_ttl_days"):
        Settings(cleanup_ttl_days=0)


def test_targets_are_built_from_settings() -> None:
    oci = cleanup_target(Settings(registry="127.0.0.1:5000", image="Acme/App"))
    assert isinstance(oci, OciRepository)
    assert oci.repository == "acme/app"
    assert oci.registry.url == "http://127.0.0.1:5000"
    oci.close()
    ghcr = cleanup_target(
        Settings(
            registry="ghcr.io",
            image="acme/tools/runner",
            registry_token=SecretStr("ghp_x"),
            cleanup_ghcr_owner_kind="user",
            github_api_url="http://127.0.0.1:1",
        )
    )
    assert isinstance(ghcr, GhcrPackage)
    assert (ghcr.owner, ghcr.package, ghcr.owner_kind) == ("acme", "tools/runner", "user")
    ghcr.close()


def test_missing_image_or_ghcr_token_is_a_clear_error() -> None:
    with pytest.raises(ValidationError, match="PREVIEWS_IMAGE"):
        cleanup_image(Settings())
    assert cleanup_image(Settings(cleanup_repository="Acme/App")) == "acme/app"
    with pytest.raises(ValidationError, match="PREVIEWS_REGISTRY_TOKEN"):
        cleanup_target(Settings(registry="ghcr.io", image="acme/app"))
