"""Non-secret pipeline configuration, as one Prefect block editable in the UI."""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from pydantic import Field

from previews.settings import Settings


class PreviewsConfig(Block):
    """Build and notification settings. Unset fields keep the value from the environment."""

    _block_type_name = "Previews Config"
    _block_type_slug = "previews-config"
    _description = "Registry, image, Dockerfile, siblings and GitHub settings of the previews pipeline."

    registry: str | None = Field(default=None, description="Registry host[:port], e.g. ghcr.io.")
    image: str | None = Field(default=None, description="Image repository; default the GitHub repository.")
    git_url_template: str | None = Field(default=None, description="e.g. https://github.com/{repository}.git")
    siblings: str | None = Field(
        default=None, description="name=owner/repo@ref,... checked out beside the app."
    )
    dockerfile: str | None = Field(default=None, description="Dockerfile path, relative to the app checkout.")
    build_context: str | None = Field(
        default=None, description="Build context, relative to the app checkout."
    )
    build_target: str | None = Field(default=None, description="Multi-stage target.")
    build_args: str | None = Field(default=None, description="KEY=VALUE,... (never secrets).")
    build_secrets: str | None = Field(
        default=None,
        description="id=ENV_VAR,... build secrets; values from that variable or the credentials block.",
    )
    github_api_url: str | None = None
    infra_repository: str | None = None
    infra_webhook_url: str | None = None
    paths_ignore: str | None = Field(
        default=None, description="GitHub Actions paths-ignore patterns, comma-separated."
    )
    paths: str | None = Field(
        default=None, description="GitHub Actions paths patterns ('!' excludes); not with paths_ignore."
    )
    fork_policy: str | None = None
    status_context: str | None = None

    def apply(self, settings: Settings) -> Settings:
        """Return ``settings`` overridden by every field set on this block, validated again."""
        update: dict[str, Any] = {
            name: value
            for name, value in self.model_dump(include=set(type(self).model_fields)).items()
            if value is not None and name in Settings.model_fields
        }
        merged = settings.model_dump() | update
        return Settings.model_validate(merged)
