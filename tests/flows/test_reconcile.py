"""Reconcile with GitHub, end to end: a real Prefect server with the deployments served in a subprocess (with
their event trigger), the real Docker engine, registry and git remotes, and the fake GitHub. The receiver is
not running while the PRs are pushed and closed (no event reaches Prefect); it is back for a late delivery."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
from prefect.client.schemas.objects import StateType
from pydantic import SecretStr

from flows.preview_reconcile import ReconcileReport, preview_reconcile
from previews.core.reconcile import delivery_id
from previews.settings import Settings
from previews.wiring import Wiring
from tests.conftest import INFRA, github_values, settings_for
from tests.support.fake_github import FakeGitHub
from tests.support.sample import SampleProject, make_sample
from tests.support.served import create_run, serve_preview_image, task_states, wait_final
from tests.support.services import Registry
from tests.support.webhooks import SECRET, headers, run_receiver, synchronize_payload

pytestmark = pytest.mark.usefixtures("prefect_server", "base_image")

PRS = 20
CLOSED = 21


def served_env(sample: SampleProject, reg: Registry, github: FakeGitHub, workspace: Path) -> dict[str, str]:
    return {
        "PREVIEWS_REGISTRY": reg.host,
        "PREVIEWS_REGISTRY_USERNAME": reg.username,
        "PREVIEWS_REGISTRY_TOKEN": reg.password,
        "PREVIEWS_GIT_URL_TEMPLATE": sample.git_url_template,
        "PREVIEWS_SIBLINGS": sample.siblings,
        "PREVIEWS_BUILD_CONTEXT": "..",
        "PREVIEWS_WORKSPACE_ROOT": str(workspace),
        "PREVIEWS_RETRY_DELAY": "0.2",
        "PREVIEWS_GITHUB_API_URL": github.url,
        "PREVIEWS_GITHUB_TOKEN": github.token,
        "PREVIEWS_INFRA_REPOSITORY": INFRA,
    }


@pytest.fixture
def stack(
    remotes_root: Path, registry: Registry, session_dir: Path, github: FakeGitHub
) -> Iterator[tuple[SampleProject, str, Settings]]:
    """A sample repository, the deployments served over it, and the settings of a reconcile of it."""
    sample = make_sample(remotes_root, f"Rec-{uuid.uuid4().hex[:8]}")
    workspace = session_dir / f"reconcile-ws-{uuid.uuid4().hex[:6]}"
    workspace.mkdir()
    name = f"rec-{uuid.uuid4().hex[:8]}"
    env = served_env(sample, registry, github, workspace)
    log = session_dir / f"{name}.log"
    with serve_preview_image(env, log=log, name=name, teardown=True, triggers=True) as deployment:
        settings = settings_for(
            sample,
            registry,
            **github_values(github),
            reconcile_repositories=sample.app.repository,
            reconcile_image_deployment=deployment,
            reconcile_teardown_deployment=f"preview-teardown/{name}",
        )
        yield sample, deployment, settings


def reconcile(settings: Settings, *, dry_run: bool) -> ReconcileReport:
    state = preview_reconcile.over(lambda: Wiring(settings))(dry_run=dry_run, return_state=True)
    assert state.is_completed(), state.message
    report = state.result()
    assert isinstance(report, ReconcileReport)
    return report


def completed(run_id: Any) -> None:
    run = wait_final(uuid.UUID(str(run_id)), timeout=240)
    assert run.state is not None
    assert run.state.type == StateType.COMPLETED, (run.name, run.state.message)


def deliver_late(
    tmp_path: Path, api: str, deployment: str, repo: str, number: int, sha: str, base: str
) -> str:
    """A signed ``synchronize`` delivery through the real receiver; the id of the run its event started."""
    payload = synchronize_payload(repository=repo, number=number)
    payload["pull_request"]["head"]["sha"] = sha
    payload["pull_request"]["base"]["sha"] = base
    body, guid = json.dumps(payload).encode(), str(uuid.uuid4())
    settings = Settings(
        webhook_secret=SecretStr(SECRET),
        outbox_path=tmp_path / "outbox.sqlite3",
        prefect_api_url=api,
        forwarder_poll_seconds=0.2,
    )
    with run_receiver(settings) as receiver:
        answer = httpx.post(
            receiver.webhook_url, content=body, headers=headers(body, delivery=guid), timeout=30
        )
        assert answer.json()["status"] == "accepted", answer.text
        deadline = time.monotonic() + 60
        while not (runs := runs_of(deployment, guid)):
            assert time.monotonic() < deadline, "the delivery started no run"
            time.sleep(0.25)
    (run,) = runs
    return run


def runs_of(deployment: str, delivery: str) -> list[str]:
    """Ids of the deployment's runs whose ``delivery`` parameter is ``delivery``."""
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        found = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[dep.id])), limit=200
        )
    return [str(r.id) for r in found if (r.parameters or {}).get("delivery") == delivery]


