"""Cleanup fails closed (issue 13, item 3): a version whose references cannot be read is kept and reported,
and nothing it could reference is deleted; on GHCR (the fake Packages API with its ghcr.io side) and on an OCI
registry (the real registry behind a FaultProxy that fails the reads of one manifest).

Before the fix, a kept ``latest`` index whose read failed counted as having no children, so the children it
shares with a deleted ``pr-*`` index were deleted and ``latest`` broke.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from previews.core.retention import Backend, Plan, PrState, PrStatus, Reason, Verdict, plan_retention
from previews.errors import RegistryError
from previews.github.packages import GhcrPackage
from previews.registry import apply_plan
from previews.registry.oci import OCI_INDEX, OCI_MANIFEST, OciRegistry, OciRepository
from tests.support.fake_github_packages import (
    FakeGitHubPackages,
    FakeVersion,
    image_index,
    image_manifest,
    manifest_digest,
)
from tests.support.faultproxy import FaultProxy
from tests.support.oci_images import put_config_image
from tests.support.services import Registry

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=3)
CLOSED = {1: PrStatus(PrState.CLOSED, OLD)}
TOKEN = "ghp_fake_packages_token"


def verdict(plan: Plan, tag: str) -> tuple[Verdict, Reason]:
    (found,) = [d for d in plan.decisions if d.tag == tag]
    return found.verdict, found.reason


# --- GHCR ------------------------------------------------------------------------------------------------


@pytest.fixture
def github() -> Iterator[FakeGitHubPackages]:
    with FakeGitHubPackages(token=TOKEN) as fake:
        yield fake


def ghcr(github: FakeGitHubPackages) -> GhcrPackage:
    manifests = OciRegistry(github.url, username="acme", password=SecretStr(TOKEN))
    return GhcrPackage(
        owner="acme",
        package="app",
        token=SecretStr(TOKEN),
        api_url=github.url,
        manifests=manifests,
        deletes_per_minute=6000,
    )


def multiarch() -> dict[str, FakeVersion]:
    """pr-1 (a closed PR's index) and latest (a protected index) over the same two platform images."""
    amd64, arm64 = image_manifest("amd64"), image_manifest("arm64")
    children = [manifest_digest(amd64), manifest_digest(arm64)]
    pr_index, latest_index = image_index(children, "pr-1"), image_index(children, "latest")
    return {
        "pr": FakeVersion(10, manifest_digest(pr_index), ["pr-1-aaaaaaa"], OLD, manifest=pr_index),
        "amd64": FakeVersion(11, children[0], [], OLD, manifest=amd64),
        "arm64": FakeVersion(12, children[1], [], OLD, manifest=arm64),
        "latest": FakeVersion(13, manifest_digest(latest_index), ["latest"], OLD, manifest=latest_index),
    }


@pytest.mark.parametrize("status", [400, 404, 500])
def test_ghcr_keeps_and_reports_a_kept_index_it_cannot_read(github: FakeGitHubPackages, status: int) -> None:
    versions = multiarch()
    github.add_package("org", "acme", "app", list(versions.values()))
    github.fail_manifest(versions["latest"].name, status)
    with ghcr(github) as target:
        plan = plan_retention(target.list_versions(), CLOSED, now=NOW, backend=Backend.GHCR)
        report = apply_plan(plan, target, sleep=lambda s: None)
    assert plan.actions == ()
    assert verdict(plan, "latest") == (Verdict.KEEP, Reason.REFERENCES_UNREADABLE)
    assert verdict(plan, "pr-1-aaaaaaa") == (Verdict.KEEP, Reason.BLOCKED_BY_UNREADABLE)
    assert f"registry answered {status}" in plan.unreadable[versions["latest"].name]
    assert report.outcomes == ()
    assert github.deleted == []
    assert sorted(v.id for v in github.versions("org", "acme", "app")) == [10, 11, 12, 13]


def test_ghcr_deletes_the_closed_index_alone_when_the_kept_one_reads() -> None:
    """The same package without the failure: the shared children stay with latest, pr-1 goes."""
    with FakeGitHubPackages(token=TOKEN) as github:
        versions = multiarch()
        github.add_package("org", "acme", "app", list(versions.values()))
        with ghcr(github) as target:
            plan = plan_retention(target.list_versions(), CLOSED, now=NOW, backend=Backend.GHCR)
            apply_plan(plan, target, sleep=lambda s: None)
        assert github.deleted == [10]


@pytest.mark.parametrize("status", [400, 404, 500])
def test_ghcr_recheck_skips_every_deletion_when_a_new_index_cannot_be_read(
    github: FakeGitHubPackages, status: int
) -> None:
    """``latest`` is pushed onto the same children after the listing, and its manifest cannot be read."""
    versions = multiarch()
    latest = versions.pop("latest")
    github.add_package(
        "org", "acme", "app", [*versions.values(), FakeVersion(20, "sha256:" + "9" * 64, ["main-1"], OLD)]
    )
    with ghcr(github) as target:
        plan = plan_retention(target.list_versions(), CLOSED, now=NOW, backend=Backend.GHCR)
        assert [(a.version_id, [c.version_id for c in a.children]) for a in plan.actions] == [(10, [11, 12])]
        github.add_version("org", "acme", "app", latest)
        github.fail_manifest(latest.name, status)
        report = apply_plan(plan, target, sleep=lambda s: None)
    (outcome,) = report.outcomes
    assert not outcome.done
    assert "could not be read" in outcome.detail
    assert latest.name in outcome.detail
    assert github.deleted == []


# --- OCI -------------------------------------------------------------------------------------------------


def put_index(oci: OciRegistry, repo: str, tag: str, children: list[str], marker: str) -> str:
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": 1} for child in children],
        "annotations": {"marker": marker, "org.opencontainers.image.created": OLD.isoformat()},
    }
    return oci.put_manifest(repo, tag, json.dumps(body).encode(), OCI_INDEX)


