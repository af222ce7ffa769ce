"""What a run reports as a GitHub check run, pure: which reporters, the lifecycle, the conclusion, the output.

A check run goes ``queued`` (the run took the work on) -> ``in_progress`` (the build work began) ->
``completed`` with a conclusion: ``success`` for a pushed or reused image, ``skipped`` for a docs-only
change, ``neutral`` for a build the configuration did not allow (no push credentials, fork policy),
``cancelled`` for a run a newer push superseded, ``failure`` for a broken build or a pipeline error.
GitHub treats ``success``, ``skipped`` and ``neutral`` as passing for a required check, like the commit
status's ``success`` of the same outcomes.

``output.summary`` is markdown: the outcome, image, digest, per-step durations, cache use and a link to the
flow run; on failure also the failing step and the tail of its log (bounded here; the caller redacts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from previews.core.outcome import PreviewResult
from previews.core.status import CheckConclusion, StatusUpdate
from previews.errors import ValidationError

CheckStatus = Literal["queued", "in_progress", "completed"]
REPORT_VARIABLE = "PREVIEWS_GITHUB_REPORT"
MAX_SUMMARY = 65535  # GitHub's limit on output.summary and output.text (characters)
MAX_TITLE = 255
TAIL_LINES = 40
TAIL_LINE_CHARS = 300
_FENCE = "```"


class ReportMode(Enum):
    """Where a run reports its outcome: commit statuses, check runs, or both."""

    STATUS = "status"
    CHECK = "check"
    BOTH = "both"

    @property
    def statuses(self) -> bool:
        """True when commit statuses are posted."""
        return self is not ReportMode.CHECK

    @property
    def checks(self) -> bool:
        """True when check runs are posted."""
        return self is not ReportMode.STATUS


def report_mode(value: str | None, *, has_app: bool) -> ReportMode:
    """``PREVIEWS_GITHUB_REPORT``: ``status``, ``check`` or ``both``; unset means ``both`` with a GitHub App
    (check runs need one) and ``status`` without. ``check`` or ``both`` without an App is a configuration
    error naming the variable."""
    if value is None or not value.strip():
        return ReportMode.BOTH if has_app else ReportMode.STATUS
    try:
        mode = ReportMode(value.strip().lower())
    except ValueError:
        raise ValidationError(REPORT_VARIABLE, f"{value[:40]!r} is not one of status, check, both") from None
    if mode.checks and not has_app:
        raise ValidationError(
            REPORT_VARIABLE,
            f"{mode.value!r} needs a GitHub App (check runs cannot be created with a token): set "
            "PREVIEWS_GITHUB_APP_ID, PREVIEWS_GITHUB_APP_PRIVATE_KEY and PREVIEWS_GITHUB_APP_INSTALLATION_ID, "
            "or PREVIEWS_GITHUB_REPORT=status",
        )
    return mode


@dataclass(frozen=True, slots=True)
class FailedStep:
    """The step a run failed in and the last lines of its log (already redacted by the caller)."""

    step: str | None
    log_tail: tuple[str, ...] = ()


def failed_step(step: str | None, exc: BaseException) -> FailedStep:
    """Where a run failed: ``step`` and the error's log tail (a build's output), else its message lines."""
    tail = getattr(exc, "log_tail", None)
    lines = list(tail) if isinstance(tail, list | tuple) and tail else [f"{type(exc).__name__}: {exc}"]
    text = [part for line in lines for part in str(line).splitlines()]
    return FailedStep(step, bounded_tail(text))


@dataclass(frozen=True, slots=True)
class RunDetail:
    """What a final report can say beyond the status line: the run's result, or where it failed."""

    result: PreviewResult | None = None
    failure: FailedStep | None = None
    durations_s: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CheckOutput:
    """A check run's ``output``: ``title`` (one line) and a markdown ``summary``."""

    title: str
    summary: str

    def to_json(self) -> dict[str, str]:
        """The ``output`` object of the Checks API."""
        return {"title": self.title, "summary": self.summary}


