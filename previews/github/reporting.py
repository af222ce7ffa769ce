"""The one interface a run reports through: commit statuses, check runs, or both (``PREVIEWS_GITHUB_REPORT``).

The flow calls :class:`Reporter` only and does not care which is behind it: ``use_sha`` once the head SHA is
known in full, ``post(pending)`` when it takes the work on, ``started()`` when the build work begins,
``post(outcome, detail)`` at the end, ``post_elsewhere`` for a run it superseded. No method raises: a report
that GitHub refuses is logged and the build goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from previews.core.checks import RunDetail
from previews.core.status import StatusUpdate


class Reporter(Protocol):
    """Where a run's progress and outcome go (see the module docstring)."""

    @property
    def sha(self) -> str | None:
        """The full head SHA reports go to, once known."""
        ...

    def use_sha(self, sha: str) -> None:
        """Report on ``sha`` (a full SHA) from now on."""

    def started(self) -> None:
        """The build work begins."""

    def post(self, update: StatusUpdate, detail: RunDetail | None = None) -> None:
        """Report ``update`` (``pending``, or the outcome with what the run produced or where it failed)."""

    def post_elsewhere(self, repository: str, sha: str, update: StatusUpdate) -> None:
        """Report ``update`` on another run's commit (a run this one superseded)."""


@dataclass(frozen=True)
class Reporters:
    """Several reporters as one (``PREVIEWS_GITHUB_REPORT=both``), called in order."""

    members: tuple[Reporter, ...]

    @property
    def sha(self) -> str | None:
        return next((m.sha for m in self.members if m.sha is not None), None)

    def use_sha(self, sha: str) -> None:
        for member in self.members:
            member.use_sha(sha)

    def started(self) -> None:
        for member in self.members:
            member.started()

    def post(self, update: StatusUpdate, detail: RunDetail | None = None) -> None:
        for member in self.members:
            member.post(update, detail)

    def post_elsewhere(self, repository: str, sha: str, update: StatusUpdate) -> None:
        for member in self.members:
            member.post_elsewhere(repository, sha, update)
