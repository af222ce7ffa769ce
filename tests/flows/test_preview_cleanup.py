"""The preview-cleanup flow against a real Prefect server, the real registry and the fake GitHub API."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.states import Cancelled, Running
from pydantic import SecretStr

from previews.registry.oci import OciRegistry
from previews.settings import Settings
from tests.conftest import run_cleanup
from tests.support.fake_github import FakeGitHub
from tests.support.oci_images import put_config_image
from tests.support.services import Registry

pytestmark = pytest.mark.usefixtures("prefect_server")

SHA = {n: f"{n}" * 7 + "0" * 33 for n in range(1, 6)}


def push(oci: OciRegistry, repo: str, tag: str, created: datetime, marker: str) -> str:
    return put_config_image(oci, repo, tag, created=created, marker=marker)


@flow(name="preview-image")
def _stand_in_build(repository: str, pr_number: int, head_sha: str) -> None:
    """Only its name and parameters matter: a run of it in Running state is a build in flight."""


async def _start_in_flight_run(pr: int, sha: str) -> uuid.UUID:
    async with get_client() as client:
        run = await client.create_flow_run(
            _stand_in_build, parameters={"repository": "acme/app", "pr_number": pr, "head_sha": sha}
        )
        await client.set_flow_run_state(run.id, Running(), force=True)
        return run.id


async def _finish(run_id: uuid.UUID) -> None:
    async with get_client() as client:
        await client.set_flow_run_state(run_id, Cancelled(), force=True)


async def _artifacts(flow_run_id: uuid.UUID) -> dict[str, Any]:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a.data for a in found}


async def _events(name: str, since: datetime) -> list[dict[str, Any]]:
    async with get_client() as client:
        response = await client._client.post(
            "/events/filter",
            json={
                "filter": {"event": {"name": [name]}, "occurred": {"since": since.isoformat()}},
                "limit": 50,
            },
        )
        response.raise_for_status()
        events: list[dict[str, Any]] = response.json()["events"]
        return events


def test_cleanup_flow_dry_run_then_apply(registry: Registry) -> None:
    repo = f"cleanuptest/flow-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    with (
        FakeGitHub() as github,
        OciRegistry(registry.url, username=registry.username, password=SecretStr(registry.password)) as oci,
    ):
        github.add_pull("acme/app", 1, head_sha=SHA[1], state="closed")["closed_at"] = (
            now - timedelta(days=2)
        ).strftime("%Y-%m-%dT%H:%M:%SZ")
        github.add_pull("acme/app", 2, head_sha=SHA[2], state="open")
        github.add_pull("acme/app", 3, head_sha=SHA[3], state="closed")["closed_at"] = (
            now - timedelta(days=2)
        ).strftime("%Y-%m-%dT%H:%M:%SZ")
        # PR 4 does not exist on GitHub: unknown, only the TTL applies.
        doomed = push(oci, repo, f"pr-1-{SHA[1][:7]}", now - timedelta(days=3), "one")
        push(oci, repo, f"pr-2-{SHA[2][:7]}", now - timedelta(days=1), "two")
        push(oci, repo, f"pr-3-{SHA[3][:7]}", now - timedelta(days=3), "three")
        push(oci, repo, f"pr-4-{SHA[4][:7]}", now - timedelta(days=3), "four")
        expired = push(oci, repo, f"pr-5-{SHA[5][:7]}", now - timedelta(days=40), "five")
        push(oci, repo, "latest", now - timedelta(days=90), "latest")
        before = set(registry.tags(repo))

        settings = Settings(
            registry=registry.host,
            image=repo,
            registry_username=registry.username,
            registry_token=SecretStr(registry.password),
            registry_kind="oci",
            github_api_url=github.url,
            github_token=SecretStr(github.token),
            cleanup_repository="acme/app",
            tag_sha_length=7,
            retry_delay=0.1,
        )
        in_flight = asyncio.run(_start_in_flight_run(3, SHA[3]))
        try:
            dry = run_cleanup(settings, dry_run=True)
            assert dry.is_completed()
            dry_result = dry.result()
            assert set(registry.tags(repo)) == before
            assert (dry_result.planned_removals, dry_result.removed) == (2, 0)

            started = datetime.now(UTC) - timedelta(seconds=5)
            applied = run_cleanup(settings, dry_run=False)
        finally:
            asyncio.run(_finish(in_flight))

        assert applied.is_completed()
        result = applied.result()
        assert (result.removed, result.failed) == (2, 0)
        assert set(registry.tags(repo)) == before - {f"pr-1-{SHA[1][:7]}", f"pr-5-{SHA[5][:7]}"}
        assert result.counts["keep: build in flight"] == 1
        assert result.counts["keep: PR state unknown, younger than the TTL"] == 1

        artifacts = asyncio.run(_artifacts(applied.state_details.flow_run_id))  # type: ignore[arg-type]
        table = json.loads(artifacts["preview-cleanup"])
        rows = {row["tag"]: row for row in table}
        assert rows[f"pr-1-{SHA[1][:7]}"]["reason"] == "PR closed longer than the grace period"
        assert rows[f"pr-1-{SHA[1][:7]}"]["result"] == "deleted"
        assert rows[f"pr-5-{SHA[5][:7]}"]["reason"] == "older than the TTL"
        assert rows["latest"]["reason"] == "protected tag"
        assert rows[f"pr-3-{SHA[3][:7]}"]["reason"] == "build in flight"
        assert "removed 2 of 6 tags" in str(artifacts["preview-cleanup-summary"])
        assert registry.password not in json.dumps(table)

        deadline = time.monotonic() + 20
        events: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            events = asyncio.run(_events("previews.cleanup.deleted", started))
            events = [e for e in events if e["payload"].get("digest") in {doomed, expired}]
            if len(events) == 2:
                break
            time.sleep(0.5)
        assert sorted(e["payload"]["digest"] for e in events) == sorted([doomed, expired])


def test_cleanup_reads_pr_states_from_the_images_source_and_keeps_short_sha_builds(
    registry: Registry,
) -> None:
    """Issue 13 item 9: no PREVIEWS_CLEANUP_REPOSITORY; the images' source label names the repository, the
    report says so and counts the unknown PR states; a build started with a short SHA keeps its tag."""
    repo = f"cleanuptest/scope-{uuid.uuid4().hex[:8]}"
    source = {"org.opencontainers.image.source": "https://github.com/acme/scoped"}
    now = datetime.now(UTC)
    closed = (now - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with (
        FakeGitHub() as github,
        OciRegistry(registry.url, username=registry.username, password=SecretStr(registry.password)) as oci,
    ):
        github.add_pull("acme/scoped", 1, head_sha=SHA[1], state="closed")["closed_at"] = closed
        github.add_pull("acme/scoped", 3, head_sha=SHA[3], state="closed")["closed_at"] = closed
        # PR 4 is not on GitHub: its state stays unknown
        for n, days in ((1, 3), (3, 3), (4, 2)):
            push_labelled = put_config_image(
                oci,
                repo,
                f"pr-{n}-{SHA[n]}",
                created=now - timedelta(days=days),
                marker=f"m{n}",
                labels=source,
            )
            assert push_labelled.startswith("sha256:")
        settings = Settings(
            registry=registry.host,
            image=repo,
            registry_username=registry.username,
            registry_token=SecretStr(registry.password),
            registry_kind="oci",
            github_api_url=github.url,
            github_token=SecretStr(github.token),
            retry_delay=0.1,
        )
        in_flight = asyncio.run(_start_in_flight_run(3, SHA[3][:9]))  # a UI run with a short SHA
        try:
            dry = run_cleanup(settings, dry_run=True)
        finally:
            asyncio.run(_finish(in_flight))
    assert dry.is_completed(), dry.message
    result = dry.result()
    assert result.repository == "acme/scoped"
    assert result.repository_decided_by == f"org.opencontainers.image.source label of pr-4-{SHA[4]}"
    assert result.unknown_pr_states == 1
    assert result.planned_removals == 1  # pr-1: closed longer than the grace period
    assert result.counts["keep: build in flight"] == 1  # pr-3: closed, but its build is in flight
    assert json.loads(result.model_dump_json())["unknown_pr_states"] == 1
