"""Building like the production deploy: the seed's layout (``common/`` and ``proto/`` beside the app, context
``..``), sibling repositories fetched with their own token, BuildKit features and build secrets, through the
real flow against a real Prefect server, Docker engine, registry and git HTTP server."""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import tarfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.states import State
from pydantic import SecretStr

from flows.common import use_settings
from flows.preview_image import preview_image
from previews.core.outcome import PreviewResult
from previews.errors import ValidationError
from previews.settings import Settings
from tests.support.fake_github import FakeGitHub
from tests.support.git_http import GitHttpServer, run_git_http
from tests.support.prefect_api import flow_run_logs, task_run_counts
from tests.support.processes import wait_until_gone, wait_until_running
from tests.support.sample import make_sample
from tests.support.services import BASE_IMAGE, Registry, Remote, git, make_remote
from tests.support.socket_proxy import EngineProxy, socket_dir

pytestmark = pytest.mark.usefixtures("prefect_server", "base_image")

APP_TOKEN = "ghp_app-token-" + secrets.token_hex(12)
SIBLINGS_TOKEN = "ghp_repo-access-token-" + secrets.token_hex(12)

# The seed's layout: the Dockerfile lives in the app and builds from the workspace (`docker build -f
# app/Dockerfile ..` in the workflow), so `common/` and `proto/` are reachable beside `app/`.
SEED_DOCKERFILE = f"""\
FROM {BASE_IMAGE} AS base
WORKDIR /src

FROM base AS never-used
RUN echo the-unused-stage-ran && exit 1

FROM base AS build
COPY proto/ /src/proto/
COPY common/ /src/common/
RUN --mount=type=cache,target=/root/.cache cat proto/api.proto common/lib.txt > /src/generated.txt
COPY app/src/ /src/app/
RUN cat /src/generated.txt /src/app/main.txt > /src/bundle.txt

FROM {BASE_IMAGE}
COPY --from=build /src/bundle.txt /opt/bundle.txt
"""


def run(settings: Settings, **params: Any) -> State[Any]:
    with use_settings(settings):
        state: State[Any] = preview_image(**params, return_state=True)
    return state


