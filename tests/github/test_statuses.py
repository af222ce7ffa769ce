"""Commit statuses: the text for each outcome, and the sequence GitHub records for a SHA."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from previews.core import status
from previews.core.forks import decide_fork
from previews.errors import GitHubUnprocessableError, ValidationError
from previews.github.client import GitHubClient
from previews.github.sansio import error_for
from tests.support.fake_github import FakeGitHub
from tests.support.fixtures import FIXTURES

REPO = "acme/app"
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
CONTEXT = "previews/image"
WEBHOOKS = FIXTURES / "github/webhooks"
RUN_URL = "http://127.0.0.1:4200/runs/flow-run/0b8c2f6e-1c1f-4d1c-9f4e-3c6f1f7c2b11"


@pytest.fixture
def github(gh: FakeGitHub) -> Iterator[GitHubClient]:
    with GitHubClient(base_url=gh.url, token=SecretStr(gh.token)) as client:
        yield client


def post(github: GitHubClient, update: status.StatusUpdate, target_url: str | None = RUN_URL) -> None:
    github.create_status(
        REPO, SHA, state=update.state, context=CONTEXT, description=update.description, target_url=target_url
    )


def test_a_pushed_run_goes_pending_then_success_linking_the_flow_run(
    gh: FakeGitHub, github: GitHubClient
) -> None:
    image = f"ghcr.io/acme/app:pr-7-{SHA}"
    post(github, status.pending())
    post(github, status.pushed(image))
    recorded = gh.statuses(REPO, SHA)
    assert [(s["state"], s["context"], s["target_url"]) for s in recorded] == [
        ("pending", CONTEXT, RUN_URL),
        ("success", CONTEXT, RUN_URL),
    ]
    assert recorded[1]["description"] == f"pushed {image}"
    combined = github.combined_status(REPO, SHA)
    assert combined.state == "success"
    assert [(s.context, s.state) for s in combined.statuses] == [(CONTEXT, "success")]


@pytest.mark.parametrize(
    ("update", "state", "description"),
    [
        (status.skipped_docs_only(), "success", "skipped: docs-only change"),
        (status.skipped_no_push_credentials(), "success", "skipped: no push credentials"),
        (
            status.skipped_fork(decide_fork(True, "skip").reason),
            "success",
            "skipped: fork PR; set PREVIEWS_FORK_POLICY=label and add 'safe-to-preview' to build it",
        ),
        (
            status.failed("the Dockerfile failed at step 3/7"),
            "failure",
            "failed: the Dockerfile failed at step 3/7",
        ),
        (status.failed("registry unreachable", state="error"), "error", "failed: registry unreachable"),
        (status.superseded("f" * 40), "error", "cancelled: superseded by a newer push (ffffffffffff)"),
    ],
)
def test_every_terminal_outcome_leaves_a_non_pending_status(
    gh: FakeGitHub, github: GitHubClient, update: status.StatusUpdate, state: str, description: str
) -> None:
    """A required check never hangs: after pending, every outcome sets a final state."""
    post(github, status.pending())
    post(github, update)
    (_, final) = gh.statuses(REPO, SHA)
    assert (final["state"], final["description"]) == (state, description)
    assert github.combined_status(REPO, SHA).state == ("success" if state == "success" else "failure")


def test_long_descriptions_are_cut_to_140_characters_before_sending(
    gh: FakeGitHub, github: GitHubClient
) -> None:
    reason = "the build failed: " + "x" * 300
    post(github, status.failed(reason))
    github.create_status(REPO, SHA, state="failure", context=CONTEXT, description="y" * 500)
    for recorded in gh.statuses(REPO, SHA):
        assert len(recorded["description"]) == 140
        assert recorded["description"].endswith("...")


def test_the_fake_refuses_a_long_description_like_github(gh: FakeGitHub, github: GitHubClient) -> None:
    response = github._http.post(
        f"repos/{REPO}/statuses/{SHA}",
        json={"state": "success", "description": "z" * 141},
        headers={"Authorization": f"Bearer {gh.token}"},
    )
    assert response.status_code == 422
    error = error_for(
        response.status_code, response.headers, response.content, where="GitHub POST statuses", now=0.0
    )
    assert isinstance(error, GitHubUnprocessableError)
    assert "description is too long" in str(error)


def test_a_long_image_reference_keeps_its_tag() -> None:
    image = "registry.internal.example.com:5000/" + "team/" * 20 + f"app:pr-12345-{SHA}"
    update = status.pushed(image)
    assert len(update.description) == 140
    assert update.description.startswith("pushed ...")
    assert update.description.endswith(f"app:pr-12345-{SHA}")


def test_descriptions_are_one_line() -> None:
    assert status.failed("line one\nline two\t tab").description == "failed: line one line two tab"


@pytest.mark.parametrize(
    "update",
    [
        status.pending(),
        status.pushed("ghcr.io/acme/app:pr-1-" + "a" * 40),
        status.failed("x" * 500),
        status.skipped_docs_only(),
        status.skipped_no_push_credentials(),
        status.skipped_fork(decide_fork(True, "label", label_name="x" * 50).reason),
        status.superseded(),
    ],
)
def test_every_description_fits(update: status.StatusUpdate) -> None:
    assert 0 < len(update.description) <= status.MAX_DESCRIPTION
    assert update.state in status.STATUS_STATES


def test_statuses_per_sha_are_kept_apart(gh: FakeGitHub, github: GitHubClient) -> None:
    other = "e5bd3914e2e596debea16f433f57875b5b90bcd6"
    post(github, status.pending())
    github.create_status(REPO, other, state="pending", context=CONTEXT)
    github.create_status(REPO, other, state="error", context=CONTEXT, description="superseded")
    assert [s["state"] for s in gh.statuses(REPO, SHA)] == ["pending"]
    assert [s["state"] for s in gh.statuses(REPO, other)] == ["pending", "error"]
    assert gh.statuses(REPO, SHA)[0]["target_url"] == RUN_URL


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"state": "done"}, "state"),
        ({"sha": "abc1234"}, "sha"),  # statuses need the full SHA
        ({"context": ""}, "context"),
        ({"target_url": "javascript:alert(1)"}, "target_url"),
    ],
)
def test_status_inputs_are_validated_before_sending(
    gh: FakeGitHub, github: GitHubClient, kwargs: dict[str, str], field: str
) -> None:
    args: dict[str, str] = {"sha": SHA, "state": "success", "context": CONTEXT, **kwargs}
    sha = args.pop("sha")
    with pytest.raises(ValidationError) as info:
        github.create_status(REPO, sha, **args)  # type: ignore[arg-type]
    assert info.value.field == field
    assert gh.requests == []


@pytest.mark.parametrize(
    ("policy", "labels", "builds"),
    [("skip", [], False), ("label", [], False), ("label", ["safe-to-preview"], True), ("allow", [], True)],
)
def test_a_real_fork_pr_under_each_policy(
    gh: FakeGitHub, github: GitHubClient, policy: str, labels: list[str], builds: bool
) -> None:
    """The real fork PR (reallyfastci), as GitHub serves it, decided and reported on its head SHA."""
    event = json.loads((WEBHOOKS / "real-reallyfastci/webhook-pr-from-fork.json").read_text())["pull_request"]
    base_repo, head_sha = event["base"]["repo"]["full_name"], event["head"]["sha"]
    gh.add_pull(
        base_repo,
        event["number"],
        head_sha=head_sha,
        head_repo=event["head"]["repo"]["full_name"],
        labels=labels,
    )
    pull = github.get_pull(base_repo, event["number"])
    assert pull.is_fork
    assert pull.head_repository == "byao1276/gcbapp-buildconfig-example"
    decision = decide_fork(pull.is_fork, policy, pull.labels)
    assert decision.build is builds
    if not decision.build:
        update = status.skipped_fork(decision.reason)
        github.create_status(
            base_repo, head_sha, state=update.state, context=CONTEXT, description=update.description
        )
        (posted,) = gh.statuses(base_repo, head_sha)
        assert posted["state"] == "success"
        assert posted["description"].startswith("skipped: fork PR")
        assert "safe-to-preview" in posted["description"]
