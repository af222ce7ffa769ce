"""What reconcile reads from GitHub: the open pull requests of a repository and our commit status per head.

Over :class:`~previews.github.client.GitHubClient` (one attempt per call, errors from its tree). A listing
must be complete (``require_all``): a PR on a page not read would look like a closed one. Every request is
counted (``requests``), and the reader stops before GitHub's hourly budget runs out: when the latest answer
left fewer than ``reserve`` requests, the next read raises :class:`TransientGitHubError` with the reset time,
so the builds' own status updates keep the rest. Cost per repository: one request per 100 open PRs, one per
head SHA that Prefect knows no run of (in flight, or ended), one per closed PR that still has a preview.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

from previews.core.forks import is_fork
from previews.core.names import parse_repository, parse_sha
from previews.core.reconcile import OpenPull, OurStatus
from previews.errors import GitHubError, GitHubNotFoundError, TransientGitHubError
from previews.github.client import GitHubClient, PullRequestInfo

PASSING = frozenset({"success", "neutral", "skipped"})
PER_PAGE = 100
MAX_PAGES = 100  # 10,000 open PRs per repository
RESERVE = 100


class _CheckRun(BaseModel):
    """The fields of a check run (``check-run`` schema) that say where it stands."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: int
    status: str
    conclusion: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None


class PullReader:
    """Reads open PRs, our report on a SHA and one PR's state, counting requests and minding the budget.

    Our report is the commit status ``context``, or with ``check_name`` (a deployment that reports through
    check runs only) the latest check run of that name: completed is terminal (``success`` when it passed,
    else ``failure``), anything else ``pending`` since it started.
    """

    def __init__(
        self, client: GitHubClient, *, context: str, check_name: str | None = None, reserve: int = RESERVE
    ) -> None:
        self.client = client
        self.context = context.lower()
        self.check_name = check_name
        self.reserve = reserve
        self._start = client.requests_sent

    @property
    def requests(self) -> int:
        """GitHub requests this reader sent."""
        return self.client.requests_sent - self._start

    def _budget(self, what: str) -> None:
        left = self.client.rate_remaining
        if left is not None and left < self.reserve:
            raise TransientGitHubError(
                f"GitHub {what}: stopped with {left} requests left in this hour's rate limit "
                f"(keeping {self.reserve} for the builds' commit statuses)",
                status=None,
            )

    def open_pulls(self, repository: str) -> list[OpenPull]:
        """Every open PR of ``repository`` (all pages, or :class:`GitHubError` when over the cap)."""
        repo = parse_repository(repository, field="PREVIEWS_RECONCILE_REPOSITORIES")
        self._budget(f"list pulls of {repo}")
        items = self.client.paginate(
            f"/repos/{repo}/pulls",
            params={"state": "open", "per_page": PER_PAGE},
            max_pages=MAX_PAGES,
            require_all=True,
        )
        pulls = []
        for item in items:
            info = PullRequestInfo.from_api(item)
            if info.state == "open":
                pulls.append(open_pull(info))
            self._budget(f"list pulls of {repo}")
        return pulls

    def our_status(self, repository: str, sha: str) -> OurStatus | None:
        """The latest status of our context (or check run) on ``sha``, or None when it has none."""
        self._budget(f"status of {sha[:12]}")
        if self.check_name is not None:
            return self._our_check(repository, sha, self.check_name)
        combined = self.client.combined_status(repository, sha)
        for status in combined.statuses:
            if status.context.lower() == self.context:
                return OurStatus(status.id, status.state, status.updated_at)
        return None

    def _our_check(self, repository: str, sha: str, name: str) -> OurStatus | None:
        repo, commit = parse_repository(repository), parse_sha(sha, field="sha", full=True)
        params: dict[str, str | int] = {"check_name": name, "filter": "latest", "per_page": 1}
        answer = self.client.request_json("GET", f"/repos/{repo}/commits/{commit}/check-runs", params=params)
        runs: Any = answer.get("check_runs") if isinstance(answer, dict) else None
        if not isinstance(runs, list):
            raise GitHubError("unexpected check run list shape from GitHub: no check_runs list")
        if not runs:
            return None
        try:
            run = _CheckRun.model_validate(runs[0])
        except PydanticValidationError as exc:
            raise GitHubError(f"unexpected check run shape from GitHub: {str(exc)[:200]}") from exc
        if run.status != "completed":
            return OurStatus(run.id, "pending", run.started_at)
        state = "success" if run.conclusion in PASSING else "failure"
        return OurStatus(run.id, state, run.completed_at or run.started_at)

    def pull_state(self, repository: str, number: int) -> str | None:
        """``open`` or ``closed``; None when GitHub has no such PR (deleted, or the repository is gone)."""
        self._budget(f"state of {repository}#{number}")
        try:
            return self.client.get_pull(repository, number).state
        except GitHubNotFoundError:
            return None


def open_pull(info: PullRequestInfo) -> OpenPull:
    """The event's parameters of an open PR, from GitHub's answer."""
    return OpenPull(
        repository=info.base_repository,
        number=info.number,
        head_sha=info.head_sha,
        base_sha=info.base_sha,
        fork=is_fork(info.head_repository, info.base_repository),
        labels=info.labels,
    )
