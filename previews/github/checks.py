"""GitHub check runs (the Checks API): create and update one, and the reporter that drives a run's check.

``POST /repos/{owner}/{repo}/check-runs`` (201) and ``PATCH /repos/{owner}/{repo}/check-runs/{id}`` (200),
shapes from GitHub's OpenAPI description (the ``check-run`` schema, ``tests/fixtures/github/api/``). Only a
GitHub App can create check runs (permission ``checks: write``); a token gets 403.

Like commit statuses, a check update never makes a build fail: a refusal or an outage is logged. Text that
reaches GitHub (a failing step's log tail) goes through the redactor first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

from previews.core import checks
from previews.core.checks import CheckOutput, CheckStatus, RunDetail
from previews.core.names import FULL_SHA_RE, parse_repository, parse_sha
from previews.core.status import CheckConclusion, StatusUpdate
from previews.errors import GitHubError, PreviewsError, ValidationError
from previews.github.client import GitHubClient

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


class CheckRun(BaseModel):
    """A check run as GitHub answers it (the fields `previews` reads of the ``check-run`` schema)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: int
    head_sha: str
    name: str
    status: Literal["queued", "in_progress", "completed", "waiting", "requested", "pending"]
    conclusion: CheckConclusion | Literal["stale"] | None
    details_url: str | None = None
    external_id: str | None = None
    html_url: str | None = None


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _http_url(url: str | None) -> str | None:
    """``url`` when it is an absolute http(s) URL with a host (GitHub refuses anything else as
    ``details_url``), else None: the check run then goes without a link rather than be refused."""
    if url is None:
        return None
    scheme, sep, rest = url.partition("://")
    usable = bool(sep) and scheme.lower() in ("http", "https") and bool(rest.split("/", 1)[0])
    return url if usable else None


def _check_run(answer: Any) -> CheckRun:
    try:
        return CheckRun.model_validate(answer)
    except PydanticValidationError as exc:
        raise GitHubError(f"unexpected check run shape from GitHub: {str(exc)[:200]}") from exc


def _body(
    status: CheckStatus,
    *,
    output: CheckOutput | None,
    conclusion: CheckConclusion | None,
    details_url: str | None,
    external_id: str | None,
    at: datetime,
) -> dict[str, Any]:
    if (status == "completed") != (conclusion is not None):
        raise ValidationError("conclusion", "is required with status completed, and only then")
    body: dict[str, Any] = {"status": status}
    if status == "in_progress":
        body["started_at"] = _stamp(at)
    if conclusion is not None:
        body.update(conclusion=conclusion, completed_at=_stamp(at))
    if output is not None:
        body["output"] = output.to_json()
    if _http_url(details_url) is not None:
        body["details_url"] = details_url
    if external_id:
        body["external_id"] = external_id
    return body


def create_check_run(
    client: GitHubClient,
    repository: str,
    *,
    name: str,
    head_sha: str,
    status: CheckStatus,
    output: CheckOutput | None = None,
    conclusion: CheckConclusion | None = None,
    details_url: str | None = None,
    external_id: str | None = None,
    at: datetime | None = None,
) -> CheckRun:
    """``POST /repos/{repository}/check-runs``. ``details_url`` is sent only when it is http(s)."""
    repo = parse_repository(repository)
    sha = parse_sha(head_sha, field="head_sha", full=True)
    if not name or len(name) > 255:
        raise ValidationError("name", "must be 1-255 characters")
    body = _body(
        status,
        output=output,
        conclusion=conclusion,
        details_url=details_url,
        external_id=external_id,
        at=at or datetime.now(UTC),
    )
    body.update(name=name, head_sha=sha)
    return _check_run(client.request_json("POST", f"/repos/{repo}/check-runs", json_body=body))


def update_check_run(
    client: GitHubClient,
    repository: str,
    check_run_id: int,
    *,
    status: CheckStatus,
    output: CheckOutput | None = None,
    conclusion: CheckConclusion | None = None,
    details_url: str | None = None,
    at: datetime | None = None,
) -> CheckRun:
    """``PATCH /repos/{repository}/check-runs/{check_run_id}``."""
    repo = parse_repository(repository)
    if not isinstance(check_run_id, int) or check_run_id <= 0:
        raise ValidationError("check_run_id", "must be a positive integer")
    body = _body(
        status,
        output=output,
        conclusion=conclusion,
        details_url=details_url,
        external_id=None,
        at=at or datetime.now(UTC),
    )
    answer = client.request_json("PATCH", f"/repos/{repo}/check-runs/{check_run_id}", json_body=body)
    return _check_run(answer)