def conclusion_of(update: StatusUpdate) -> CheckConclusion:
    """The check conclusion of a final status: the update's own, else from its state."""
    if update.conclusion is not None:
        return update.conclusion
    return "success" if update.state == "success" else "failure"


def run_ended(state: str) -> StatusUpdate:
    """The outcome of a run that ended without reporting one: ``Cancelled`` (by a person, or superseded
    before it could say so) is ``cancelled``; ``Crashed`` (the process died) is ``failure``."""
    if state.lower() == "cancelled":
        return StatusUpdate("error", "cancelled: the flow run was cancelled", "cancelled")
    return StatusUpdate("error", f"failed: the flow run ended {state.lower()} without a result", "failure")


def bounded_tail(lines: Sequence[str], *, max_lines: int = TAIL_LINES) -> tuple[str, ...]:
    """The last ``max_lines`` non-empty lines, each cut to ``TAIL_LINE_CHARS`` characters."""
    kept = [line.rstrip() for line in lines if line.strip()][-max_lines:]
    return tuple(
        line if len(line) <= TAIL_LINE_CHARS else line[: TAIL_LINE_CHARS - 3] + "..." for line in kept
    )


def queued_output(run_url: str | None) -> CheckOutput:
    """The output of a run that took the work on."""
    return CheckOutput("Queued", _with_link("The preview image build is queued.", run_url))


def in_progress_output(run_url: str | None) -> CheckOutput:
    """The output of a run whose build work began."""
    return CheckOutput("Building", _with_link("Building the preview image.", run_url))


def final_output(update: StatusUpdate, detail: RunDetail | None, run_url: str | None) -> CheckOutput:
    """The output of a finished run: the outcome line, the result table, durations, failure tail, link."""
    detail = detail or RunDetail()
    lines = [f"**{_one_line(update.description)}**", ""]
    lines += _result_rows(detail.result)
    durations = dict(detail.durations_s or (detail.result.durations_s if detail.result else {}))
    if durations:
        lines += ["| step | seconds |", "|---|---:|"]
        lines += [f"| {_cell(step)} | {secs:.2f} |" for step, secs in durations.items()]
        lines.append("")
    lines += _failure_lines(detail.failure)
    summary = _with_link("\n".join(lines).rstrip(), run_url)
    return CheckOutput(_one_line(update.description)[:MAX_TITLE], _fit(summary))


def _result_rows(result: PreviewResult | None) -> list[str]:
    if result is None:
        return []
    rows: list[tuple[str, str]] = []
    if result.head_sha:
        rows.append(("Commit", f"`{result.head_sha}`"))
    if result.image:
        rows.append(("Image", f"`{result.image}`"))
    if result.digest:
        rows.append(("Digest", f"`{result.digest}`"))
    if result.steps is not None:
        rows.append(("Build cache", f"{result.cached_steps or 0} of {result.steps} steps cached"))
    elif result.status == "pushed":
        rows.append(("Build cache", "image already published for this commit: reused, not rebuilt"))
    if result.notify is not None:
        rows.append(("Infra", _cell(result.notify.reason)))
    if not rows:
        return []
    return ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]


def _failure_lines(failure: FailedStep | None) -> list[str]:
    if failure is None:
        return []
    lines = [f"Failed in step `{failure.step}`." if failure.step else "Failed before the first step.", ""]
    if failure.log_tail:
        body = "\n".join(failure.log_tail).replace(_FENCE, "'''")
        lines += [f"Last {len(failure.log_tail)} log lines:", "", _FENCE + "text", body, _FENCE, ""]
    return lines


def _with_link(text: str, run_url: str | None) -> str:
    return text if run_url is None else f"{text}\n\n[Flow run in Prefect]({run_url})"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    return _one_line(text).replace("|", "\\|")


def _fit(summary: str) -> str:
    """At most ``MAX_SUMMARY`` characters: the start of an oversized summary is kept (the tail is bounded)."""
    if len(summary) <= MAX_SUMMARY:
        return summary
    return summary[: MAX_SUMMARY - 20] + "\n\n(summary cut)"
