"""Settings of `previews`, read from the environment (prefix ``PREVIEWS_``) or passed in by a caller.

One composition place builds these and hands them down; nothing reads the environment behind a caller's back.
Secrets are ``SecretStr`` and are unwrapped only at the call that needs them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from previews.core.labels import github_server_url
from previews.core.names import parse_registry
from previews.core.paths import PathFilter, choose_filter
from previews.core.plan import BuildConfig
from previews.core.reconcile import parse_repositories
from previews.errors import SettingsError, ValidationError


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
    cleanup_concurrency: int = Field(
        default=8, ge=1, le=32, description="deletions a cleanup runs at once on an OCI registry (GHCR: one)"
    )
    cleanup_ghcr_owner_kind: Literal["org", "user"] = "org"

    # Reconcile with GitHub (issue 14)
    reconcile_repositories: str | None = Field(
        default=None,
        description="comma-separated owner/name to reconcile; default: PREVIEWS_ALLOWED_REPOSITORIES",
    )
    reconcile_stale_minutes: float = Field(default=30.0, gt=0, le=7 * 24 * 60)
    reconcile_image_deployment: str = "preview-image/preview-image"
    reconcile_teardown_deployment: str = "preview-teardown/preview-teardown"
    stranded_pending_seconds: float = Field(
        default=300.0,
        ge=1,
        le=24 * 3600,
        description="reconcile reschedules a preview run Pending this long with no container "
        "(its worker died before starting it)",
    )

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

    def reconcile_repository_names(self) -> tuple[str, ...]:
        """``PREVIEWS_RECONCILE_REPOSITORIES`` (else ``PREVIEWS_ALLOWED_REPOSITORIES``), checked, in order."""
        if self.reconcile_repositories is not None:
            return parse_repositories(self.reconcile_repositories, field="PREVIEWS_RECONCILE_REPOSITORIES")
        return parse_repositories(self.allowed_repositories, field="PREVIEWS_ALLOWED_REPOSITORIES")

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


# --- settings as environment variables: names, allowed values, readable errors (issue 18) -------------------


def variable_of(field: str) -> str:
    """The environment variable of a settings field (``retries`` -> ``PREVIEWS_RETRIES``)."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    return (alias if isinstance(alias, str) else f"PREVIEWS_{field}").upper()


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def allowed_values(field: str) -> str | None:
    """What a field accepts, in words (``0 to 10``, ``'oci' or 'ghcr'``, ``true or false``); None for text."""
    from typing import get_args, get_origin

    info = Settings.model_fields[field]
    kind = info.annotation
    if get_origin(kind) is not Literal:
        kind = next((a for a in get_args(kind) if a is not type(None)), kind)
    if get_origin(kind) is Literal:
        return " or ".join(repr(v) for v in get_args(kind))
    if kind is bool:
        return "true or false"
    bounds = {type(m).__name__.lower(): getattr(m, type(m).__name__.lower()) for m in info.metadata}
    if "ge" in bounds and "le" in bounds:
        return f"{_number(bounds['ge'])} to {_number(bounds['le'])}"
    words = {"ge": "at least", "gt": "more than", "le": "at most", "lt": "less than"}
    parts = [f"{words[k]} {_number(v)}" for k, v in bounds.items() if k in words]
    if parts:
        return " and ".join(parts)
    return {int: "an integer", float: "a number"}.get(kind)  # type: ignore[arg-type]


_PROBLEMS = {
    "less_than_equal": "must be at most {le}",
    "less_than": "must be less than {lt}",
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be more than {gt}",
    "int_parsing": "is not an integer",
    "float_parsing": "is not a number",
    "bool_parsing": "is not a boolean",
    "literal_error": "is not one of the allowed values",
}


def _settings_error(error: Mapping[str, Any]) -> SettingsError:
    """One pydantic error as a :class:`SettingsError` naming the variable, the problem and what is allowed."""
    field = str(error["loc"][0]) if error.get("loc") else ""
    if field not in Settings.model_fields:
        return SettingsError("PREVIEWS_*", "?", str(error.get("msg", "invalid")))
    variable = variable_of(field)
    secret = "SecretStr" in str(Settings.model_fields[field].annotation)
    raw = error.get("input")
    shown = "<hidden>" if secret else repr(raw)[:60] if not isinstance(raw, str) else raw[:60]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ValidationError):
        problem = cause.reason
    else:
        template = _PROBLEMS.get(str(error.get("type")))
        ctx = {
            k: _number(v) if isinstance(v, int | float) else v for k, v in (error.get("ctx") or {}).items()
        }
        problem = template.format(**ctx) if template else str(error.get("msg"))
    allowed = allowed_values(field)
    return SettingsError(variable, shown, f"{problem} (allowed: {allowed})" if allowed else problem)


def load_settings(**values: Any) -> Settings:
    """``Settings()`` from the environment, refusing a bad value with a :class:`SettingsError` (never pydantic's).

    The message names the variable, what is wrong with its value and the allowed range, e.g.
    ``PREVIEWS_RETRIES=99: must be at most 10 (allowed: 0 to 10)``; further bad variables are named after it.
    """
    try:
        return Settings(**values)
    except PydanticSettingsError as exc:  # a structured field whose variable is not JSON
        match = re.search(r'field "(\w+)"', str(exc))
        field = match.group(1) if match else None
        if field not in Settings.model_fields:
            raise SettingsError("PREVIEWS_*", "?", str(exc)) from None
        secret = "SecretStr" in str(Settings.model_fields[field].annotation)
        raise SettingsError(variable_of(field), "<hidden>" if secret else "?", "is not valid JSON") from None
    except PydanticValidationError as exc:
        errors = [_settings_error(e) for e in exc.errors()]
        first = errors[0]
        if len(errors) > 1:
            others = ", ".join(e.variable for e in errors[1:])
            first.args = (f"{first.args[0]}; also refused: {others}",)
        raise first from None
