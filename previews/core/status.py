"""The commit status the pipeline posts on the PR's head SHA for each outcome.

Every terminal outcome sets a state other than ``pending``, so a required check never hangs: skipped runs
(docs-only, no push credentials, fork policy) report ``success`` with the reason as the description.
Descriptions fit GitHub's 140-character limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

StatusState = Literal["error", "failure", "pending", "success"]
# The conclusion a check run reports for an outcome (GitHub's Checks API); None: derived from the state.
CheckConclusion = Literal[
    "success", "failure", "neutral", "cancelled", "skipped", "timed_out", "action_required"
]
STATUS_STATES: tuple[str, ...] = ("error", "failure", "pending", "success")
DEFAULT_CONTEXT = "previews/image"
MAX_DESCRIPTION = 140
_ELLIPSIS = "..."


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """One commit status to post: ``state`` and a description of at most 140 characters.

    ``conclusion`` is what a check run reports for the same outcome when the state alone does not say it
    (a skip is ``success`` as a status, ``skipped`` or ``neutral`` as a check).
    """

    state: StatusState
    description: str
    conclusion: CheckConclusion | None = None


def truncate(text: str, limit: int = MAX_DESCRIPTION) -> str:
    """One line of at most ``limit`` characters, ending in ``...`` when cut."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    return line[: limit - len(_ELLIPSIS)].rstrip() + _ELLIPSIS


def _keep_end(prefix: str, value: str, limit: int = MAX_DESCRIPTION) -> str:
    """``prefix + value``, cutting the start of ``value`` when too long (the tag is at its end)."""
    room = limit - len(prefix)
    if len(value) <= room:
        return prefix + value
    return prefix + _ELLIPSIS + value[len(value) - (room - len(_ELLIPSIS)) :]


def pending() -> StatusUpdate:
    """The run started: building the preview image."""
    return StatusUpdate("pending", "building the preview image")


def pushed(image_ref: str) -> StatusUpdate:
    """The image was pushed; the description names it (the tag end is kept when the name is long)."""
    return StatusUpdate("success", _keep_end("pushed ", image_ref))


def failed(reason: str, *, state: Literal["failure", "error"] = "failure") -> StatusUpdate:
    """The run failed: ``failure`` for the build itself, ``error`` for the pipeline (auth, registry down)."""
    return StatusUpdate(state, truncate(f"failed: {reason}"))


def skipped_docs_only() -> StatusUpdate:
    """Every changed path matched the ignore globs: no image is needed."""
    return StatusUpdate("success", "skipped: docs-only change", "skipped")


def skipped_no_push_credentials() -> StatusUpdate:
    """No registry credentials: the soft failure of the old workflow."""
    return StatusUpdate("success", "skipped: no push credentials", "neutral")


def skipped_fork(reason: str) -> StatusUpdate:
    """The fork policy refused the build; ``reason`` says how to allow it (see ``forks.decide_fork``)."""
    return StatusUpdate("success", truncate(reason), "neutral")


def superseded(newer_sha: str | None = None) -> StatusUpdate:
    """A newer push to the PR replaced this run; no image was produced for this commit."""
    text = "cancelled: superseded by a newer push"
    if newer_sha:
        text += f" ({newer_sha[:12]})"
    return StatusUpdate("error", text, "cancelled")


def stale_event(head_sha: str) -> StatusUpdate:
    """An event for a commit that is no longer the PR's head: nothing was built for it; the head is named."""
    return StatusUpdate(
        "error", f"superseded: the PR head is now {head_sha}; this commit was not built", "cancelled"
    )
