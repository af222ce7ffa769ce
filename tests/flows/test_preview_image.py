"""The preview-image flow against a real Prefect server, a real Docker engine, a real registry and real git."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from prefect.states import State
from pydantic import SecretStr

from flows.common import use_settings
from flows.preview_image import preview_image
from previews.core.outcome import PreviewResult
from previews.errors import AuthError, BuildError, ValidationError
from previews.settings import Settings
from tests.support.faultproxy import FaultProxy
from tests.support.prefect_api import flow_run_logs, task_run_counts
from tests.support.sample import SampleProject, make_sample
from tests.support.services import Registry

pytestmark = pytest.mark.usefixtures("prefect_server", "base_image")

GIT_TOKEN = "ghp_test-git-token-must-not-leak-0123456789"


@pytest.fixture
def sample(remotes_root: Path) -> SampleProject:
    return make_sample(remotes_root, f"Owner-{uuid.uuid4().hex[:8]}")


def settings_for(sample: SampleProject, reg: Registry, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "registry": reg.host,
        "registry_username": reg.username,
        "registry_token": SecretStr(reg.password),
        "git_url_template": sample.git_url_template,
        "git_token": SecretStr(GIT_TOKEN),
        "siblings": sample.siblings,
        "build_context": "..",
        "dockerfile": "Dockerfile",
        "build_args": "GREETING=from-build-arg",
        "retry_delay": 0.2,
        "retries": 3,
    }
    values.update(overrides)
    return Settings(**values)


def run(settings: Settings, **params: Any) -> State[Any]:
    with use_settings(settings):
        state: State[Any] = preview_image(**params, return_state=True)
    return state


def params_for(sample: SampleProject, pr: int = 7, sha: str | None = None) -> dict[str, Any]:
    return {"repository": sample.app.repository, "pr_number": pr, "head_sha": sha or sample.head_sha}


@pytest.fixture
def image_cleanup(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    refs: list[str] = []
    yield refs
    for ref in refs:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(ref, force=True)


def test_happy_path_pushes_pr_tag_with_labels_and_siblings(
    sample: SampleProject,
    registry: Registry,
    docker_client: docker.DockerClient,
    image_cleanup: list[str],
    tmp_path: Path,
) -> None:
    settings = settings_for(sample, registry, workspace_root=tmp_path)
    state = run(settings, **params_for(sample))
    assert state.is_completed(), state.message
    assert list(tmp_path.iterdir()) == []  # workspace removed
    result = state.result()
    assert isinstance(result, PreviewResult)
    image = sample.app.repository.lower()
    tag = f"pr-7-{sample.head_sha}"
    assert result.status == "pushed"
    assert result.image == f"{registry.host}/{image}:{tag}"
    image_cleanup.append(result.image)

    assert registry.tags(image) == [tag]
    digest, _ = registry.manifest(image, tag)
    assert result.digest == digest
    labels = registry.image_config(image, tag)["config"]["Labels"]  # type: ignore[index]
    web = f"https://github.com/{sample.app.repository}"  # PREVIEWS_GITHUB_API_URL's server (default)
    assert {k: v for k, v in labels.items() if k != "org.opencontainers.image.created"} == {
        "org.opencontainers.image.title": sample.app.repository.split("/")[1],
        "org.opencontainers.image.url": web,
        "org.opencontainers.image.source": web,
        "org.opencontainers.image.version": tag,
        "org.opencontainers.image.revision": sample.head_sha,
        "previews.pr": "7",
        "previews.repository": sample.app.repository,
        "previews.build-fingerprint": labels["previews.build-fingerprint"],
    }
    assert re.fullmatch(
        r"20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z",
        labels["org.opencontainers.image.created"],
    )

    output = docker_client.containers.run(
        result.image, "cat /opt/combined.txt /opt/greeting.txt", remove=True
    )
    assert output.decode() == "app main v1\ncommon library v1\nfrom-build-arg\n"

    logs = flow_run_logs(state)
    assert "[base 4/4] RUN cat /opt/app/main.txt" in logs  # BuildKit's output streamed into the run log
    assert "BuildKit through " in logs  # which client built, and how
    assert "no infra target configured" in logs
    assert GIT_TOKEN not in logs
    assert registry.password not in logs
    assert result.notify is not None
    assert not result.notify.sent
    assert set(result.durations_s) >= {"validate", "checkout", "build", "push", "notify-infra"}


def test_short_sha_is_resolved_against_the_pr_head(
    sample: SampleProject, registry: Registry, image_cleanup: list[str]
) -> None:
    sample.app.push_pr_ref(8, sample.head_sha)
    state = run(
        settings_for(sample, registry, tag_sha_length=12), **params_for(sample, pr=8, sha=sample.head_sha[:9])
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert result.tag == f"pr-8-{sample.head_sha[:12]}"
    assert result.image is not None
    image_cleanup.append(result.image)
    assert registry.tags(sample.app.repository.lower()) == [f"pr-8-{sample.head_sha[:12]}"]


def test_missing_credentials_is_a_soft_skip(sample: SampleProject, registry: Registry) -> None:
    settings = settings_for(sample, registry, registry_token=None)
    state = run(settings, **params_for(sample))
    assert state.is_completed()
    assert state.message is not None
    assert "skipped: no push credentials" in state.message
    result = state.result()
    assert result.status == "skipped"
    assert registry.tags(sample.app.repository.lower()) == []
    assert set(task_run_counts(state)) == {"validate", "supersede"}


@pytest.mark.parametrize(
    ("field", "params"),
    [
        ("repository", {"repository": "acme/app;rm -rf /"}),
        ("pr_number", {"pr_number": 0}),
        ("pr_number", {"pr_number": "7; echo pwned"}),
        ("head_sha", {"head_sha": "main"}),
        ("head_sha", {"head_sha": "$(touch /tmp/pwned)"}),
    ],
)
def test_invalid_input_fails_fast_naming_the_field(
    sample: SampleProject, registry: Registry, field: str, params: dict[str, Any]
) -> None:
    state = run(settings_for(sample, registry), **{**params_for(sample), **params})
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ValidationError)
    assert error.field == field
    assert task_run_counts(state) == {"validate": 1}
    assert registry.tags(sample.app.repository.lower()) == []


def test_wrong_password_fails_without_retry(sample: SampleProject, registry: Registry) -> None:
    settings = settings_for(sample, registry, registry_token=SecretStr("definitely-wrong-password"))
    state = run(settings, **params_for(sample))
    assert state.is_failed()
    assert isinstance(state.result(raise_on_failure=False), AuthError)
    assert task_run_counts(state)["push"] == 1
    assert "definitely-wrong-password" not in flow_run_logs(state)
    assert registry.tags(sample.app.repository.lower()) == []


def test_registry_503s_are_retried_then_push_succeeds(
    sample: SampleProject, registry: Registry, image_cleanup: list[str]
) -> None:
    with FaultProxy(upstream=registry.host) as proxy:
        proxy.fail_next(3, status=503, path=r"^/v2/$")  # the engine's ping before each push attempt
        state = run(settings_for(sample, registry, registry=proxy.host), **params_for(sample))
        assert state.is_completed(), state.message
        assert proxy.faults_served == 3
    result = state.result()
    assert result.image is not None
    image_cleanup.append(result.image)
    assert task_run_counts(state)["push"] >= 2
    assert registry.tags(sample.app.repository.lower()) == [f"pr-7-{sample.head_sha}"]


def test_failing_dockerfile_raises_build_error_with_log_tail(
    sample: SampleProject, registry: Registry
) -> None:
    head = sample.app.commit(
        {"Dockerfile": "FROM previews-test/busybox:1\nRUN echo kaboom-marker && exit 3\n"}, "break the build"
    )
    state = run(settings_for(sample, registry), **params_for(sample, sha=head))
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BuildError)
    assert any("kaboom-marker" in line for line in error.log_tail)
    assert task_run_counts(state) == {
        "validate": 1,
        "supersede": 1,
        "checkout": 1,
        "check-published": 1,
        "warm-cache": 1,
        "build": 1,
    }
    assert registry.tags(sample.app.repository.lower()) == []


def test_unknown_sha_fails_clearly_and_leaves_no_workspace(
    sample: SampleProject, registry: Registry, tmp_path: Path
) -> None:
    unknown = "f" * 40
    failed = run(settings_for(sample, registry, workspace_root=tmp_path), **params_for(sample, sha=unknown))
    assert failed.is_failed()
    assert unknown in str(failed.result(raise_on_failure=False))
    assert list(tmp_path.iterdir()) == []


def test_fork_from_the_event_is_skipped_by_default_without_github(
    sample: SampleProject, registry: Registry
) -> None:
    state = run(settings_for(sample, registry), **params_for(sample), fork=True, labels=["bug"])
    assert state.is_completed()
    assert state.result().status == "skipped"
    assert "fork PR" in (state.message or "")
    assert set(task_run_counts(state)) == {"validate", "supersede"}
    assert registry.tags(sample.app.repository.lower()) == []


def test_wrongly_typed_event_values_are_refused(sample: SampleProject, registry: Registry) -> None:
    state = run(settings_for(sample, registry), **params_for(sample), fork="yes")
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ValidationError)
    assert error.field == "fork"