def open_check_runs(client: GitHubClient, repository: str, sha: str, *, name: str) -> list[CheckRun]:
    """The check runs named ``name`` on ``sha`` that are not completed
    (``GET /repos/{repository}/commits/{sha}/check-runs?check_name=...&status=...``, newest first)."""
    repo = parse_repository(repository)
    commit = parse_sha(sha, field="sha", full=True)
    found: list[CheckRun] = []
    for status in ("queued", "in_progress"):
        params: dict[str, str | int] = {"check_name": name, "status": status, "per_page": 100}
        answer = client.request_json("GET", f"/repos/{repo}/commits/{commit}/check-runs", params=params)
        runs = answer.get("check_runs") if isinstance(answer, dict) else None
        if not isinstance(runs, list):
            raise GitHubError("unexpected check run list shape from GitHub: no check_runs list")
        found += [_check_run(item) for item in runs]
    return found


def complete_open_check_runs(
    client: GitHubClient,
    repository: str,
    sha: str,
    *,
    name: str,
    update: StatusUpdate,
    external_id: str | None = None,
    run_url: str | None = None,
) -> list[int]:
    """Complete the open check runs named ``name`` on ``sha`` (only the one of run ``external_id`` when
    given) with ``update``'s conclusion; returns their ids."""
    output = checks.final_output(update, None, _http_url(run_url))
    done: list[int] = []
    for old in open_check_runs(client, repository, sha, name=name):
        if external_id is not None and old.external_id != external_id:
            continue
        conclusion = checks.conclusion_of(update)
        update_check_run(client, repository, old.id, status="completed", output=output, conclusion=conclusion)
        done.append(old.id)
    return done


@dataclass
class CheckReporter:
    """Drives one run's check run: queued (``pending``), in_progress (:meth:`started`), completed.

    The check run is created on the first report, so a run that ends before it takes the work on (a
    duplicate of a run already building the SHA) creates none and never hides the other run's check.
    ``external_id`` is the flow run id. Failures to report are logged, never raised.
    """

    client: GitHubClient
    repository: str
    name: str
    details_url: str | None
    external_id: str | None
    logger: Logger
    redact: Callable[[str], str]
    sha: str | None = None
    last: StatusUpdate | None = None
    check_run: CheckRun | None = None

    def use_sha(self, sha: str) -> None:
        """Report on ``sha`` from now on (a full SHA); a new SHA starts a new check run."""
        if FULL_SHA_RE.fullmatch(sha) and sha != self.sha:
            self.sha, self.check_run = sha, None

    def started(self) -> None:
        """The build work begins: the check run goes ``in_progress``."""
        if self.check_run is not None and self.check_run.status == "in_progress":
            return
        self._send("in_progress", checks.in_progress_output(self._url), None)

    def post(self, update: StatusUpdate, detail: RunDetail | None = None) -> None:
        """``pending``: queue the check run (once); any other state completes it with its conclusion."""
        self.last = update
        if update.state == "pending":
            if self.check_run is None:
                self._send("queued", checks.queued_output(self._url), None)
            return
        detail = self._redacted(detail)
        output = checks.final_output(update, detail, self._url)
        self._send("completed", output, checks.conclusion_of(update))

    def post_elsewhere(self, repository: str, sha: str, update: StatusUpdate) -> None:
        """Complete the open check runs of ``sha`` (a run this one superseded, which cannot report any more)."""
        if not FULL_SHA_RE.fullmatch(sha):
            return
        try:
            done = complete_open_check_runs(self.client, repository, sha, name=self.name, update=update)
            for old in done:
                self.logger.info("check run %s on %s: %s", old, sha[:12], checks.conclusion_of(update))
        except PreviewsError as exc:
            self.logger.warning("could not complete the check run on %s: %s", sha[:12], exc)

    @property
    def _url(self) -> str | None:
        return _http_url(self.details_url)

    def _redacted(self, detail: RunDetail | None) -> RunDetail | None:
        if detail is None or detail.failure is None:
            return detail
        failure = detail.failure
        tail = tuple(self.redact(line) for line in failure.log_tail)
        return RunDetail(detail.result, checks.FailedStep(failure.step, tail), detail.durations_s)

    def _send(self, status: CheckStatus, output: CheckOutput, conclusion: CheckConclusion | None) -> None:
        if self.sha is None:
            self.logger.warning("check run not reported: the head SHA is not known in full yet")
            return
        try:
            if self.check_run is None:
                self.check_run = create_check_run(
                    self.client,
                    self.repository,
                    name=self.name,
                    head_sha=self.sha,
                    status=status,
                    output=output,
                    conclusion=conclusion,
                    details_url=self._url,
                    external_id=self.external_id,
                )
            else:
                self.check_run = update_check_run(
                    self.client,
                    self.repository,
                    self.check_run.id,
                    status=status,
                    output=output,
                    conclusion=conclusion,
                )
            shown = conclusion or status
            self.logger.info("check run %s on %s: %s", self.check_run.id, self.sha[:12], shown)
        except PreviewsError as exc:
            self.logger.warning("could not report the check run (%s): %s", status, exc)
