"""The secrets the pipeline needs, as one Prefect block."""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from prefect.blocks.fields import SecretDict
from pydantic import Field, SecretStr

from previews.settings import Settings


class PreviewsCredentials(Block):
    """Registry, git and GitHub credentials for `previews`. Every secret is a ``SecretStr``."""

    _block_type_name = "Previews Credentials"
    _block_type_slug = "previews-credentials"
    _description = (
        "Credentials for the previews pipeline: registry push token, git token, GitHub token or App key."
    )

    registry_username: str | None = Field(default=None, description="Registry user (GHCR: the account name).")
    registry_token: SecretStr | None = Field(
        default=None, description="Registry password or token with push rights."
    )
    git_token: SecretStr | None = Field(
        default=None, description="Token to fetch the app repository (and siblings, if no sibling token)."
    )
    siblings_git_token: SecretStr | None = Field(
        default=None, description="Token to fetch sibling repositories (and the app, if no git token)."
    )
    # SecretDict, not dict[str, SecretStr]: Prefect masks a SecretDict's values in the block document its API
    # serves, but serves the values of a plain dict of SecretStr in clear (measured with Prefect 3.9).
    build_secrets: SecretDict | None = Field(
        default=None,
        description="Build secret values by the ENV_VAR names PREVIEWS_BUILD_SECRETS gives (id=ENV_VAR,...).",
    )
    github_token: SecretStr | None = Field(
        default=None, description="GitHub token for statuses and dispatches."
    )
    github_app_private_key: SecretStr | None = Field(
        default=None, description="GitHub App private key (PEM)."
    )
    infra_webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC secret of the infra webhook."
    )

    def apply(self, settings: Settings) -> Settings:
        """Return ``settings`` with every credential this block holds filled in."""
        update: dict[str, Any] = {
            name: getattr(self, name)
            for name in (
                "registry_username",
                "registry_token",
                "git_token",
                "siblings_git_token",
                "github_token",
                "github_app_private_key",
                "infra_webhook_secret",
            )
            if getattr(self, name) is not None
        }
        if self.build_secrets is not None:
            stored = {str(k): SecretStr(str(v)) for k, v in self.build_secrets.get_secret_value().items()}
            update["build_secret_values"] = {**settings.build_secret_values, **stored}
        return settings.model_copy(update=update)
