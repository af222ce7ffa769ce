"""Registry faults through the preview-image flow: a FaultProxy sits in front of the real registry.

Adapter-level classification (each status, resets, stalls) is in tests/test_docker_engine.py and the 503-then-
success flow case in tests/flows/test_preview_image.py; here the flow's behaviour is asserted end to end:
transient faults are retried to success, persistent ones end the run Failed with a TransientPushError after
the configured retries, and a failed push never leaves a tag behind.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from prefect.client.schemas.objects import State
from pydantic import SecretStr

from flows.common import use_settings
from flows.preview_image import preview_image
from previews.errors import TransientPushError
from previews.settings import Settings
from tests.support.faultproxy import FaultProxy
from tests.support.prefect_api import task_run_counts
from tests.support.sample import SampleProject, make_sample
from tests.support.services import Registry

pytestmark = pytest.mark.usefixtures("prefect_server", "base_image")


@pytest.fixture
def sample(remotes_root: Path) -> SampleProject:
    return make_sample(remotes_root, f"Faults-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def local_images(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    refs: list[str] = []
    yield refs
    for ref in refs:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(ref, force=True)


def run_through(proxy: FaultProxy, sample: SampleProject, reg: Registry, **overrides: Any) -> State[Any]:
    values: dict[str, Any] = {
        "registry": proxy.host,
        "registry_username": reg.username,
        "registry_token": SecretStr(reg.password),
        "git_url_template": sample.git_url_template,
        "siblings": sample.siblings,
        "build_context": "..",
        "retry_delay": 0.2,
        "retries": 2,
        **overrides,
    }
    with use_settings(Settings(**values)):
        state: State[Any] = preview_image(
            repository=sample.app.repository, pr_number=11, head_sha=sample.head_sha, return_state=True
        )
    return state


def image_ref(proxy: FaultProxy, sample: SampleProject) -> str:
    return f"{proxy.host}/{sample.app.repository.lower()}:pr-11-{sample.head_sha}"


# Faults are aimed at the push's own requests (blob uploads, the manifest PUT): the flow first reads the
# manifest to see whether the tag is already published, and that read must not absorb them.
@pytest.mark.parametrize(
    "inject",
    [
        pytest.param(lambda p: p.fail_next(2, status=500, method="PUT", path="/manifests/"), id="500-twice"),
        pytest.param(
            lambda p: p.fail_next(
                2, status=429, headers={"Retry-After": "1"}, method="PUT", path="/manifests/"
            ),
            id="429-retry-after-twice",
        ),
        pytest.param(lambda p: p.reset_next(1, method="PUT", path="/manifests/"), id="connection-reset"),
        pytest.param(
            lambda p: p.fail_next(1, status=503, method="PUT", path="/manifests/"), id="manifest-503"
        ),
    ],
)
def test_transient_registry_faults_are_retried_to_a_pushed_tag(
    sample: SampleProject, registry: Registry, local_images: list[str], inject: Any
) -> None:
    with FaultProxy(upstream=registry.host) as proxy:
        inject(proxy)
        local_images.append(image_ref(proxy, sample))
        state = run_through(proxy, sample, registry)
        assert proxy.faults_served >= 1
        assert proxy.pending_faults == 0
    assert state.is_completed(), state.message
    assert state.result().status == "pushed"
    tag = f"pr-11-{sample.head_sha}"
    assert registry.tags(sample.app.repository.lower()) == [tag]
    digest, _ = registry.manifest(sample.app.repository.lower(), tag)
    assert state.result().digest == digest
    assert task_run_counts(state)["push"] >= 2


@pytest.mark.parametrize(
    ("inject", "words"),
    [
        pytest.param(
            lambda p: p.fail_next(10_000, status=503, method="PUT", path="/manifests/"),
            "503",
            id="manifest-503-forever",
        ),
        pytest.param(
            lambda p: p.fail_next(10_000, status=500, method="PUT", path="/manifests/"),
            "500",
            id="manifest-500-forever",
        ),
        pytest.param(
            lambda p: p.reset_next(10_000, method="PUT", path="/manifests/"),
            "reset",
            id="manifest-reset-forever",
        ),
    ],
)
def test_persistent_registry_faults_fail_the_run_clearly_without_a_tag(
    sample: SampleProject, registry: Registry, local_images: list[str], inject: Any, words: str
) -> None:
    with FaultProxy(upstream=registry.host) as proxy:
        inject(proxy)
        local_images.append(image_ref(proxy, sample))
        state = run_through(proxy, sample, registry, retries=2)
        manifest_puts = [s for s in proxy.seen if s.method == "PUT" and "/manifests/" in s.path]
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, TransientPushError)
    assert "transient" in str(error)
    assert words in str(error).lower()
    assert "registry push failed (transient)" in (state.message or "")
    assert task_run_counts(state)["push"] == 3  # 1 + retries, then it gives up
    assert len(manifest_puts) >= 3
    assert all(s.outcome != 201 for s in manifest_puts)
    assert registry.tags(sample.app.repository.lower()) == []  # no half-written tag
    assert registry.password not in str(error)


def test_a_stalled_registry_fails_at_the_push_timeout_without_a_tag(
    sample: SampleProject, registry: Registry, local_images: list[str]
) -> None:
    with FaultProxy(upstream=registry.host) as proxy:
        proxy.stall_next(10_000, seconds=60, method="PUT", path="/manifests/")
        local_images.append(image_ref(proxy, sample))
        state = run_through(proxy, sample, registry, retries=1, push_timeout=3)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, TransientPushError)
    assert "timed out after 3s" in str(error)
    assert task_run_counts(state)["push"] == 2
    assert registry.tags(sample.app.repository.lower()) == []
