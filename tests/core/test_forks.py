"""Fork policy decisions, driven by real pull_request payloads from tests/fixtures/github/webhooks/."""

from __future__ import annotations

import json
from typing import Any

import pytest

from previews.core.forks import decide_fork, is_fork, parse_fork_policy
from previews.core.status import MAX_DESCRIPTION
from previews.errors import ValidationError
from tests.support.fixtures import FIXTURES

WEBHOOKS = FIXTURES / "github/webhooks"


def _payload(name: str) -> dict[str, Any]:
    data = json.loads((WEBHOOKS / name).read_text())
    return data["body"] if "pull_request" not in data else data  # taskcluster wraps {headers, body}


def _pr_facts(name: str) -> tuple[bool, list[str]]:
    pr = _payload(name)["pull_request"]
    head_repo = pr["head"]["repo"]
    head = head_repo["full_name"] if head_repo else None
    return is_fork(head, pr["base"]["repo"]["full_name"]), [label["name"] for label in pr.get("labels") or []]


FORKS = [
    "real-reallyfastci/webhook-pr-from-fork.json",  # byao1276/... -> ailisp/...
    "real-reallyfastci/webhook-pr-open.json",
    "real-packit-service/github_pr_event.json",  # lbarcziova/packit -> packit-service/packit
    "real-taskcluster/webhook.pull_request.missing_head_repo.json",  # head.repo is null (deleted fork)
]
SAME_REPO = [
    "octokit-webhooks/pull_request/opened.payload.json",
    "octokit-webhooks/pull_request/synchronize.payload.json",
    "real-drone-go-scm/pr_opened.json",
]


@pytest.mark.parametrize("name", FORKS)
def test_real_fork_payloads_are_forks(name: str) -> None:
    fork, _ = _pr_facts(name)
    assert fork is True


@pytest.mark.parametrize("name", SAME_REPO)
def test_real_same_repository_payloads_are_not_forks(name: str) -> None:
    fork, _ = _pr_facts(name)
    assert fork is False


def test_head_repo_fork_flag_is_not_what_decides() -> None:
    """head.repo.fork is true for a fork of a fork too; only the full names are compared."""
    pr = _payload("real-reallyfastci/webhook-pr-from-fork.json")["pull_request"]
    assert pr["head"]["repo"]["fork"] is True
    assert is_fork("Owner/App", "owner/app") is False
    assert is_fork("someone/app", "owner/app") is True
    assert is_fork(None, "owner/app") is True


@pytest.mark.parametrize("name", FORKS)
def test_skip_policy_refuses_every_fork_and_says_how_to_allow_it(name: str) -> None:
    fork, labels = _pr_facts(name)
    decision = decide_fork(fork, "skip", labels)
    assert decision.build is False
    assert "PREVIEWS_FORK_POLICY=label" in decision.reason
    assert "'safe-to-preview'" in decision.reason
    assert len(decision.reason) <= MAX_DESCRIPTION


@pytest.mark.parametrize("name", FORKS)
def test_label_policy_builds_only_with_the_label(name: str) -> None:
    fork, labels = _pr_facts(name)
    without = decide_fork(fork, "label", labels)
    assert without.build is False
    assert "a maintainer can add the 'safe-to-preview' label" in without.reason
    assert len(without.reason) <= MAX_DESCRIPTION

    labelled = decide_fork(fork, "label", [*labels, "Safe-To-Preview"])  # GitHub label names ignore case
    assert labelled.build is True
    assert "safe-to-preview" in labelled.reason


def test_label_policy_uses_the_configured_label_name() -> None:
    fork, labels = _pr_facts("real-packit-service/github_pr_event.json")
    assert decide_fork(fork, "label", [*labels, "safe-to-preview"], label_name="ok-to-build").build is False
    decision = decide_fork(fork, "label", [*labels, "ok-to-build"], label_name="ok-to-build")
    assert decision.build is True


def test_label_policy_with_a_real_labeled_event_of_a_same_repo_pr() -> None:
    """The labeled fixture is not a fork: it builds under every policy, whatever its labels."""
    fork, labels = _pr_facts("octokit-webhooks/pull_request/labeled.payload.json")
    assert labels  # the real payload carries labels
    for policy in ("skip", "label", "allow"):
        assert decide_fork(fork, policy, labels).build is True


@pytest.mark.parametrize("name", FORKS)
def test_allow_policy_builds_forks(name: str) -> None:
    fork, labels = _pr_facts(name)
    decision = decide_fork(fork, "allow", labels)
    assert decision.build is True
    assert "allow" in decision.reason


@pytest.mark.parametrize("name", SAME_REPO)
@pytest.mark.parametrize("policy", ["skip", "label", "allow"])
def test_same_repository_prs_always_build(name: str, policy: str) -> None:
    fork, labels = _pr_facts(name)
    assert decide_fork(fork, policy, labels) == decide_fork(False, policy)
    assert decide_fork(fork, policy, labels).build is True


@pytest.mark.parametrize("bad", ["", "SKIP", "deny", None, 1])
def test_unknown_policy_is_a_validation_error(bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        parse_fork_policy(bad)
    assert info.value.field == "fork_policy"


@pytest.mark.parametrize("label", ["", "   ", "x" * 51])
def test_bad_label_name_is_a_validation_error(label: str) -> None:
    with pytest.raises(ValidationError) as info:
        decide_fork(True, "label", [], label_name=label)
    assert info.value.field == "fork_label"


@pytest.mark.parametrize(
    ("action", "labels", "build", "revoke"),
    [
        # issue 13 item 5: approval covers one commit; a new push needs a new review
        ("synchronize", ["Safe-To-Preview"], False, "Safe-To-Preview"),
        ("reopened", ["safe-to-preview", "bug"], False, "safe-to-preview"),
        # the label added for the current commit builds it
        ("labeled", ["safe-to-preview"], True, None),
        (None, ["safe-to-preview"], True, None),
        # a new push without the label: the usual "add the label" skip, nothing to remove
        ("synchronize", ["bug"], False, None),
    ],
)
def test_fork_approval_applies_to_one_commit(
    action: str | None, labels: list[str], build: bool, revoke: str | None
) -> None:
    decision = decide_fork(True, "label", labels, action=action)
    assert (decision.build, decision.revoke) == (build, revoke)
    if revoke is not None:
        assert "approval needed again" in decision.reason
    assert decide_fork(False, "label", labels, action=action).build  # same-repository PRs: no approval
    assert decide_fork(True, "allow", labels, action=action).revoke is None