def teardowns(github: FakeGitHub, pr: int) -> list[dict[str, Any]]:
    return [
        d
        for d in github.dispatches_to(INFRA)
        if d["event_type"] == "preview-teardown" and d["client_payload"]["pr"] == pr
    ]


@pytest.mark.slow
def test_reconcile_builds_every_missed_head_once_and_tears_down_a_missed_close(
    stack: tuple[SampleProject, str, Settings],
    github: FakeGitHub,
    registry: Registry,
    image_cleanup: list[str],
    tmp_path: Path,
    prefect_server: str,
) -> None:
    sample, deployment, settings = stack
    repo, image = sample.app.repository, sample.app.repository.lower()
    # PR 21 got its preview while the receiver was up (a real delivery), then closed while it was down.
    closed_sha = sample.app.commit({"src/main.txt": "closed PR\n"}, "closed PR")
    github.add_pull(repo, CLOSED, head_sha=closed_sha, base_sha=sample.head_sha)
    delivered = {
        "repository": repo,
        "pr_number": CLOSED,
        "head_sha": closed_sha,
        "delivery": str(uuid.uuid4()),
    }
    completed(create_run(deployment, delivered).id)
    github.close_pull(repo, CLOSED)
    # Meanwhile 20 PRs were pushed: nothing reached Prefect.
    heads = {}
    for pr in range(1, PRS + 1):
        heads[pr] = sample.app.commit({"src/main.txt": f"PR {pr}\n"}, f"PR {pr}")
        github.add_pull(repo, pr, head_sha=heads[pr], base_sha=sample.head_sha, labels=[f"l{pr}"])
    image_cleanup.extend(f"{registry.host}/{image}:pr-{pr}-{sha}" for pr, sha in heads.items())
    image_cleanup.append(f"{registry.host}/{image}:pr-{CLOSED}-{closed_sha}")

    dry = reconcile(settings, dry_run=True)
    assert dry.counts == {"missing": PRS, "teardown": 1}
    assert len(dry.started) == PRS + 1
    assert teardowns(github, CLOSED) == []

    first = reconcile(settings, dry_run=False)
    assert first.complete
    assert first.counts == {"missing": PRS, "teardown": 1}
    assert [s["fresh"] for s in first.started] == [True] * (PRS + 1)
    image_runs = {s["pr_number"]: s for s in first.started if s["start"] == "preview-image"}
    assert sorted(image_runs) == list(range(1, PRS + 1))
    assert all(s["delivery"] == delivery_id(repo, pr, heads[pr]) for pr, s in image_runs.items())
    for started in first.started:
        completed(started["run_id"])
    assert set(registry.tags(image)) == {f"pr-{pr}-{sha}" for pr, sha in heads.items()} | {
        f"pr-{CLOSED}-{closed_sha}"
    }
    assert len(teardowns(github, CLOSED)) == 1
    # 1 listing page, 20 statuses, 1 closed PR's state
    assert first.github_requests == 1 + PRS + 1

    second = reconcile(settings, dry_run=False)
    assert second.counts == {"up-to-date": PRS}
    assert second.started == []
    assert second.github_requests == 1  # the listing: Prefect knows the run that ended for every head

    # The receiver is back: a late real delivery for one of those SHAs builds nothing new.
    digest_before = registry.manifest(image, f"pr-5-{heads[5]}")[0]
    late = deliver_late(tmp_path, prefect_server, deployment, repo, 5, heads[5], sample.head_sha)
    completed(late)
    tasks = task_states(uuid.UUID(late))
    assert "build" not in tasks, tasks
    assert "push" not in tasks, tasks
    assert registry.manifest(image, f"pr-5-{heads[5]}")[0] == digest_before
    assert len(teardowns(github, CLOSED)) == 1
