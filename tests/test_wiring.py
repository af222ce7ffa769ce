"""The composition root builds every client from Settings: GitHub, infra target, cleanup target and rules."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import SecretStr
from pydantic import ValidationError as PydanticValidationError

from previews.core.retention import Backend
from previews.errors import ValidationError
from previews.github import infra
from previews.github.client import GitHubClient
from previews.github.packages import GhcrPackage
from previews.registry.oci import OciRepository
from previews.settings import Settings
from previews.wiring import Wiring
from tests.support.fake_github import FakeGitHub

REPO = "octo/app"
HEAD = "a" * 40
INFRA = "acme/infra"


def test_kind_defaults_to_ghcr_for_ghcr_io_only() -> None:
    assert Wiring(Settings(registry="ghcr.io")).cleanup_backend() is Backend.GHCR
    assert Wiring(Settings(registry="registry.example.com:5000")).cleanup_backend() is Backend.OCI
    assert Wiring(Settings(registry="ghcr.io", registry_kind="oci")).cleanup_backend() is Backend.OCI


def test_rules_come_from_cleanup_settings() -> None:
    rules = Wiring(
        Settings(
            cleanup_grace_hours=2, cleanup_keep_per_open_pr=3, cleanup_ttl_days=7, protected_tags="prod-*"
        )
    ).retention_rules()
    assert (rules.grace, rules.keep_per_open_pr, rules.ttl) == (timedelta(hours=2), 3, timedelta(days=7))
    assert "prod-*" in rules.protected
    assert "latest" in rules.protected


def test_bad_cleanup_settings_name_the_field() -> None:
    with pytest.raises(PydanticValidationError, match="cleanup_keep_per_open_pr"):
        Settings(cleanup_keep_per_open_pr=0)
    with pytest.raises(PydanticValidationError, match="cleanup_ttl_days"):
        Settings(cleanup_ttl_days=0)


def test_targets_are_built_from_settings() -> None:
    oci = Wiring(Settings(registry="127.0.0.1:5000", image="Acme/App")).cleanup_target()
    assert isinstance(oci, OciRepository)
    assert oci.repository == "acme/app"
    assert oci.registry.url == "http://127.0.0.1:5000"
    oci.close()
    ghcr = Wiring(
        Settings(
            registry="ghcr.io",
            image="acme/tools/runner",
            registry_token=SecretStr("ghp_x"),
            cleanup_ghcr_owner_kind="user",
            github_api_url="http://127.0.0.1:1",
        )
    ).cleanup_target()
    assert isinstance(ghcr, GhcrPackage)
    assert (ghcr.owner, ghcr.package, ghcr.owner_kind) == ("acme", "tools/runner", "user")
    ghcr.close()


def test_missing_image_or_ghcr_token_is_a_clear_error() -> None:
    with pytest.raises(ValidationError, match="PREVIEWS_IMAGE"):
        Wiring(Settings()).cleanup_image()
    assert Wiring(Settings(cleanup_repository="Acme/App")).cleanup_image() == "acme/app"
    with pytest.raises(ValidationError, match="PREVIEWS_REGISTRY_TOKEN"):
        Wiring(Settings(registry="ghcr.io", image="acme/app")).cleanup_target()


def test_github_client_from_the_credentials() -> None:
    assert Wiring(Settings()).github() is None
    with Wiring(Settings(github_token=SecretStr("t"))).github() as c:  # type: ignore[union-attr]
        assert repr(c) == "GitHubClient(base_url='https://api.github.com', auth=token)"
    with pytest.raises(ValidationError, match="together"):
        Wiring(Settings(github_app_id=1)).github()


def test_a_github_app_wins_over_a_token() -> None:
    with FakeGitHub() as gh:
        key = gh.enable_app()
        gh.add_pull(REPO, 1, head_sha=HEAD)
        settings = Settings(
            github_api_url=gh.url,
            github_app_id=12345,
            github_app_private_key=SecretStr(key),
            github_app_installation_id=67890,
            github_token=SecretStr("ignored-when-an-app-is-configured"),
        )
        client = Wiring(settings).github()
        assert client is not None
        with client:
            assert repr(client).endswith("auth=app)")
            client.get_pull(REPO, 1)
        assert len(gh.issued_tokens) == 1


def test_infra_target_prefers_the_infra_repository() -> None:
    both = Settings(
        infra_repository=INFRA,
        infra_webhook_url="https://infra.example/hook",
        infra_webhook_secret=SecretStr("k"),
    )
    with GitHubClient(token=SecretStr("t")) as github:
        assert isinstance(Wiring(both).infra_target(github), infra.GitHubDispatchTarget)
    hook_only = Settings(infra_webhook_url="https://infra.example/hook", infra_webhook_secret=SecretStr("k"))
    target = Wiring(hook_only).infra_target(None)
    assert isinstance(target, infra.WebhookTarget)
    assert repr(target) == "WebhookTarget('https://infra.example/hook')"
    no_secret = Wiring(Settings(infra_webhook_url="https://infra.example/hook")).infra_target(None)
    assert isinstance(no_secret, infra.NoTarget)
    assert "SECRET" in no_secret.reason
    assert Wiring(Settings()).infra_target(None) == infra.NoTarget()
    without_github = Wiring(Settings(infra_repository=INFRA)).infra_target(None)
    assert isinstance(without_github, infra.NoTarget)
    assert "no GitHub credentials" in without_github.reason


def test_git_source_and_push_registry_carry_the_settings() -> None:
    wiring = Wiring(
        Settings(registry="127.0.0.1:5000", git_url_template="file:///r/{repository}.git", app_dir="src")
    )
    source = wiring.git()
    assert (source.url_template, source.app_dir, source.token) == ("file:///r/{repository}.git", "src", None)
    with wiring.registry() as registry:
        assert registry.url == "http://127.0.0.1:5000"


def test_the_credentials_block_hands_out_clients_with_its_secrets() -> None:
    from blocks import PreviewsCredentials

    block = PreviewsCredentials(github_token=SecretStr("ghp_from_block"), registry_username="robot")
    wiring = block.wiring(Settings(registry="127.0.0.1:5000"))
    with wiring.github() as github:  # type: ignore[union-attr]
        assert repr(github) == "GitHubClient(base_url='https://api.github.com', auth=token)"
    assert wiring.settings.registry_username == "robot"
    assert "ghp_from_block" not in repr(wiring)
