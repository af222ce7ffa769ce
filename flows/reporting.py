"""Commit statuses on the PR's head SHA: a status update never makes a build fail.

Every terminal outcome posts a state other than ``pending`` so a required check never hangs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prefect.runtime import flow_run

from previews.core.names import FULL_SHA_RE
from previews.core.status import StatusUpdate
from previews.errors import PreviewsError
from previews.github.client import GitHubClient
from previews.settings import Settings


def flow_run_url(settings: Settings) -> str | None:
    """The Prefect UI page of the current flow run (``PREVIEWS_UI_URL`` wins over Prefect's own setting)."""
    run_id = flow_run.id
    if not run_id:
        return None
    if settings.ui_url:
        return f"{settings.ui_url.rstrip('/')}/runs/flow-run/{run_id}"
    url = flow_run.ui_url
    return str(url) if url else None


@dataclass
class StatusReporter:
    """Posts commit statuses for one PR; without GitHub credentials it only logs what it would say."""

    client: GitHubClient | None
    repository: str
    context: str
    target_url: str | None
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger]
    sha: str | None = None
    last: StatusUpdate | None = None

    def use_sha(self, sha: str) -> None:
        """Post on ``sha`` from now on (a full SHA, e.g. once a short one was resolved)."""
        if FULL_SHA_RE.fullmatch(sha):
            self.sha = sha

    def post(self, update: StatusUpdate) -> None:
        """Post ``update``; log (never raise) when GitHub refuses or is unreachable."""
        self.last = update
        if self.client is None:
            self.logger.info("commit status (not posted, no GitHub credentials): %s", update.description)
            return
        if self.sha is None:
            self.logger.warning("commit status not posted: the head SHA is not known in full yet")
            return
        try:
            self.client.create_status(
                self.repository,
                self.sha,
                state=update.state,
                context=self.context,
                description=update.description,
                target_url=self.target_url,
            )
            self.logger.info("commit status %s on %s: %s", update.state, self.sha[:12], update.description)
        except PreviewsError as exc:
            self.logger.warning("could not post the commit status (%s): %s", update.state, exc)