def platform_images(oci: OciRegistry, repo: str) -> list[str]:
    """Two untagged platform images (pushed under a throw-away tag, then untagged)."""
    digests = []
    for arch in ("amd64", "arm64"):
        digests.append(put_config_image(oci, repo, f"tmp-{arch}", created=OLD, marker=arch))
        oci.untag(repo, f"tmp-{arch}")
    return digests


def assert_all_there(registry: Registry, repo: str, digests: list[str]) -> None:
    with oci_client(registry) as oci:
        for reference in digests:
            assert oci.manifest(repo, reference).digest == reference


def oci_client(registry: Registry, url: str | None = None) -> OciRegistry:
    return OciRegistry(url or registry.url, username=registry.username, password=SecretStr(registry.password))


@pytest.mark.parametrize("status", [400, 404, 500])
def test_oci_keeps_and_reports_a_kept_index_it_cannot_read(registry: Registry, status: int) -> None:
    repo = f"cleanuptest/unreadable-{uuid.uuid4().hex[:8]}"
    with oci_client(registry) as oci:
        children = platform_images(oci, repo)
        doomed = put_index(oci, repo, "pr-1-aaaaaaa", children, "pr-1")
        kept = put_index(oci, repo, "latest", children, "latest")
    with FaultProxy(upstream=registry.host) as proxy:
        proxy.fail_next(100, status=status, path=f"/manifests/(latest|{kept})$", method="GET")
        with oci_client(registry, proxy.url) as oci:
            target = OciRepository(oci, repo)
            plan = plan_retention(target.list_versions(), CLOSED, now=NOW, supports_untag=True)
            report = apply_plan(plan, target, sleep=lambda s: None)
    assert plan.actions == ()
    assert verdict(plan, "latest") == (Verdict.KEEP, Reason.REFERENCES_UNREADABLE)
    assert verdict(plan, "pr-1-aaaaaaa") == (Verdict.KEEP, Reason.BLOCKED_BY_UNREADABLE)
    assert f"registry answered {status}" in plan.unreadable[kept]
    assert report.outcomes == ()
    assert_all_there(registry, repo, [doomed, kept, *children])


def test_oci_recheck_skips_every_deletion_when_a_new_index_cannot_be_read(registry: Registry) -> None:
    repo = f"cleanuptest/recheck-{uuid.uuid4().hex[:8]}"
    with oci_client(registry) as oci:
        children = platform_images(oci, repo)
        doomed = put_index(oci, repo, "pr-1-aaaaaaa", children, "pr-1")
        target = OciRepository(oci, repo)
        plan = plan_retention(target.list_versions(), CLOSED, now=NOW, supports_untag=True)
        assert [(a.digest, [c.digest for c in a.children]) for a in plan.actions] == [(doomed, children)]
        kept = put_index(oci, repo, "latest", children, "latest")  # promoted after the listing
    with FaultProxy(upstream=registry.host) as proxy:
        proxy.fail_next(100, status=404, path=f"/manifests/{kept}$", method="GET")
        with oci_client(registry, proxy.url) as oci:
            report = apply_plan(plan, OciRepository(oci, repo), sleep=lambda s: None)
    (outcome,) = report.outcomes
    assert not outcome.done
    assert "could not be read" in outcome.detail
    assert_all_there(registry, repo, [doomed, kept, *children])


def test_oci_listing_fails_when_neither_manifest_nor_digest_can_be_read(registry: Registry) -> None:
    """Without a digest there is nothing to keep by: the listing stops instead of guessing."""
    repo = f"cleanuptest/unlisted-{uuid.uuid4().hex[:8]}"
    with oci_client(registry) as oci:
        put_config_image(oci, repo, "latest", created=OLD, marker="x")
    with FaultProxy(upstream=registry.host) as proxy:
        proxy.fail_next(100, status=400, path="/manifests/latest$")
        with oci_client(registry, proxy.url) as oci, pytest.raises(RegistryError, match="400"):
            OciRepository(oci, repo).list_versions()
