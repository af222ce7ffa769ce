"""Cancel-in-progress, cheap reruns and warm builds, against a real Prefect server with a served deployment,
the real Docker engine, the real registry and real git remotes."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import pytest
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelled, Scheduled
from pydantic import SecretStr

from flows.preview_image import preview_image
from previews.core.events import format_occurred
from tests.conftest import run_image, settings_for
from tests.support.faultproxy import FaultProxy
from tests.support.prefect_api import flow_run_logs, task_run_counts
from tests.support.private_engine import PrivateEngine, private_engine
from tests.support.processes import processes_with, wait_until_gone
from tests.support.sample import SampleProject, make_sample
from tests.support.served import (
    create_run,
    read_run,
    serve_preview_image,
    states_of,
    task_states,
    wait_final,
    wait_for,
)
from tests.support.services import BASE_IMAGE, Registry

pytestmark = pytest.mark.usefixtures("prefect_server", "base_image")


def slow_dockerfile(seconds: int, marker: str) -> str:
    """A build whose RUN sleeps in a child shell that carries ``marker`` on its command line (BuildKit runs a
    step as host processes, not as a container, so that is how a test sees the build running or gone)."""
    return (
        f"FROM {BASE_IMAGE}\n"
        f"RUN mkdir -p /opt && echo {marker} > /opt/marker && sh -c 'sleep {seconds}; echo {marker}'\n"
        "COPY app/src/ /opt/app/\n"
    )


def unique_dockerfile(marker: str) -> str:
    """A Dockerfile whose layer chain no other test shares (so removing its images really empties the cache)."""
    return (
        f"FROM {BASE_IMAGE}\n"
        f"RUN mkdir -p /opt && echo {marker} > /opt/marker\n"
        "ARG GREETING=hello\n"
        "COPY common/lib.txt /opt/common/lib.txt\n"
        'RUN echo "$GREETING" > /opt/greeting.txt\n'
        "COPY app/src/ /opt/app/\n"
        "RUN cat /opt/app/main.txt /opt/common/lib.txt > /opt/combined.txt\n"
    )


def env_for(sample: SampleProject, reg: Registry, workspace_root: Path) -> dict[str, str]:
    return {
        "PREVIEWS_REGISTRY": reg.host,
        "PREVIEWS_REGISTRY_USERNAME": reg.username,
        "PREVIEWS_REGISTRY_TOKEN": reg.password,
        "PREVIEWS_GIT_URL_TEMPLATE": sample.git_url_template,
        "PREVIEWS_SIBLINGS": sample.siblings,
        "PREVIEWS_BUILD_CONTEXT": "..",
        "PREVIEWS_WORKSPACE_ROOT": str(workspace_root),
        "PREVIEWS_RETRY_DELAY": "0.2",
    }


@pytest.fixture(scope="module")
def served_sample(remotes_root: Path) -> SampleProject:
    return make_sample(remotes_root, f"Sup-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def served(
    served_sample: SampleProject, registry: Registry, session_dir: Path, prefect_server: str
) -> Iterator[tuple[str, Path]]:
    """The preview-image deployment served in a subprocess (runner polling every second)."""
    workspace_root = session_dir / f"served-ws-{uuid.uuid4().hex[:6]}"
    workspace_root.mkdir()
    env = env_for(served_sample, registry, workspace_root)
    with serve_preview_image(env, log=session_dir / "served.log") as deployment:
        yield deployment, workspace_root


@pytest.mark.slow
def test_newer_push_cancels_the_older_build(
    served: tuple[str, Path],
    served_sample: SampleProject,
    registry: Registry,
    docker_client: docker.DockerClient,
    image_cleanup: list[str],
) -> None:
    deployment, workspace_root = served
    sample = served_sample
    marker = f"slow-{uuid.uuid4().hex[:8]}"
    sha_a = sample.app.commit({"Dockerfile": slow_dockerfile(20, marker)}, "slow build")
    sha_b = sample.app.commit({"Dockerfile": slow_dockerfile(0, marker + "-b")}, "fast build")
    params = {"repository": sample.app.repository, "pr_number": 31}
    other_pr = create_run(deployment, {**params, "pr_number": 32, "head_sha": sha_b})

    run_a = create_run(deployment, {**params, "head_sha": sha_a})
    deadline = time.monotonic() + 60
    while task_states(run_a.id).get("build") != "RUNNING" or not processes_with(marker):
        assert time.monotonic() < deadline, task_states(run_a.id)
        time.sleep(0.3)

    run_b = create_run(deployment, {**params, "head_sha": sha_b})
    started = time.monotonic()
    a = wait_for(run_a.id, {StateType.CANCELLED, StateType.COMPLETED, StateType.FAILED}, timeout=45)
    took = time.monotonic() - started
    assert a.state is not None
    assert a.state.type == StateType.CANCELLED, a.state
    messages = [s.message or "" for s in states_of(run_a.id)]
    assert any(m == f"superseded by {sha_b}" for m in messages), messages
    assert took < 20, took

    b = wait_final(run_b.id)
    assert b.state is not None
    assert b.state.type == StateType.COMPLETED, b.state.message
    final = read_run(run_a.id).state  # issue 13 item 11: the final state names the newer SHA
    assert final is not None
    assert (final.type, final.message) == (StateType.CANCELLED, f"superseded by {sha_b}")
    assert wait_final(other_pr.id).state.type == StateType.COMPLETED  # type: ignore[union-attr]
    image = sample.app.repository.lower()
    image_cleanup.extend(f"{registry.host}/{image}:pr-{n}-{sha_b}" for n in (31, 32))
    assert registry.tags(image) == sorted([f"pr-31-{sha_b}", f"pr-32-{sha_b}"])  # A pushed nothing
    assert "push" not in task_states(run_a.id)

    assert (
        wait_until_gone(marker) == []
    )  # the cancelled run's BuildKit build stopped: its RUN processes are gone
    assert not (workspace_root / f"previews-run-{run_a.id}").exists()


@pytest.mark.slow
def test_the_later_delivery_wins_though_its_run_was_created_first(
    served: tuple[str, Path], served_sample: SampleProject, registry: Registry, image_cleanup: list[str]
) -> None:
    """A burst without GitHub settings: Prefect created the old push's run last; delivery order decides.

    Whichever run starts first, the old commit's run ends Cancelled, "superseded by <final>", and pushes
    nothing; the final head's run builds and pushes (by creation time the old commit would have won).
    """
    deployment, _ = served
    sample = served_sample
    old_sha = sample.app.commit({"src/main.txt": f"old push {uuid.uuid4().hex[:8]}\n"}, "old push")
    final_sha = sample.app.commit({"src/main.txt": f"final push {uuid.uuid4().hex[:8]}\n"}, "final push")
    accepted = datetime.now(UTC) - timedelta(seconds=5)
    params = {"repository": sample.app.repository, "pr_number": 34}
    # Both due at the same moment, so the runner starts them together (a burst): the final head's run cannot
    # end before the old commit's run starts and sees it in flight.
    together = Scheduled(scheduled_time=datetime.now(UTC) + timedelta(seconds=4))
    final_run = create_run(
        deployment,
        {**params, "head_sha": final_sha, "delivery": str(uuid.uuid4()), "received": stamp(accepted, 1)},
        together,
    )
    old_run = create_run(  # created second, received first
        deployment,
        {**params, "head_sha": old_sha, "delivery": str(uuid.uuid4()), "received": stamp(accepted, 0)},
        together,
    )
    assert old_run.created is not None
    assert final_run.created is not None
    assert old_run.created > final_run.created

    final = wait_final(final_run.id)
    old = wait_final(old_run.id)
    assert final.state is not None
    assert final.state.type == StateType.COMPLETED, final.state.message
    assert old.state is not None
    assert (old.state.type, old.state.message) == (StateType.CANCELLED, f"superseded by {final_sha}")
    assert "push" not in task_states(old_run.id)
    image = sample.app.repository.lower()
    image_cleanup.append(f"{registry.host}/{image}:pr-34-{final_sha}")
    assert [t for t in registry.tags(image) if t.startswith("pr-34-")] == [f"pr-34-{final_sha}"]


def stamp(moment: datetime, seconds: float) -> str:
    """``received`` as the receiver writes it, ``seconds`` after ``moment``."""
    return format_occurred(moment + timedelta(seconds=seconds))


@pytest.mark.slow
def test_same_sha_twice_builds_once(
    served: tuple[str, Path], served_sample: SampleProject, registry: Registry, image_cleanup: list[str]
) -> None:
    deployment, _ = served
    sample = served_sample
    sha = sample.app.commit({"Dockerfile": slow_dockerfile(3, f"dup-{uuid.uuid4().hex[:8]}")}, "dup")
    params = {"repository": sample.app.repository, "pr_number": 33, "head_sha": sha}
    first = create_run(deployment, params)
    second = create_run(deployment, {**params, "repository": sample.app.repository.upper()})
    ends = [wait_final(first.id), wait_final(second.id)]
    assert [e.state.type for e in ends] == [StateType.COMPLETED] * 2  # type: ignore[union-attr]
    builds = [r for r in (first, second) if "build" in task_states(r.id)]
    assert len(builds) == 1
    assert builds[0].id == first.id
    assert (ends[1].state.message or "").startswith("skipped: duplicate of run ")  # type: ignore[union-attr]
    image = sample.app.repository.lower()
    image_cleanup.append(f"{registry.host}/{image}:pr-33-{sha}")
    assert f"pr-33-{sha}" in registry.tags(image)


def test_rerun_of_a_published_sha_builds_nothing_and_reports_the_same_digest(
    sample: SampleProject, registry: Registry, image_cleanup: list[str]
) -> None:
    settings = settings_for(sample, registry, retries=1)
    params = {"repository": sample.app.repository, "pr_number": 41, "head_sha": sample.head_sha}
    first = run_image(settings, **params)
    assert first.is_completed(), first.message
    image_cleanup.append(first.result().image)
    assert "build" in task_run_counts(first)

    again = run_image(settings, **params)
    assert again.is_completed(), again.message
    result = again.result()
    assert result.status == "pushed"
    assert result.digest == first.result().digest
    assert "already published" in result.reason
    tasks = set(task_run_counts(again))
    assert "build" not in tasks
    assert "push" not in tasks
    assert "checkout" in tasks
    assert "notify-infra" in tasks
    assert sum(result.durations_s.values()) < sum(first.result().durations_s.values())

    # another build setting (a build arg) is another fingerprint: rebuilt, same tag
    changed = run_image(settings_for(sample, registry, retries=1, build_args="GREETING=other"), **params)
    assert changed.is_completed(), changed.message
    assert "build" in task_run_counts(changed)

    forced = run_image(
        settings_for(sample, registry, retries=1, build_args="GREETING=other"), **params, force_rebuild=True
    )
    assert forced.is_completed(), forced.message
    assert {"build", "push"} <= set(task_run_counts(forced))
    assert registry.tags(sample.app.repository.lower()) == [f"pr-41-{sample.head_sha}"]


def test_rerun_after_a_failed_push_completes(
    sample: SampleProject, registry: Registry, image_cleanup: list[str]
) -> None:
    params = {"repository": sample.app.repository, "pr_number": 42, "head_sha": sample.head_sha}
    with FaultProxy(upstream=registry.host) as proxy:
        proxy.fail_next(10_000, status=503, method="PUT", path="/manifests/")  # every push fails at its end
        settings = settings_for(sample, registry, retries=1, registry=proxy.host)
        failed = run_image(settings, **params)
        assert failed.is_failed()
        assert task_run_counts(failed)["push"] == 2
        assert proxy.faults_served == 2
        assert registry.tags(sample.app.repository.lower()) == []

        proxy.clear()
        again = run_image(settings, **params)
        assert again.is_completed(), again.message
    result = again.result()
    image_cleanup.extend(
        [result.image, f"{registry.host}/{sample.app.repository.lower()}:pr-42-{sample.head_sha}"]
    )
    assert result.status == "pushed"
    assert registry.tags(sample.app.repository.lower()) == [f"pr-42-{sample.head_sha}"]
    assert registry.password not in flow_run_logs(again)


@contextlib.contextmanager
def cold_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateEngine]:
    """An empty Docker engine (no layers, no BuildKit cache) that the flow's builds and pulls use.

    Removing images from the shared engine would not do: BuildKit keeps its build cache without them.
    """
    with private_engine() as engine:
        engine.load(BASE_IMAGE)
        with monkeypatch.context() as patch:
            patch.setenv("DOCKER_HOST", engine.host)
            yield engine


@pytest.mark.slow
def test_cache_from_warms_a_cold_engine(
    sample: SampleProject, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = f"cache-{uuid.uuid4().hex[:8]}"
    first_sha = sample.app.commit({"Dockerfile": unique_dockerfile(marker)}, "unique chain")
    settings = settings_for(sample, registry, retries=1)
    first = run_image(settings, repository=sample.app.repository, pr_number=43, head_sha=first_sha)
    assert first.is_completed(), first.message
    assert first.result().cached_steps == 0

    one_line = sample.app.commit({"src/main.txt": "app main v2\n"}, "one-line change")
    with cold_engine(monkeypatch):
        cold = run_image(
            settings_for(sample, registry, retries=1, cache_from_enabled=False),
            repository=sample.app.repository,
            pr_number=44,
            head_sha=one_line,
        )
        assert cold.is_completed(), cold.message
        assert cold.result().cached_steps == 0
        assert "CACHED" not in flow_run_logs(cold)

    with cold_engine(monkeypatch):
        warm = run_image(settings, repository=sample.app.repository, pr_number=43, head_sha=one_line)
        assert warm.is_completed(), warm.message
        logs = flow_run_logs(warm)
        assert (
            f"build cache: pulled {registry.host}/{sample.app.repository.lower()}:pr-43-{first_sha}" in logs
        )
        assert logs.count("CACHED") >= 3
        result = warm.result()
        assert result.cached_steps == 3  # RUN marker, COPY common, RUN greeting came from the pulled image
        assert result.steps == 5  # the changed COPY and the RUN after it ran

    # a PR without images of its own falls back to the configured base-branch image
    base_image = f"{registry.host}/{sample.app.repository.lower()}:pr-43-{first_sha}"
    with cold_engine(monkeypatch):
        fallback = run_image(
            settings_for(sample, registry, retries=1, cache_from_fallback=base_image),
            repository=sample.app.repository,
            pr_number=47,
            head_sha=one_line,
        )
        assert fallback.is_completed(), fallback.message
        assert f"build cache: pulled {base_image}" in flow_run_logs(fallback)
        assert fallback.result().cached_steps == 3

    # an image that cannot be pulled only costs the cache
    missing = run_image(
        settings_for(
            sample, registry, retries=1, cache_from_fallback=f"{registry.host}/nope/missing:pr-1-abcdef0"
        ),
        repository=sample.app.repository,
        pr_number=48,
        head_sha=one_line,
    )
    assert missing.is_completed(), missing.message
    assert "build cache: could not pull" in flow_run_logs(missing)


def test_a_run_cancels_an_older_queued_run_and_marks_its_commit_superseded(
    sample: SampleProject, registry: Registry, image_cleanup: list[str]
) -> None:
    from prefect.client.orchestration import get_client

    from tests.support.fake_github import FakeGitHub

    old_sha = sample.head_sha
    new_sha = sample.app.commit({"src/main.txt": "app main v2\n"}, "newer push")
    with FakeGitHub() as github:
        github.add_pull(sample.app.repository, 45, head_sha=new_sha, base_sha=old_sha)
        with get_client(sync_client=True) as client:  # a run queued before ours, never picked up
            queued = client.create_flow_run(
                preview_image,
                parameters={
                    "repository": sample.app.repository.lower(),
                    "pr_number": 45,
                    "head_sha": old_sha,
                },
                state=Scheduled(),
            )
            other_pr = client.create_flow_run(
                preview_image,
                parameters={"repository": sample.app.repository, "pr_number": 46, "head_sha": old_sha},
                state=Scheduled(),
            )
        settings = settings_for(
            sample, registry, github_api_url=github.url, github_token=SecretStr(github.token)
        )
        state = run_image(settings, repository=sample.app.repository, pr_number=45, head_sha=new_sha)
        assert state.is_completed(), state.message
        image_cleanup.append(state.result().image)

        old = wait_final(queued.id, timeout=10)
        assert old.state is not None
        assert old.state.type == StateType.CANCELLED
        assert f"superseded by {new_sha}" in [s.message for s in states_of(queued.id)]
        (superseded,) = github.statuses(sample.app.repository, old_sha)
        assert superseded["state"] == "error"
        assert superseded["description"] == f"cancelled: superseded by a newer push ({new_sha[:12]})"
        with get_client(sync_client=True) as client:
            mine = client.read_flow_run(state.state_details.flow_run_id)
            untouched = client.read_flow_run(other_pr.id)
            assert untouched.state is not None
            assert untouched.state.type == StateType.SCHEDULED
            client.set_flow_run_state(other_pr.id, Cancelled(message="test cleanup"), force=True)
        assert {"previews", f"repo:{sample.app.repository.lower()}", "pr:45"} <= set(mine.tags)


def test_a_run_superseded_while_building_stops_before_the_push(
    sample: SampleProject, registry: Registry
) -> None:
    import threading

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    marker = f"late-{uuid.uuid4().hex[:8]}"
    sha_a = sample.app.commit({"Dockerfile": slow_dockerfile(4, marker)}, "slowish build")
    sha_b = sample.app.commit({"src/main.txt": "app main v2\n"}, "newer push")
    pr_tag = f"repo:{sample.app.repository.lower()}"
    outcome: list[Any] = []
    worker = threading.Thread(
        target=lambda: outcome.append(
            run_image(
                settings_for(sample, registry, retries=1),
                repository=sample.app.repository,
                pr_number=49,
                head_sha=sha_a,
            )
        )
    )
    worker.start()
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while True:  # wait for run A's build step
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[pr_tag])))
            if runs and task_states(runs[0].id).get("build") == "RUNNING":
                break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        newer = client.create_flow_run(
            preview_image,
            parameters={"repository": sample.app.repository, "pr_number": 49, "head_sha": sha_b},
            state=Scheduled(),
        )
    worker.join(timeout=120)
    (state,) = outcome
    try:
        assert state.is_cancelled(), state
        assert state.message == f"superseded by {sha_b}"
        assert "push" not in task_run_counts(state)
        assert registry.tags(sample.app.repository.lower()) == []
    finally:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(newer.id, Cancelled(message="test cleanup"), force=True)