@pytest.fixture
def image_cleanup(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    refs: list[str] = []
    yield refs
    for ref in refs:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(ref, force=True)


@pytest.fixture
def seed(tmp_path: Path) -> Iterator[tuple[GitHttpServer, str, str]]:
    """``owner/app``, ``owner/common`` and ``owner/proto`` (default branch ``trunk``) behind a git HTTP server
    that wants the app token for the app and the sibling token for the siblings; yields (server, owner, sha)."""
    owner = f"Seed-{uuid.uuid4().hex[:8]}"
    root = tmp_path / "remotes"
    common = make_remote(root, f"{owner}/common")
    common.commit({"lib.txt": "common v1\n"}, "common v1")
    proto = make_remote(root, f"{owner}/proto")
    proto.commit({"api.proto": "proto on main\n"}, "proto v1")
    git("checkout", "-q", "-b", "trunk", cwd=proto.work)
    (proto.work / "api.proto").write_text("proto v2 on trunk\n")
    git("commit", "-q", "-am", "proto v2", cwd=proto.work)
    git("push", "-q", "origin", "HEAD:trunk", cwd=proto.work)
    git("symbolic-ref", "HEAD", "refs/heads/trunk", cwd=proto.bare)
    app = make_remote(root, f"{owner}/app")
    sha = app.commit({"Dockerfile": SEED_DOCKERFILE, "src/main.txt": "app v1\n"}, "app v1")
    siblings = {f"{owner}/common": SIBLINGS_TOKEN, f"{owner}/proto": SIBLINGS_TOKEN}
    with run_git_http(root, APP_TOKEN, repo_tokens=siblings) as server:
        yield server, owner, sha


def seed_settings(server: GitHttpServer, owner: str, registry: Registry, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "registry": registry.host,
        "registry_username": registry.username,
        "registry_token": SecretStr(registry.password),
        "git_url_template": server.url_template(),
        "git_token": SecretStr(APP_TOKEN),
        "siblings_git_token": SecretStr(SIBLINGS_TOKEN),
        "siblings": f"common={owner}/common@main,proto={owner}/proto",
        "build_context": "..",
        "dockerfile": "Dockerfile",
        "retry_delay": 0.1,
        "retries": 1,
    }
    values.update(overrides)
    return Settings(**values)


def test_the_seed_layout_builds_with_each_repository_fetched_with_its_own_token(
    seed: tuple[GitHttpServer, str, str],
    registry: Registry,
    docker_client: docker.DockerClient,
    image_cleanup: list[str],
) -> None:
    server, owner, sha = seed
    state = run(seed_settings(server, owner, registry), repository=f"{owner}/app", pr_number=3, head_sha=sha)

    assert state.is_completed(), state.message
    result = state.result()
    assert isinstance(result, PreviewResult)
    assert result.status == "pushed", result.reason
    assert result.image is not None
    image_cleanup.append(result.image)
    output = docker_client.containers.run(result.image, "cat /opt/bundle.txt", remove=True)
    assert output.decode() == "proto v2 on trunk\ncommon v1\napp v1\n"  # proto from its default branch

    tokens = {"default": APP_TOKEN, f"{owner}/common": SIBLINGS_TOKEN, f"{owner}/proto": SIBLINGS_TOKEN}
    sent = {repo: {tokens[n] for n in names if n} for repo, names in server.seen_by_repository().items()}
    assert sent == {
        f"{owner}/app": {APP_TOKEN},
        f"{owner}/common": {SIBLINGS_TOKEN},
        f"{owner}/proto": {SIBLINGS_TOKEN},
    }
    assert all(r.authorized for r in server.requests)
    logs = flow_run_logs(state)
    assert "the-unused-stage-ran" not in logs  # BuildKit skipped the stage nothing uses
    assert "Checked out sibling proto (refs/heads/trunk) at " in logs  # its remote's default branch
    assert APP_TOKEN not in logs
    assert SIBLINGS_TOKEN not in logs


def test_with_only_the_app_token_the_siblings_are_refused(
    seed: tuple[GitHttpServer, str, str], registry: Registry
) -> None:
    """Each token falls back to the other only when unset: here the sibling token is unset, so the siblings
    get the app's token, which their server refuses (as GitHub would for a token without access)."""
    server, owner, sha = seed
    settings = seed_settings(server, owner, registry, siblings_git_token=None)
    state = run(settings, repository=f"{owner}/app", pr_number=4, head_sha=sha)
    assert state.is_failed()
    assert "authentication failed" in str(state.result(raise_on_failure=False))
    assert any(r.repository == f"{owner}/common" and not r.authorized for r in server.requests)


SECRET_DOCKERFILE = f"""\
FROM {BASE_IMAGE} AS base
FROM base AS never-used
RUN exit 1
FROM base
RUN --mount=type=cache,target=/cache echo warm > /cache/x && ls /cache
RUN --mount=type=secret,id=npm test -s /run/secrets/npm && echo "npm-token-bytes=$(wc -c < /run/secrets/npm)" \\
    && cat /run/secrets/npm > /dev/null
COPY app/src/ /opt/app/
"""


def test_a_build_secret_reaches_the_build_and_nowhere_else(
    seed: tuple[GitHttpServer, str, str],
    registry: Registry,
    docker_client: docker.DockerClient,
    image_cleanup: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, owner, _ = seed
    app = Remote(f"{owner}/app", server.root / f"{owner}/app.git", server.root / "_work" / owner / "app")
    nonce = f"RUN echo {uuid.uuid4().hex}\n"  # a fresh first step: nothing below it comes from the cache
    dockerfile = SECRET_DOCKERFILE.replace("FROM base\n", "FROM base\n" + nonce, 1)
    sha = app.commit({"Dockerfile": dockerfile}, "needs a private module token")
    variable = f"NPM_TOKEN_{uuid.uuid4().hex[:6].upper()}"
    value = "npm_" + secrets.token_hex(20)
    monkeypatch.setenv(variable, value)  # the environment of the process that runs the flow
    settings = seed_settings(server, owner, registry, build_secrets=f"npm={variable}")

    state = run(settings, repository=f"{owner}/app", pr_number=5, head_sha=sha)

    assert state.is_completed(), state.message
    result = state.result()
    assert result.image is not None
    image_cleanup.append(result.image)
    logs = flow_run_logs(state)
    assert f"npm-token-bytes={len(value)}" in logs  # the secret reached RUN --mount=type=secret
    assert value not in logs
    tarball = b"".join(docker_client.images.get(result.image).save(named=True))
    assert value.encode() not in tarball
    with tarfile.open(fileobj=io.BytesIO(tarball)) as outer:
        for member in outer.getmembers():
            if member.isfile():
                data = outer.extractfile(member)
                assert data is not None
                content = data.read()
                if member.name.endswith("layer.tar"):
                    with tarfile.open(fileobj=io.BytesIO(content)) as layer:
                        for item in layer.getmembers():
                            extracted = layer.extractfile(item) if item.isfile() else None
                            assert extracted is None or value.encode() not in extracted.read()
    assert value not in json.dumps(docker_client.api.history(result.image))
    assert value not in json.dumps(registry.image_config(f"{owner.lower()}/app", result.tag or ""))
    assert value not in json.dumps(_artifacts_of(state))
    assert value not in json.dumps(result.to_json())


def _artifacts_of(state: State[Any]) -> list[Any]:
    import asyncio

    async def read() -> list[Any]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
                )
            )
        return [a.model_dump(mode="json") for a in found]

    artifacts = asyncio.run(read())
    assert artifacts  # the summary artifact exists, so the check above looked at something
    return artifacts


def test_a_secret_without_a_value_fails_before_any_work(
    seed: tuple[GitHttpServer, str, str], registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, owner, sha = seed
    monkeypatch.delenv("NPM_TOKEN_UNSET_FOR_TEST", raising=False)
    settings = seed_settings(server, owner, registry, build_secrets="npm=NPM_TOKEN_UNSET_FOR_TEST")
    state = run(settings, repository=f"{owner}/app", pr_number=6, head_sha=sha)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ValidationError)
    assert "NPM_TOKEN_UNSET_FOR_TEST" in str(error)
    assert server.requests == []  # nothing was fetched


