"""Late and replayed events against a served deployment (issue 13, items 1 and 4): the PR's real head, read
from the fake GitHub, decides; a late run for an old commit never cancels the head's build.

A real Prefect server, the preview-image deployment served in a subprocess, the real Docker engine, registry
and git remotes; only GitHub's REST API is faked.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.schemas.objects import FlowRun, StateType

from tests.flows.test_supersede import env_for, slow_dockerfile
from tests.support.fake_github import FakeGitHub
from tests.support.processes import processes_with
from tests.support.sample import SampleProject, make_sample
from tests.support.served import create_run, serve_preview_image, states_of, task_states, wait_final
from tests.support.services import Registry

pytestmark = [pytest.mark.usefixtures("prefect_server", "base_image"), pytest.mark.slow]
DELIVERY = "9c5b8a3e-5a44-11f1-8e0b-3f1d2a7c9b10"


@pytest.fixture(scope="module")
def fake_github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as fake:
        yield fake


@pytest.fixture(scope="module")
def stale_sample(remotes_root: Path) -> SampleProject:
    return make_sample(remotes_root, f"Stale-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def served_with_github(
    stale_sample: SampleProject,
    registry: Registry,
    session_dir: Path,
    prefect_server: str,
    fake_github: FakeGitHub,
) -> Iterator[str]:
    """The preview-image deployment served in a subprocess that asks the fake GitHub for the PR's head."""
    workspace_root = session_dir / f"stale-ws-{uuid.uuid4().hex[:6]}"
    workspace_root.mkdir()
    env = {
        **env_for(stale_sample, registry, workspace_root),
        "PREVIEWS_GITHUB_API_URL": fake_github.url,
        "PREVIEWS_GITHUB_TOKEN": fake_github.token,
    }
    with serve_preview_image(env, log=session_dir / "served-stale.log") as deployment:
        yield deployment


def _head_build_running(
    deployment: str, sample: SampleProject, github: FakeGitHub, pr: int
) -> tuple[str, str, FlowRun]:
    """An old commit and the PR's head (a slow build); the head's run, started by its event, is building."""
    marker = f"head-{uuid.uuid4().hex[:8]}"
    old = sample.app.commit({"src/main.txt": f"old {marker}\n"}, "old push")
    head = sample.app.commit({"Dockerfile": slow_dockerfile(8, marker)}, "head push")
    github.add_pull(sample.app.repository, pr, head_sha=head, base_sha=sample.head_sha)
    params = {"repository": sample.app.repository, "pr_number": pr}
    head_run = create_run(deployment, {**params, "head_sha": head, "delivery": str(uuid.uuid4())})
    deadline = time.monotonic() + 90
    while task_states(head_run.id).get("build") != "RUNNING" or not processes_with(marker):
        assert time.monotonic() < deadline, task_states(head_run.id)
        time.sleep(0.3)
    return old, head, head_run


def _assert_built_and_never_cancelled(run: FlowRun, registry: Registry, image_tag: str) -> None:
    final = wait_final(run.id)
    assert final.state is not None
    assert final.state.type == StateType.COMPLETED, final.state.message
    assert [s.type for s in states_of(run.id) if s.type == StateType.CANCELLING] == []
    image, tag = image_tag.split(":")
    assert tag in registry.tags(image)


def test_a_late_event_for_an_old_commit_ends_superseded_and_the_heads_build_completes(
    served_with_github: str,
    stale_sample: SampleProject,
    fake_github: FakeGitHub,
    registry: Registry,
    image_cleanup: list[str],
) -> None:
    sample = stale_sample
    old, head, head_run = _head_build_running(served_with_github, sample, fake_github, 61)
    late = create_run(
        served_with_github,
        {"repository": sample.app.repository, "pr_number": 61, "head_sha": old, "delivery": DELIVERY},
    )
    ended = wait_final(late.id, timeout=60)
    assert ended.state is not None
    assert ended.state.type == StateType.CANCELLED
    assert (ended.state.message or "").startswith(f"superseded by {head}: ")
    assert not {"supersede", "checkout", "build", "push"} & set(task_states(late.id))
    (posted,) = fake_github.statuses(sample.app.repository, old)
    assert (posted["state"], head in posted["description"]) == ("error", True)

    image = sample.app.repository.lower()
    image_cleanup.append(f"{registry.host}/{image}:pr-61-{head}")
    _assert_built_and_never_cancelled(head_run, registry, f"{image}:pr-61-{head}")
    assert f"pr-61-{old}" not in registry.tags(image)


def test_a_rerun_of_an_old_commit_builds_it_without_cancelling_the_heads_build(
    served_with_github: str,
    stale_sample: SampleProject,
    fake_github: FakeGitHub,
    registry: Registry,
    image_cleanup: list[str],
) -> None:
    sample = stale_sample
    old, head, head_run = _head_build_running(served_with_github, sample, fake_github, 62)
    rerun = create_run(  # the UI's "Run" form: no delivery; created after the head's run
        served_with_github, {"repository": sample.app.repository, "pr_number": 62, "head_sha": old}
    )
    image = sample.app.repository.lower()
    image_cleanup.extend(f"{registry.host}/{image}:pr-62-{sha}" for sha in (head, old))
    _assert_built_and_never_cancelled(head_run, registry, f"{image}:pr-62-{head}")
    _assert_built_and_never_cancelled(rerun, registry, f"{image}:pr-62-{old}")
