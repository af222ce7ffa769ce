"""Settings of `previews`, read from the environment (prefix ``PREVIEWS_``) or passed in by a caller.

One composition place builds these and hands them down; nothing reads the environment behind a caller's back.
Secrets are ``SecretStr`` and are unwrapped only at the call that needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from previews.core.labels import github_server_url
from previews.core.names import parse_registry
from previews.core.paths import PathFilter, choose_filter
from previews.core.plan import BuildConfig


class Settings(BaseSettings):
    """Everything configurable about the pipeline, the receiver and the cleanup."""

    model_config = SettingsConfigDict(env_prefix="PREVIEWS_", extra="ignore", frozen=True)

    # Prefect blocks loaded by the flows at run time (names); they override the environment.
    credentials_block: str | None = None
    config_block: str | None = None

    # Registry and image
    registry: str = "ghcr.io"
    image: str | None = Field(default=None, description="image repository; default: the GitHub repository")
    registry_username: str | None = None
    registry_token: SecretStr | None = None
    registry_kind: Literal["oci", "ghcr"] | None = None
    tag_sha_length: int = Field(default=40, ge=7, le=40)
    protected_tags: str = Field(default="", description="extra comma-separated protected tag globs")

    # Cleanup of stale pr-* tags (issue 6)
    cleanup_repository: str | None = Field(
        default=None, description="GitHub owner/name whose PR states decide the cleanup; default: the image"
    )
    cleanup_grace_hours: float = Field(default=24.0, ge=0, le=24 * 365)
    cleanup_keep_per_open_pr: int = Field(default=1, ge=1, le=100)
    cleanup_ttl_days: float = Field(default=30.0, gt=0, le=3650)
    cleanup_deletes_per_minute: float = Field(default=180.0, gt=0, le=1000)
    cleanup_ghcr_owner_kind: Literal["org", "user"] = "org"

    # Source checkout
    git_url_template: str = "https://github.com/{repository}.git"
    git_token: SecretStr | None = Field(
        default=None,
        description="token for the app repository; also for siblings when no sibling token is set",
    )
    siblings_git_token: SecretStr | None = Field(
        default=None, description="token for sibling repositories; also for the app when no git_token is set"
    )
    siblings: str = Field(default="", description="name=owner/repo@ref,... checked out beside the app")
    workspace_root: Path | None = None
    app_dir: str = Field(default="app", description="directory of the PR checkout inside the workspace")

    # Build (the production build's settings)
    dockerfile: str = "Dockerfile"
    build_context: str = "."
    build_target: str | None = None
    build_args: str = Field(default="", description="KEY=VALUE,... passed as docker build args")
    build_secrets: str = Field(
        default="", description="id=ENV_VAR,... build secrets for RUN --mount=type=secret,id=<id>"
    )
    build_secret_values: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="build secret values by ENV_VAR name, filled from the credentials block (not from here)",
    )
    fork_build_secrets: bool = Field(
        default=False,
        description="pass the build secrets to builds of fork PRs too (their Dockerfile can read them)",
    )
    docker_cli: str | None = Field(
        default=None,
        description="the Docker client that builds; default: buildx where it exists, else one "
        "that supports DOCKER_BUILDKIT=1",
    )
    build_timeout: float = Field(default=1800.0, gt=0)
    push_timeout: float = Field(default=900.0, gt=0)
    # Build cache and reruns (issue 5)
    cache_from_enabled: bool = Field(
        default=True, description="pull the PR's newest image (or the fallback) and build with cache_from"
    )
    cache_from_fallback: str | None = Field(
        default=None, description="full image ref used as cache when the PR has no image yet (base branch)"
    )

    # Retries of transient failures (registry, git, GitHub)
    retries: int = Field(default=3, ge=0, le=10)
    retry_delay: float = Field(default=2.0, ge=0, le=300)

    # GitHub
    github_api_url: str = "https://api.github.com"
    github_token: SecretStr | None = None
    github_app_id: int | None = None
    github_app_private_key: SecretStr | None = None
    github_app_installation_id: int | None = None
    infra_repository: str | None = None
    infra_webhook_url: str | None = None
    infra_webhook_secret: SecretStr | None = None
    paths_ignore: str | None = Field(
        default=None,
        description="GitHub Actions paths-ignore patterns, comma-separated; default docs/**,**/*.md",
    )
    paths: str | None = Field(default=None, description="GitHub Actions paths patterns ('!' excludes)")
    fork_policy: Literal["skip", "label", "allow"] = "skip"
    fork_label: str = "safe-to-preview"
    status_context: str = "previews/image"
    ui_url: str | None = Field(default=None, description="Prefect UI base URL for status links")
    github_report: str | None = Field(
        default=None,
        description="status, check or both; default both with a GitHub App, else status (core/checks.py)",
    )
    check_name: str = Field(default="preview-image", min_length=1, max_length=255)

    # Receiver
    webhook_secret: SecretStr | None = None
    allowed_repositories: str = ""
    outbox_path: Path = Path(".state/outbox.sqlite3")
    # Receiver limits (README "Receiver limits"): 1 MiB is 33x GitHub's largest pull_request payloads here.
    max_body_bytes: int = Field(default=1024 * 1024, gt=0, le=25 * 1024 * 1024)
    max_concurrent_deliveries: int = Field(default=64, ge=1, le=4096)
    body_read_timeout: float = Field(default=10.0, gt=0, le=300, description="seconds to receive a body")
    outbox_retention_hours: float = Field(default=168.0, ge=0)
    forwarder_poll_seconds: float = Field(default=1.0, gt=0, le=60, description="outbox poll interval")
    forwarder_max_backoff: float = Field(
        default=30.0, ge=1, le=600, description="backoff cap while Prefect is down"
    )
    forwarder_batch_size: int = Field(default=50, ge=1, le=500)
    # Where the forwarder sends events: Prefect's own variables (no PREVIEWS_ prefix), as the prefect CLI reads them.
    prefect_api_url: str | None = Field(default=None, validation_alias="prefect_api_url")
    prefect_api_key: SecretStr | None = Field(default=None, validation_alias="prefect_api_key")
    prefect_api_auth_string: SecretStr | None = Field(
        default=None, validation_alias="prefect_api_auth_string"
    )

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str) -> str:
        return parse_registry(value, field="PREVIEWS_REGISTRY")

    @property
    def has_push_credentials(self) -> bool:
        """True when a registry username and token are both configured."""
        return bool(self.registry_username) and bool(
            self.registry_token and self.registry_token.get_secret_value()
        )

    def protected_tag_patterns(self) -> tuple[str, ...]:
        """Default protected tags plus the configured extras."""
        from previews.core.tags import DEFAULT_PROTECTED

        extra = tuple(p.strip() for p in self.protected_tags.split(",") if p.strip())
        return DEFAULT_PROTECTED + extra

    def app_git_token(self) -> SecretStr | None:
        """The app repository's token: ``PREVIEWS_GIT_TOKEN``, else the siblings' token."""
        return self.git_token or self.siblings_git_token

    def sibling_git_token(self) -> SecretStr | None:
        """The sibling repositories' token: ``PREVIEWS_SIBLINGS_GIT_TOKEN``, else the app's token."""
        return self.siblings_git_token or self.git_token

    def path_filter(self) -> PathFilter:
        """The docs-only filter: ``PREVIEWS_PATHS`` or ``PREVIEWS_PATHS_IGNORE`` (both set is an error)."""
        return choose_filter(paths=self.paths, paths_ignore=self.paths_ignore)

    def build_config(self) -> BuildConfig:
        """The settings the build plan reads, as plain values (:mod:`previews.core.plan`)."""
        return BuildConfig(
            registry=self.registry,
            image=self.image,
            siblings=self.siblings,
            tag_sha_length=self.tag_sha_length,
            protected_tags=self.protected_tag_patterns(),
            fork_policy=self.fork_policy,
            fork_label=self.fork_label,
            path_filter=self.path_filter(),
            dockerfile=self.dockerfile,
            build_context=self.build_context,
            build_target=self.build_target,
            build_args=self.build_arg_map(),
            build_timeout=self.build_timeout,
            has_push_credentials=self.has_push_credentials,
            fork_build_secrets=self.fork_build_secrets,
            server_url=github_server_url(self.github_api_url),
            cache_from_enabled=self.cache_from_enabled,
            cache_from_fallback=self.cache_from_fallback,
        )

    def build_arg_map(self) -> dict[str, str]:
        """Parse ``KEY=VALUE,...`` into a dict; keys must be shell-variable-like names."""
        import re

        from previews.errors import ValidationError

        result: dict[str, str] = {}
        for raw in self.build_args.split(","):
            item = raw.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", key, re.ASCII):
                raise ValidationError("PREVIEWS_BUILD_ARGS", f"{item[:60]!r} is not KEY=VALUE")
            result[key] = value
        return result