def test_paths_and_paths_ignore_together_fail_before_any_work(
    seed: tuple[GitHttpServer, str, str], registry: Registry
) -> None:
    server, owner, sha = seed
    settings = seed_settings(server, owner, registry, paths="src/**", paths_ignore="docs/**")
    state = run(settings, repository=f"{owner}/app", pr_number=8, head_sha=sha)
    assert state.is_failed()
    assert "PREVIEWS_PATHS and PREVIEWS_PATHS_IGNORE are both set" in str(
        state.result(raise_on_failure=False)
    )
    assert server.requests == []


def test_an_engine_lost_mid_build_is_retried_and_never_the_prs_failure(
    remotes_root: Path,
    registry: Registry,
    image_cleanup: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine goes away while the build runs (its socket is cut); it is back for the retry. The run
    retries the build, pushes, and the PR's commit never shows `failure`."""
    marker = f"lost-{uuid.uuid4().hex[:8]}"
    sample = make_sample(remotes_root, f"Lost-{uuid.uuid4().hex[:8]}")
    base = sample.head_sha
    head = sample.app.commit(
        {"Dockerfile": f"FROM {BASE_IMAGE}\nRUN sh -c 'sleep 2; echo {marker}'\nCOPY app/src/ /opt/app/\n"},
        "slow",
    )
    sample.app.push_pr_ref(9, head)
    with socket_dir() as sockets, FakeGitHub() as github:
        path = sockets / "engine.sock"
        github.add_pull(sample.app.repository, 9, head_sha=head, base_sha=base)
        settings = Settings(
            registry=registry.host,
            registry_username=registry.username,
            registry_token=SecretStr(registry.password),
            git_url_template=sample.git_url_template,
            siblings=sample.siblings,
            build_context="..",
            retries=2,
            retry_delay=0.5,
            github_api_url=github.url,
            github_token=SecretStr(github.token),
            cache_from_enabled=False,
        )
        first = EngineProxy(path).__enter__()
        monkeypatch.setenv("DOCKER_HOST", first.host)
        outcome: list[State[Any]] = []
        worker = threading.Thread(
            target=lambda: outcome.append(
                run(settings, repository=sample.app.repository, pr_number=9, head_sha=head, base_sha=base)
            )
        )
        worker.start()
        try:
            wait_until_running(marker)
            first.cut()  # the engine is gone for the build's client
            assert wait_until_gone(marker) == []
            second = EngineProxy(path).__enter__()  # and back for the retry
        finally:
            worker.join(timeout=180)
        second.cut()
        (state,) = outcome
        statuses = [s["state"] for s in github.statuses(sample.app.repository, head)]
    assert state.is_completed(), state.message
    result = state.result()
    assert result.image is not None
    image_cleanup.append(result.image)
    assert task_run_counts(state)["build"] == 2  # the build ran twice: lost, then retried
    logs = flow_run_logs(state)
    # transient either way: the engine no longer answers, or the build's stream broke without a step failing
    assert "Task run failed with exception: TransientBuildError(" in logs
    assert "Retry 1/2 will start" in logs
    assert "failure" not in statuses
    assert statuses == ["pending", "success"]


def test_a_forks_build_gets_no_build_secrets_by_default(
    seed: tuple[GitHttpServer, str, str],
    registry: Registry,
    image_cleanup: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, owner, _ = seed
    app = Remote(f"{owner}/app", server.root / f"{owner}/app.git", server.root / "_work" / owner / "app")
    probe = (
        f"FROM {BASE_IMAGE}\n"
        "RUN --mount=type=secret,id=npm if [ -s /run/secrets/npm ]; then echo secret-present; "
        f"else echo secret-absent; fi; echo {uuid.uuid4().hex}\n"
    )
    sha = app.commit({"Dockerfile": probe}, "a fork's Dockerfile")
    monkeypatch.setenv("NPM_TOKEN_FORK_TEST", "npm_" + secrets.token_hex(8))
    settings = seed_settings(
        server, owner, registry, build_secrets="npm=NPM_TOKEN_FORK_TEST", fork_policy="allow"
    )

    fork = run(settings, repository=f"{owner}/app", pr_number=10, head_sha=sha, fork=True)
    assert fork.is_completed(), fork.message
    image_cleanup.append(fork.result().image)
    logs = flow_run_logs(fork)
    assert "secret-absent" in logs
    assert "build secrets npm withheld from a fork's build" in logs

    trusted = run(
        seed_settings(
            server,
            owner,
            registry,
            build_secrets="npm=NPM_TOKEN_FORK_TEST",
            fork_policy="allow",
            fork_build_secrets=True,
        ),
        repository=f"{owner}/app",
        pr_number=11,
        head_sha=sha,
        fork=True,
        force_rebuild=True,
    )
    assert trusted.is_completed(), trusted.message
    image_cleanup.append(trusted.result().image)
    assert "secret-present" in flow_run_logs(trusted)
