"""The fork policy: may the pipeline build a pull request whose head lives in another repository?

A fork PR is untrusted code: its Dockerfile and build steps were written by someone outside the project.
Under the ``label`` policy, approval covers one commit (issue 13, item 5): a new push from the fork
(``synchronize``, or ``reopened`` with whatever was pushed meanwhile) removes the label before anything is built,
and a maintainer adds it again once they have read the new commit.
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
# pull_request actions that bring a commit the maintainer who added the label has not seen
NEW_PUSH_ACTIONS = frozenset({"synchronize", "reopened"})


@dataclass(frozen=True, slots=True)
class ForkDecision:
    """Whether to build, and a reason short enough for a commit status description (<= 140 chars)."""

    build: bool
    reason: str
    revoke: str | None = None


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
    *,
    action: str | None = None,
) -> ForkDecision:
    """Apply the fork policy. Labels compare case-insensitively, as GitHub's label names do.

    ``action`` is the pull_request action that started the run (None for a UI rerun): under ``label``, a new
    push refuses the build and names the label to remove (``revoke``, as GitHub spells it) when it is on.
    """
    checked = parse_fork_policy(policy)
    label = label_name.strip()
    if not label or len(label) > 50:
        raise ValidationError("fork_label", "must be 1-50 characters")
    if not is_fork:
        return ForkDecision(build=True, reason="same-repository pull request")
    if checked == "allow":
        return ForkDecision(build=True, reason="fork pull request built: fork policy is 'allow'")
    if checked == "label":
        on = next((name for name in labels if name.casefold() == label.casefold()), None)
        if action in NEW_PUSH_ACTIONS and on is not None:
            return ForkDecision(
                build=False,
                reason=f"skipped: new push to a fork PR: approval needed again; a maintainer can add "
                f"'{label}' after review",
                revoke=on,
            )
        if on is not None:
            return ForkDecision(build=True, reason=f"fork pull request built: a maintainer added '{label}'")
        return ForkDecision(
            build=False,
            reason=f"skipped: fork PR; a maintainer can add the '{label}' label to build it",
        )
    return ForkDecision(
        build=False,
        reason=f"skipped: fork PR; set PREVIEWS_FORK_POLICY=label and add '{label}' to build it",
    )
