"""Commit statuses on the PR's head SHA: a status update never makes a build fail.

Every terminal outcome posts a state other than ``pending`` so a required check never hangs, and a status is
always posted: a flow-run URL that is not http(s) (a temporary Prefect server of ``previews build`` has none)
is left out rather than have GitHub refuse the whole status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from previews.core.checks import RunDetail
from previews.core.names import FULL_SHA_RE
from previews.core.status import StatusUpdate
from previews.errors import PreviewsError
from previews.github.client import GitHubClient


def usable_link(url: str) -> bool:
    """True for an absolute http(s) URL with a host: what GitHub accepts as a status ``target_url``."""
    scheme, sep, rest = url.partition("://")
    return bool(sep) and scheme.lower() in ("http", "https") and bool(rest.split("/", 1)[0])


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

    def __post_init__(self) -> None:
        if self.target_url is not None and not usable_link(self.target_url):
            self.logger.info("commit statuses go without a link: %r is not an http(s) URL", self.target_url)
            self.target_url = None

    def use_sha(self, sha: str) -> None:
        """Post on ``sha`` from now on (a full SHA, e.g. once a short one was resolved)."""
        if FULL_SHA_RE.fullmatch(sha):
            self.sha = sha

    def started(self) -> None:
        """The build work begins: a commit status has no state for that beyond ``pending``; nothing to post."""

    def post(self, update: StatusUpdate, detail: RunDetail | None = None) -> None:
        """Post ``update`` on this run's SHA; log (never raise) when GitHub refuses or is unreachable.

        A commit status carries the description only: ``detail`` is for check runs."""
        self.last = update
        if self.client is None:
            self.logger.info("commit status (not posted, no GitHub credentials): %s", update.description)
            return
        if self.sha is None:
            self.logger.warning("commit status not posted: the head SHA is not known in full yet")
            return
        try:
            self._create(self.client, self.repository, self.sha, update, self.target_url)
            self.logger.info("commit status %s on %s: %s", update.state, self.sha[:12], update.description)
        except PreviewsError as exc:
            self.logger.warning("could not post the commit status (%s): %s", update.state, exc)

    def post_elsewhere(self, repository: str, sha: str, update: StatusUpdate) -> None:
        """Post ``update`` on another run's commit (a run this one superseded), without a link; never raises."""
        if self.client is None or not FULL_SHA_RE.fullmatch(sha):
            return
        try:
            self._create(self.client, repository, sha, update, None)
        except PreviewsError as exc:
            self.logger.warning("could not post the %s status on %s: %s", update.state, sha[:12], exc)

    def _create(
        self, client: GitHubClient, repository: str, sha: str, update: StatusUpdate, target_url: str | None
    ) -> None:
        client.create_status(
            repository,
            sha,
            state=update.state,
            context=self.context,
            description=update.description,
            target_url=target_url,
        )
