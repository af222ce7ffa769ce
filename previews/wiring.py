"""The composition root: the one place that builds the clients of `previews` from :class:`Settings`.

Adapters take plain values (URLs, tokens, timeouts) and never see ``Settings``; flows, the CLI and the blocks
ask a :class:`Wiring` for ready clients instead of building their own. Each method builds a fresh client
(the caller closes it); adapters are imported when first asked for, so the webhook receiver never loads
Prefect, Docker or git, and a flow run never loads the receiver.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import TYPE_CHECKING

from pydantic import SecretStr

from previews.core.buildkit import parse_build_secrets, resolve_build_secrets
from previews.core.checks import ReportMode, report_mode
from previews.core.names import parse_image_repository
from previews.core.retention import Backend, RetentionRules
from previews.errors import ValidationError
from previews.redact import Redactor
from previews.settings import Settings

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from previews.docker_engine import DockerEngine, RegistryLogin
    from previews.git import GitSource
    from previews.github.client import GitHubClient
    from previews.github.infra import InfraTarget, NoTarget
    from previews.github.reporting import Reporter
    from previews.ingress.forwarder import Forwarder
    from previews.ingress.outbox import Outbox
    from previews.pool import PoolLimits
    from previews.registry import CleanupTarget
    from previews.registry.oci import OciRegistry
    from previews.run_history import RunHistory
    from previews.runs import PrefectRuns

# A registry API call of the pipeline (is this tag published? which images does the PR have?) is short.
REGISTRY_API_TIMEOUT = 60.0


class Wiring:
    """Builds every client from one :class:`Settings` (environment, blocks, or values a test passes)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __repr__(self) -> str:
        return f"Wiring(registry={self.settings.registry!r})"

    # --- GitHub -------------------------------------------------------------------------------------------

    def github(self) -> GitHubClient | None:
        """The GitHub REST client, or None when no GitHub credentials are set.

        A GitHub App (id, key and installation, all three) wins over a token. The client makes one attempt
        per call: retries belong to the flow's tasks.
        """
        from previews.github.app_auth import AppCredentials
        from previews.github.client import GitHubClient

        s = self.settings
        app: AppCredentials | None = None
        if s.github_app_id or s.github_app_private_key or s.github_app_installation_id:
            if not (s.github_app_id and s.github_app_private_key and s.github_app_installation_id):
                raise ValidationError(
                    "PREVIEWS_GITHUB_APP_ID",
                    "a GitHub App needs PREVIEWS_GITHUB_APP_ID, PREVIEWS_GITHUB_APP_PRIVATE_KEY and "
                    "PREVIEWS_GITHUB_APP_INSTALLATION_ID together",
                )
            app = AppCredentials(
                app_id=s.github_app_id,
                private_key=s.github_app_private_key,
                installation_id=s.github_app_installation_id,
            )
        token = s.github_token
        if app is None and (token is None or not token.get_secret_value()):
            return None
        return GitHubClient(base_url=s.github_api_url, token=None if app else token, app=app)

    def report_mode(self) -> ReportMode:
        """``PREVIEWS_GITHUB_REPORT``, checked: check runs need a GitHub App (:func:`core.checks.report_mode`)."""
        s = self.settings
        has_app = bool(s.github_app_id and s.github_app_private_key and s.github_app_installation_id)
        return report_mode(s.github_report, has_app=has_app)

    def redactor(self) -> Redactor:
        """A redactor that knows every secret of these settings (for text sent to GitHub)."""
        s = self.settings
        secrets = [
            s.registry_token,
            s.git_token,
            s.siblings_git_token,
            s.github_token,
            s.github_app_private_key,
            s.infra_webhook_secret,
            s.webhook_secret,
            s.prefect_api_key,
            s.prefect_api_auth_string,
            *s.build_secret_values.values(),
        ]
        return Redactor(secrets)

    def reporter(
        self,
        github: GitHubClient | None,
        repository: str,
        *,
        run_url: str | None,
        run_id: str | None,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ) -> Reporter:
        """Where a run reports: commit statuses, check runs or both, per :meth:`report_mode`."""
        from previews.github.checks import CheckReporter
        from previews.github.reporting import Reporters
        from previews.github.statuses import StatusReporter

        mode, s = self.report_mode(), self.settings
        members: list[Reporter] = []
        if mode.statuses:
            members.append(StatusReporter(github, repository, s.status_context, run_url, logger))
        if mode.checks and github is not None:
            redact = self.redactor()
            members.append(CheckReporter(github, repository, s.check_name, run_url, run_id, logger, redact))
        return members[0] if len(members) == 1 else Reporters(tuple(members))

    def infra_target(self, github: GitHubClient | None) -> InfraTarget | NoTarget:
        """The infra repository (needs GitHub credentials), else the infra webhook, else no target."""
        from previews.github.infra import GitHubDispatchTarget, NoTarget, WebhookTarget

        s = self.settings
        if s.infra_repository:
            if github is None:
                return NoTarget(
                    "no GitHub credentials for the infra repository (set PREVIEWS_GITHUB_TOKEN or a GitHub "
                    "App); nobody was notified"
                )
            return GitHubDispatchTarget(github, s.infra_repository)
        if s.infra_webhook_url:
            if s.infra_webhook_secret is None or not s.infra_webhook_secret.get_secret_value():
                return NoTarget("PREVIEWS_INFRA_WEBHOOK_SECRET is not set; nobody was notified")
            return WebhookTarget(s.infra_webhook_url, s.infra_webhook_secret)
        return NoTarget()

    # --- build and push -----------------------------------------------------------------------------------

    def git(self) -> GitSource:
        """Where to fetch the PR and its siblings from, each with its own token."""
        from previews.git import GitSource

        s = self.settings
        return GitSource(
            url_template=s.git_url_template,
            token=s.app_git_token(),
            siblings_token=s.sibling_git_token(),
            app_dir=s.app_dir,
        )

    def build_secrets(self) -> dict[str, SecretStr]:
        """``PREVIEWS_BUILD_SECRETS`` with their values: the credentials block's, else this process's environment."""
        s = self.settings
        return resolve_build_secrets(
            parse_build_secrets(s.build_secrets), environ=os.environ, stored=s.build_secret_values
        )

    def registry_login(self) -> RegistryLogin | None:
        """The push registry's credentials, for the push, the build's Docker CLI and the cache pull."""
        from previews.docker_engine import RegistryLogin

        s = self.settings
        if s.registry_username is None or s.registry_token is None:
            return None
        return RegistryLogin(s.registry, s.registry_username, s.registry_token)

    def docker(self) -> DockerEngine:
        """The Docker engine at ``DOCKER_HOST`` (or the default socket); build and push bound their own time."""
        from previews.docker_engine import DockerEngine

        return DockerEngine.from_env(timeout=max(self.settings.build_timeout, self.settings.push_timeout))

    def registry(self) -> OciRegistry:
        """The push registry's API with the push credentials (published? the PR's images?)."""
        from previews.registry.oci import OciRegistry, registry_url

        s = self.settings
        return OciRegistry(
            registry_url(s.registry),
            username=s.registry_username,
            password=s.registry_token,
            timeout=min(s.push_timeout, REGISTRY_API_TIMEOUT),
        )

    def prefect_runs(self) -> PrefectRuns:
        """Flow runs of the Prefect API this process talks to (``PREFECT_API_URL``)."""
        from prefect.client.orchestration import get_client

        from previews.runs import PrefectRuns

        return PrefectRuns(get_client(sync_client=True))

    def pool_limits(self) -> PoolLimits:
        """Work-pool concurrency limits of the Prefect API this process talks to (``previews pool-limit``)."""
        from prefect.client.orchestration import get_client

        from previews.pool import PoolLimits

        return PoolLimits(get_client(sync_client=True))

    def run_history(self) -> RunHistory:
        """Preview runs of the Prefect API this process talks to, for ``previews status``."""
        from prefect.client.orchestration import get_client

        from previews.run_history import RunHistory

        return RunHistory(get_client(sync_client=True))

    def reconcile_github(self) -> tuple[tuple[str, ...], GitHubClient]:
        """The repositories to reconcile and the GitHub client that reads them; either missing is bad config."""
        repositories = self.settings.reconcile_repository_names()
        if not repositories:
            raise ValidationError(
                "PREVIEWS_RECONCILE_REPOSITORIES",
                "no repository to reconcile (set it, or PREVIEWS_ALLOWED_REPOSITORIES)",
            )
        github = self.github()
        if github is None:
            raise ValidationError(
                "PREVIEWS_GITHUB_TOKEN", "reconcile reads GitHub: set a token (or a GitHub App)"
            )
        return repositories, github

    # --- cleanup ------------------------------------------------------------------------------------------

    def cleanup_image(self) -> str:
        """The image repository to clean: ``PREVIEWS_IMAGE``, else ``PREVIEWS_CLEANUP_REPOSITORY`` lower-cased."""
        image = self.settings.image or self.settings.cleanup_repository
        if not image:
            raise ValidationError(
                "PREVIEWS_IMAGE", "set the image repository to clean (or PREVIEWS_CLEANUP_REPOSITORY)"
            )
        return parse_image_repository(image, field="PREVIEWS_IMAGE")

    def cleanup_backend(self) -> Backend:
        """``PREVIEWS_REGISTRY_KIND``, defaulting to GHCR for ghcr.io and OCI for any other registry."""
        if self.settings.registry_kind:
            return Backend(self.settings.registry_kind)
        return Backend.GHCR if self.settings.registry == "ghcr.io" else Backend.OCI

    def retention_rules(self) -> RetentionRules:
        """The retention rules from ``PREVIEWS_CLEANUP_*`` and ``PREVIEWS_PROTECTED_TAGS``."""
        s = self.settings
        return RetentionRules(
            grace=timedelta(hours=s.cleanup_grace_hours),
            keep_per_open_pr=s.cleanup_keep_per_open_pr,
            ttl=timedelta(days=s.cleanup_ttl_days),
            protected=s.protected_tag_patterns(),
        )

    def cleanup_target(self) -> CleanupTarget:
        """The image the cleanup acts on: an OCI repository, or a GHCR package (GitHub Packages API)."""
        from previews.github.packages import GhcrPackage, split_image
        from previews.registry.oci import OciRegistry, OciRepository, registry_url

        s = self.settings
        image, token = self.cleanup_image(), s.registry_token
        if self.cleanup_backend() is Backend.GHCR:
            if token is None or not token.get_secret_value():
                raise ValidationError(
                    "PREVIEWS_REGISTRY_TOKEN", "GHCR cleanup needs a token with delete:packages"
                )
            owner, package = split_image(image)
            # ghcr.io's token endpoint takes Basic <any user>:<PAT>; the owner stands in without a username.
            manifests = OciRegistry(
                registry_url(s.registry), username=s.registry_username or owner, password=token
            )
            return GhcrPackage(
                owner=owner,
                package=package,
                token=token,
                owner_kind=s.cleanup_ghcr_owner_kind,
                api_url=s.github_api_url,
                deletes_per_minute=s.cleanup_deletes_per_minute,
                manifests=manifests,
            )
        registry = OciRegistry(registry_url(s.registry), username=s.registry_username, password=token)
        return OciRepository(registry, image, concurrency=s.cleanup_concurrency)

    # --- receiver -----------------------------------------------------------------------------------------

    def outbox(self) -> Outbox:
        """The receiver's durable outbox (SQLite at ``PREVIEWS_OUTBOX_PATH``)."""
        from previews.ingress.outbox import Outbox

        return Outbox(self.settings.outbox_path)

    def forwarder(self, outbox: Outbox) -> Forwarder:
        """The forwarder from ``outbox`` to Prefect's events API (``PREFECT_API_URL`` and its credentials)."""
        from previews.ingress.forwarder import Forwarder

        s = self.settings
        return Forwarder(
            outbox,
            api_url=s.prefect_api_url,
            api_key=s.prefect_api_key,
            auth_string=s.prefect_api_auth_string,
            batch_size=s.forwarder_batch_size,
            poll_seconds=s.forwarder_poll_seconds,
            max_backoff=s.forwarder_max_backoff,
            retention_seconds=s.outbox_retention_hours * 3600,
        )

    def receiver_app(self, *, forwarder_enabled: bool = True, allow_unsigned: bool = False) -> Starlette:
        """The webhook receiver with its outbox and forwarder.

        Refuses (:class:`ValidationError`) without ``PREVIEWS_WEBHOOK_SECRET`` unless ``allow_unsigned``.
        """
        from previews.ingress.app import ReceiverConfig, allowed_repositories, create_app, require_secret
        from previews.ingress.forwarder import prefect_headers

        s = self.settings
        config = ReceiverConfig(
            webhook_secret=require_secret(s.webhook_secret, allow_unsigned=allow_unsigned),
            allowed_repositories=allowed_repositories(s.allowed_repositories),
            max_body_bytes=s.max_body_bytes,
            body_read_timeout=s.body_read_timeout,
            max_concurrent_deliveries=s.max_concurrent_deliveries,
            health_headers=prefect_headers(s.prefect_api_key, s.prefect_api_auth_string),
            check_app_id=s.github_app_id,
            check_name=s.check_name,
        )
        outbox = self.outbox()
        forwarder = self.forwarder(outbox)
        return create_app(config, outbox=outbox, forwarder=forwarder, forwarder_enabled=forwarder_enabled)
