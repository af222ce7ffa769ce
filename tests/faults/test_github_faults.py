"""GitHub API faults during the preview-image flow (FakeGitHub answers with GitHub's documented error shapes).

Commit statuses are best effort: 5xx, a secondary rate limit or a malformed body never fail the build.
The infra dispatch is retried on transient faults (sent exactly once in the end) and, when GitHub keeps
failing, the run fails naming the dispatch while the pushed image stays in the registry.
The 502-on-statuses case is in tests/flows/test_github_integration.py.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from prefect.client.schemas.objects import State
from pydantic import SecretStr

from flows.common import use_settings
from flows.preview_image import preview_image
from previews.errors import TransientGitHubError
from previews.settings import Settings
from tests.support.fake_github import FakeGitHub
from tests.support.prefect_api import flow_run_logs, task_run_counts
from tests.support.sample import SampleProject, make_sample
from tests.support.services import Registry

pytestmark = pytest.mark.usefixtures("prefect_server", "base_image")
INFRA = "acme-infra/environments"
PR = 21


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as fake:
        fake.add_repo(INFRA)
        yield fake


@pytest.fixture
def pr(
    remotes_root: Path, github: FakeGitHub, registry: Registry, docker_client: docker.DockerClient
) -> Iterator[tuple[SampleProject, str]]:
    sample = make_sample(remotes_root, f"ghf-{uuid.uuid4().hex[:8]}")
    base = sample.head_sha
    head = sample.app.commit({"src/main.txt": "app main v2\n"}, "code change")
    sample.app.push_pr_ref(PR, head)
    github.add_pull(sample.app.repository, PR, head_sha=head, base_sha=base)
    yield sample, head
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(
            f"{registry.host}/{sample.app.repository.lower()}:pr-{PR}-{head}", force=True
        )


def run(sample: SampleProject, head: str, reg: Registry, github: FakeGitHub, **overrides: Any) -> State[Any]:
    values: dict[str, Any] = {
        "registry": reg.host,
        "registry_username": reg.username,
        "registry_token": SecretStr(reg.password),
        "git_url_template": sample.git_url_template,
        "siblings": sample.siblings,
        "build_context": "..",
        "retry_delay": 0.1,
        "retries": 2,
        "github_api_url": github.url,
        "github_token": SecretStr(github.token),
        "infra_repository": INFRA,
        **overrides,
    }
    with use_settings(Settings(**values)):
        state: State[Any] = preview_image(
            repository=sample.app.repository, pr_number=PR, head_sha=head, delivery="d-f", return_state=True
        )
    return state


STATUS_FAULTS: dict[str, Callable[[FakeGitHub, str], object]] = {
    "5xx-forever": lambda gh, path: gh.fail_server_error("POST", path, times=100, status=503),
    "secondary-rate-limit-forever": lambda gh, path: gh.secondary_rate_limit(
        "POST", path, retry_after=1, times=100
    ),
    "malformed-json-forever": lambda gh, path: gh.malformed_json("POST", path, status=201, times=100),
    "secondary-rate-limit-once": lambda gh, path: gh.secondary_rate_limit("POST", path, retry_after=1),
}


@pytest.mark.parametrize("fault", sorted(STATUS_FAULTS))
def test_status_faults_never_fail_the_build(
    pr: tuple[SampleProject, str], registry: Registry, github: FakeGitHub, fault: str
) -> None:
    sample, head = pr
    path = f"/repos/{sample.app.repository}/statuses/{head}"
    STATUS_FAULTS[fault](github, path)
    state = run(sample, head, registry, github)
    assert state.is_completed(), state.message
    assert state.result().status == "pushed"
    assert registry.tags(sample.app.repository.lower()) == [f"pr-{PR}-{head}"]
    assert len(github.dispatches_to(INFRA)) == 1
    assert len(github.requests_to("POST", path)) >= 2  # pending and the final status were both attempted
    if fault.endswith("-once"):
        assert [s["state"] for s in github.statuses(sample.app.repository, head)][-1] == "success"
    else:
        assert "could not post the commit status" in flow_run_logs(state)


DISPATCH_FAULTS: dict[str, Callable[[FakeGitHub, str], object]] = {
    "5xx-twice": lambda gh, path: gh.fail_server_error("POST", path, times=2, status=502),
    "secondary-rate-limit-retry-after": lambda gh, path: gh.secondary_rate_limit(
        "POST", path, retry_after=1, times=2
    ),
    "429-retry-after": lambda gh, path: gh.secondary_rate_limit("POST", path, retry_after=1, status=429),
    # Two faults: the GitHub client makes one attempt per call, so the notify-infra task's retries (2) are
    # the whole budget.
    "malformed-json-5xx": lambda gh, path: gh.malformed_json("POST", path, status=500, times=2),
}


@pytest.mark.parametrize("fault", sorted(DISPATCH_FAULTS))
def test_transient_dispatch_faults_are_retried_and_sent_once(
    pr: tuple[SampleProject, str], registry: Registry, github: FakeGitHub, fault: str
) -> None:
    sample, head = pr
    path = f"/repos/{INFRA}/dispatches"
    DISPATCH_FAULTS[fault](github, path)
    state = run(sample, head, registry, github)
    assert state.is_completed(), state.message
    assert state.result().notify.sent
    (dispatch,) = github.dispatches_to(INFRA)
    assert dispatch["client_payload"]["sha"] == head
    assert len(github.requests_to("POST", path)) >= 2


def test_malformed_pull_request_json_before_the_dispatch_is_retried(
    pr: tuple[SampleProject, str], registry: Registry, github: FakeGitHub
) -> None:
    sample, head = pr
    github.malformed_json("GET", f"/repos/{sample.app.repository}/pulls/{PR}", times=2)
    state = run(sample, head, registry, github)
    assert state.is_completed(), state.message
    assert len(github.dispatches_to(INFRA)) == 1


def test_a_dispatch_that_keeps_failing_is_reported_and_the_image_stays(
    pr: tuple[SampleProject, str], registry: Registry, github: FakeGitHub
) -> None:
    sample, head = pr
    github.fail_server_error("POST", f"/repos/{INFRA}/dispatches", times=1000, status=503)
    state = run(sample, head, registry, github, retries=1)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, TransientGitHubError)
    assert "dispatches" in str(error)
    assert github.dispatches_to(INFRA) == []
    assert task_run_counts(state)["notify-infra"] == 2
    assert registry.tags(sample.app.repository.lower()) == [f"pr-{PR}-{head}"]
    statuses = github.statuses(sample.app.repository, head)
    assert statuses[-1]["state"] == "error"
    assert "TransientGitHubError" in statuses[-1]["description"]
