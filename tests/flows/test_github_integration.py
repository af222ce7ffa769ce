"""The flows with GitHub in the loop: statuses on the PR, notify-infra, docs-only and fork skips, teardown.

GitHub's REST API is the one faked part (tests/support/fake_github.py speaks its recorded shapes).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from previews.errors import BuildError
from previews.settings import Settings
from tests.conftest import INFRA, github_values, run_image, run_teardown, settings_for
from tests.support.fake_github import FakeGitHub
from tests.support.sample import APP_DOCKERFILE, SampleProject, make_sample
from tests.support.services import Registry

pytestmark = pytest.mark.usefixtures("prefect_server", "base_image")


@pytest.fixture
def pr(remotes_root: Path, github: FakeGitHub) -> tuple[SampleProject, str, str]:
    """A PR whose head changes code on top of a base commit; returns (sample, base sha, head sha)."""
    sample = make_sample(remotes_root, f"gh-{uuid.uuid4().hex[:8]}")
    base = sample.head_sha
    head = sample.app.commit({"src/main.txt": "app main v2\n"}, "code change")
    sample.app.push_pr_ref(5, head)
    github.add_pull(sample.app.repository, 5, head_sha=head, base_sha=base)
    return sample, base, head


def github_settings(sample: SampleProject, reg: Registry, github: FakeGitHub, **overrides: Any) -> Settings:
    """The shared settings with the fake GitHub, the infra repository and a Prefect UI address for links."""
    return settings_for(
        sample, reg, **github_values(github, ui_url="http://prefect.example.test", **overrides)
    )


def test_code_change_pushes_dispatches_by_digest_and_reports_success(
    pr: tuple[SampleProject, str, str], registry: Registry, github: FakeGitHub
) -> None:
    sample, base, head = pr
    state = run_image(
        github_settings(sample, registry, github),
        repository=sample.app.repository,
        pr_number=5,
        head_sha=head,
        base_sha=base,
        delivery="d-123",
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert result.status == "pushed"
    digest = registry.manifest(sample.app.repository.lower(), f"pr-5-{head}")[0]

    (dispatch,) = github.dispatches_to(INFRA)
    assert dispatch["event_type"] == "preview-create"
    payload = dispatch["client_payload"]
    assert payload["digest"] == digest
    assert payload["image"] == f"{registry.host}/{sample.app.repository.lower()}@{digest}"
    assert payload["tag"] == f"pr-5-{head}"
    assert (payload["pr"], payload["sha"], payload["delivery"]) == (5, head, "d-123")
    assert payload["repository"] == sample.app.repository
    assert len(payload) <= 10

    statuses = github.statuses(sample.app.repository, head)
    assert [s["state"] for s in statuses] == ["pending", "success"]
    assert statuses[-1]["context"] == "previews/image"
    assert f"pr-5-{head}" in statuses[-1]["description"]
    run_id = state.state_details.flow_run_id
    assert statuses[-1]["target_url"] == f"http://prefect.example.test/runs/flow-run/{run_id}"


def test_docs_only_change_builds_nothing_and_says_so(
    pr: tuple[SampleProject, str, str], registry: Registry, github: FakeGitHub
) -> None:
    sample, _base, code_head = pr
    docs_head = sample.app.commit({"docs/guide.md": "# guide\n", "README.md": "# new readme\n"}, "docs")
    github.add_pull(sample.app.repository, 6, head_sha=docs_head, base_sha=code_head)
    state = run_image(
        github_settings(sample, registry, github),
        repository=sample.app.repository,
        pr_number=6,
        head_sha=docs_head,
    )
    assert state.is_completed()
    assert state.result().status == "skipped"
    assert "docs-only" in (state.message or "")
    assert registry.tags(sample.app.repository.lower()) == []
    assert github.dispatches_to(INFRA) == []
    statuses = github.statuses(sample.app.repository, docs_head)
    assert [(s["state"], s["description"]) for s in statuses][-1] == ("success", "skipped: docs-only change")


@pytest.mark.parametrize(
    ("policy", "labels", "builds"),
    [("skip", [], False), ("label", [], False), ("label", ["safe-to-preview"], True)],
)
def test_fork_policy(
    pr: tuple[SampleProject, str, str],
    registry: Registry,
    github: FakeGitHub,
    policy: str,
    labels: list[str],
    builds: bool,
) -> None:
    sample, base, head = pr
    github.add_pull(
        sample.app.repository, 5, head_sha=head, base_sha=base, head_repo="stranger/app-fork", labels=labels
    )
    state = run_image(
        github_settings(sample, registry, github, fork_policy=policy),
        repository=sample.app.repository,
        pr_number=5,
        head_sha=head,
        base_sha=base,
    )
    assert state.is_completed(), state.message
    last = github.statuses(sample.app.repository, head)[-1]
    assert last["state"] == "success"
    if builds:
        assert state.result().status == "pushed"
        assert registry.tags(sample.app.repository.lower()) == [f"pr-5-{head}"]
    else:
        assert state.result().status == "skipped"
        assert "fork" in last["description"]
        assert "safe-to-preview" in last["description"]
        assert registry.tags(sample.app.repository.lower()) == []


def test_stale_sha_is_pushed_but_does_not_roll_the_preview_back(
    pr: tuple[SampleProject, str, str], registry: Registry, github: FakeGitHub
) -> None:
    sample, base, head = pr
    newer = sample.app.commit({"src/main.txt": "app main v3\n"}, "newer push")
    github.set_head(sample.app.repository, 5, newer)
    state = run_image(
        github_settings(sample, registry, github),
        repository=sample.app.repository,
        pr_number=5,
        head_sha=head,
        base_sha=base,
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert result.status == "pushed"
    assert result.notify is not None
    assert not result.notify.sent
    assert "no longer the PR head" in result.notify.reason
    assert github.dispatches_to(INFRA) == []


def test_failed_build_reports_failure_and_github_outage_never_fails_a_build(
    pr: tuple[SampleProject, str, str], registry: Registry, github: FakeGitHub
) -> None:
    sample, base, _head = pr
    broken = sample.app.commit({"Dockerfile": "FROM previews-test/busybox:1\nRUN exit 7\n"}, "broken")
    github.add_pull(sample.app.repository, 9, head_sha=broken, base_sha=base)
    state = run_image(
        github_settings(sample, registry, github),
        repository=sample.app.repository,
        pr_number=9,
        head_sha=broken,
    )
    assert state.is_failed()
    assert isinstance(state.result(raise_on_failure=False), BuildError)
    assert [s["state"] for s in github.statuses(sample.app.repository, broken)] == ["pending", "failure"]

    fixed = sample.app.commit({"Dockerfile": APP_DOCKERFILE}, "fix the build")
    github.add_pull(sample.app.repository, 9, head_sha=fixed, base_sha=base)
    github.fail_server_error("POST", f"/repos/{sample.app.repository}/statuses/{fixed}", times=50, status=502)
    state = run_image(
        github_settings(sample, registry, github),
        repository=sample.app.repository,
        pr_number=9,
        head_sha=fixed,
    )
    assert state.is_completed(), state.message
    assert state.result().status == "pushed"
    assert github.statuses(sample.app.repository, fixed) == []
    assert len(github.dispatches_to(INFRA)) == 1


def test_closed_pr_sends_teardown(github: FakeGitHub, registry: Registry, remotes_root: Path) -> None:
    sample = make_sample(remotes_root, f"td-{uuid.uuid4().hex[:8]}")
    state = run_teardown(
        github_settings(sample, registry, github),
        repository=sample.app.repository,
        pr_number=12,
        delivery="d-9",
    )
    assert state.is_completed(), state.message
    (dispatch,) = github.dispatches_to(INFRA)
    assert dispatch == {
        "event_type": "preview-teardown",
        "client_payload": {"repository": sample.app.repository, "pr": 12, "delivery": "d-9"},
    }


@pytest.mark.parametrize("ui_url", ["prefect.example.test", "ftp://prefect.example.test"])
def test_statuses_are_posted_without_a_link_when_the_run_url_is_not_http(
    pr: tuple[SampleProject, str, str], registry: Registry, github: FakeGitHub, ui_url: str
) -> None:
    sample, base, head = pr
    github.add_pull(sample.app.repository, 5, head_sha=head, base_sha=base, head_repo="stranger/app-fork")
    state = run_image(
        settings_for(sample, registry, **github_values(github, ui_url=ui_url)),
        repository=sample.app.repository,
        pr_number=5,
        head_sha=head,
    )
    assert state.is_completed(), state.message
    statuses = github.statuses(sample.app.repository, head)
    assert [s["state"] for s in statuses] == ["pending", "success"]
    assert [s["target_url"] for s in statuses] == [None, None]


def test_an_event_for_a_commit_that_is_no_longer_the_head_builds_and_cancels_nothing(
    pr: tuple[SampleProject, str, str], registry: Registry, github: FakeGitHub
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled, Scheduled

    from flows.preview_image import preview_image
    from tests.support.prefect_api import task_run_counts

    sample, base, old = pr
    newer = sample.app.commit({"src/main.txt": "app main v3\n"}, "newer push")
    github.set_head(sample.app.repository, 5, newer)
    with get_client(sync_client=True) as client:  # the head's run, queued before the late event's run
        queued = client.create_flow_run(
            preview_image,
            parameters={"repository": sample.app.repository, "pr_number": 5, "head_sha": newer},
            state=Scheduled(),
        )
    try:
        state = run_image(
            github_settings(sample, registry, github),
            repository=sample.app.repository,
            pr_number=5,
            head_sha=old,
            base_sha=base,
            delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958",
        )
        assert state.is_cancelled(), state
        assert state.message.startswith(f"superseded by {newer}: ")
        assert not {"checkout", "supersede", "build", "push"} & set(task_run_counts(state))
        assert registry.tags(sample.app.repository.lower()) == []
        assert github.dispatches_to(INFRA) == []
        (posted,) = github.statuses(sample.app.repository, old)
        assert posted["state"] == "error"
        assert newer in posted["description"]
        assert github.statuses(sample.app.repository, newer) == []
        with get_client(sync_client=True) as client:
            head_run = client.read_flow_run(queued.id)
        assert head_run.state is not None
        assert head_run.state.type == StateType.SCHEDULED  # the head's run was not cancelled
    finally:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(queued.id, Cancelled(message="test cleanup"), force=True)


def test_a_new_push_from_a_fork_removes_the_approval_label_and_a_new_label_builds_it(
    pr: tuple[SampleProject, str, str], registry: Registry, github: FakeGitHub
) -> None:
    sample, base, head = pr
    repository = sample.app.repository
    github.add_pull(  # approved for an earlier commit; the fork has pushed ``head`` since
        repository, 5, head_sha=head, base_sha=base, head_repo="stranger/app-fork", labels=["safe-to-preview"]
    )
    settings = github_settings(sample, registry, github, fork_policy="label")
    params = {"repository": repository, "pr_number": 5, "head_sha": head, "base_sha": base}
    pushed = run_image(settings, **params, delivery="d-sync", action="synchronize")
    assert pushed.is_completed(), pushed.message
    assert pushed.result().status == "skipped"
    assert github.labels(repository, 5) == []
    (removal,) = github.requests_to("DELETE", f"/repos/{repository}/issues/5/labels/*")
    assert removal.path.endswith("/labels/safe-to-preview")
    statuses = github.statuses(repository, head)
    assert statuses[-1]["state"] == "success"
    assert "approval needed again" in statuses[-1]["description"]
    assert registry.tags(repository.lower()) == []

    github.add_pull(  # a maintainer reviewed ``head`` and added the label again
        repository, 5, head_sha=head, base_sha=base, head_repo="stranger/app-fork", labels=["safe-to-preview"]
    )
    labeled = run_image(settings, **params, delivery="d-label", action="labeled")
    assert labeled.is_completed(), labeled.message
    assert labeled.result().status == "pushed"
    assert registry.tags(repository.lower()) == [f"pr-5-{head}"]
    assert github.labels(repository, 5) == ["safe-to-preview"]
