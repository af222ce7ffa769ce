"""Registry faults through the preview-image flow: a FaultProxy sits in front of the real registry.

Adapter-level classification (each status, resets, stalls) is in tests/test_docker_engine.py and the 503-then-
success flow case in tests/flows/test_preview_image.py; here the flow's behaviour is asserted end to end:
transient faults are retried to success, persistent ones end the run Failed with a TransientPushError after
the configured retries, and a failed push never leaves a tag behind.
"""

from __future__ import annotations

from typing import Any

import pytest
from prefect.client.schemas.objects import State

from previews.errors import TransientPushError
from tests.conftest import params_for, run_image, settings_for
from tests.support.faultproxy import FaultProxy
from tests.support.prefect_api import task_run_counts
from tests.support.sample import SampleProject
from tests.support.services import Registry

pytestmark = pytest.mark.usefixtures("prefect_server", "base_image")


def run_through(proxy: FaultProxy, sample: SampleProject, reg: Registry, **overrides: Any) -> State[Any]:
    settings = settings_for(sample, reg, **{"registry": proxy.host, "retries": 2, **overrides})
    return run_image(settings, **params_for(sample, pr=11))


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
    sample: SampleProject, registry: Registry, image_cleanup: list[str], inject: Any
) -> None:
    with FaultProxy(upstream=registry.host) as proxy:
        inject(proxy)
        image_cleanup.append(image_ref(proxy, sample))
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
    sample: SampleProject, registry: Registry, image_cleanup: list[str], inject: Any, words: str
) -> None:
    with FaultProxy(upstream=registry.host) as proxy:
        inject(proxy)
        image_cleanup.append(image_ref(proxy, sample))
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
    sample: SampleProject, registry: Registry, image_cleanup: list[str]
) -> None:
    with FaultProxy(upstream=registry.host) as proxy:
        proxy.stall_next(10_000, seconds=60, method="PUT", path="/manifests/")
        image_cleanup.append(image_ref(proxy, sample))
        state = run_through(proxy, sample, registry, retries=1, push_timeout=3)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, TransientPushError)
    assert "timed out after 3s" in str(error)
    assert task_run_counts(state)["push"] == 2
    assert registry.tags(sample.app.repository.lower()) == []
