"""The fork policy: may the pipeline build a pull request whose head lives in another repository?

A fork PR is untrusted code: its Dockerfile and build steps were written by someone outside the project.
``head.repo.full_name != base.repo.full_name`` makes a fork (``head.repo.fork`` is also true for forks of
forks, so it is not used); a null ``head.repo`` (the fork was deleted) counts as a fork too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from previews.errors import ValidationError

ForkPolicy = Literal["skip", "label", "allow"]
FORK_POLICIES: tuple[str, ...] = get_args(ForkPolicy)
DEFAULT_FORK_LABEL = "safe-to-preview"


@dataclass(frozen=True, slots=True)
class ForkDecision:
    """Whether to build, and a reason short enough for a commit status description (<= 140 chars)."""

    build: bool
    reason: str


def is_fork(head_repository: str | None, base_repository: str) -> bool:
    """True when the PR's head repository is not its base repository, or is unknown (deleted fork)."""
    if not head_repository:
        return True
    return head_repository.lower() != base_repository.lower()


def parse_fork_policy(value: object) -> ForkPolicy:
    """Validate a policy name (``skip``, ``label`` or ``allow``)."""
    if value == "skip":
        return "skip"
    if value == "label":
        return "label"
    if value == "allow":
        return "allow"
    raise ValidationError("fork_policy", f"{value!r} is not one of {', '.join(FORK_POLICIES)}")


def decide_fork(
    is_fork: bool,
    policy: ForkPolicy | str,
    labels: Sequence[str] = (),
    label_name: str = DEFAULT_FORK_LABEL,
) -> ForkDecision:
    """Apply the fork policy. Labels compare case-insensitively, as GitHub's label names do."""
    checked = parse_fork_policy(policy)
    label = label_name.strip()
    if not label or len(label) > 50:
        raise ValidationError("fork_label", "must be 1-50 characters")
    if not is_fork:
        return ForkDecision(build=True, reason="same-repository pull request")
    if checked == "allow":
        return ForkDecision(build=True, reason="fork pull request built: fork policy is 'allow'")
    if checked == "label":
        if label.casefold() in {name.casefold() for name in labels}:
            return ForkDecision(build=True, reason=f"fork pull request built: a maintainer added '{label}'")
        return ForkDecision(
            build=False,
            reason=f"skipped: fork PR; a maintainer can add the '{label}' label to build it",
        )
    return ForkDecision(
        build=False,
        reason=f"skipped: fork PR; set PREVIEWS_FORK_POLICY=label and add '{label}' to build it",
    )
