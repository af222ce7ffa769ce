"""GHCR backend against a fake GitHub Packages API speaking the recorded shapes."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from previews.core.retention import ActionKind, Backend, PrState, PrStatus, Reason, Verdict, plan_retention
from previews.errors import AuthError, GitHubNotFoundError, TransientGitHubError, ValidationError
from previews.github.packages import GhcrPackage, split_image
from previews.registry import apply_plan
from previews.registry.oci import OCI_INDEX, OCI_MANIFEST, OciRegistry
from tests.support.fake_github_packages import FakeGitHubPackages, FakeVersion
from tests.support.services import Registry

NOW = datetime.now(UTC)
TOKEN = "ghp_fake_packages_token"


def digest(n: int) -> str:
    return "sha256:" + f"{n:064x}"


@pytest.fixture
def github() -> Iterator[FakeGitHubPackages]:
    with FakeGitHubPackages(token=TOKEN) as fake:
        yield fake


def package(github: FakeGitHubPackages, **kwargs: object) -> GhcrPackage:
    """The package on the fake, its manifests read from the fake's ghcr.io side with the same PAT."""
    options: dict[str, object] = {
        "owner": "Acme",
        "package": "app",
        "token": SecretStr(TOKEN),
        "api_url": github.url,
        "manifests": OciRegistry(github.url, username="Acme", password=SecretStr(TOKEN)),
    }
    options.update(kwargs)
    return GhcrPackage(**options)  # type: ignore[arg-type]


def test_lists_every_page_following_organizations_links(github: FakeGitHubPackages) -> None:
    versions = [
        FakeVersion(
            1000 + i, digest(i), [f"pr-{1 + i % 40}-{i:07x}"] if i % 5 else [], NOW - timedelta(hours=i)
        )
        for i in range(250)
    ]
    github.add_package("org", "Acme", "app", versions)
    with package(github) as target:
        listed = target.list_versions()
    assert len(listed) == 250
    assert {v.version_id for v in listed} == {v.id for v in versions}
    by_id = {v.version_id: v for v in listed}
    assert by_id[1001].tags == ("pr-2-0000001",)
    assert by_id[1000].tags == ()
    assert by_id[1003].created is not None
    assert abs(by_id[1003].created - (NOW - timedelta(hours=3))) < timedelta(seconds=1)
    paths = [path for method, path, _ in github.requests if method == "GET"]
    assert paths[0] == "/orgs/Acme/packages/container/app/versions"
    assert all(p.startswith("/organizations/") for p in paths[1:])
    assert len(paths) == 3


def test_user_owned_package_with_slash_in_name(github: FakeGitHubPackages) -> None:
    github.add_package("user", "octocat", "tools/runner", [FakeVersion(7, digest(7), ["latest"], NOW)])
    with package(github, owner="octocat", package="tools/runner", owner_kind="user") as target:
        assert [v.tags for v in target.list_versions()] == [("latest",)]
    assert github.requests[0][1] == "/users/octocat/packages/container/tools%2Frunner/versions"


def test_split_image_lowers_and_keeps_nested_package() -> None:
    assert split_image("Acme/tools/runner") == ("acme", "tools/runner")
    with pytest.raises(ValidationError, match="image"):
        split_image("app")


def test_plan_and_apply_delete_versions_and_report_last_tagged(github: FakeGitHubPackages) -> None:
    old = NOW - timedelta(days=3)
    github.add_package(
        "org",
        "acme",
        "app",
        [
            FakeVersion(1, digest(1), ["pr-1-aaaaaaa"], old),
            FakeVersion(2, digest(2), ["pr-2-bbbbbbb", "pr-3-ccccccc"], old),  # shared with an open PR
            FakeVersion(3, digest(3), ["pr-4-ddddddd"], old),
            FakeVersion(4, digest(4), [], old),  # untagged child: never touched alone
        ],
    )
    states = {
        1: PrStatus(PrState.CLOSED, NOW - timedelta(days=2)),
        2: PrStatus(PrState.CLOSED, old),
        3: PrStatus(PrState.OPEN),
        4: PrStatus(PrState.CLOSED, old),
    }
    with package(github, owner="acme", deletes_per_minute=6000) as target:
        plan = plan_retention(target.list_versions(), states, now=NOW, backend=Backend.GHCR)
        assert [(a.kind, a.version_id) for a in plan.actions] == [
            (ActionKind.DELETE_VERSION, 1),
            (ActionKind.DELETE_VERSION, 3),
        ]
        verdicts = {d.tag: (d.verdict, d.reason) for d in plan.decisions}
        assert verdicts["pr-2-bbbbbbb"] == (Verdict.KEEP, Reason.SHARES_DIGEST_WITH_KEPT)
        report = apply_plan(plan, target, sleep=lambda s: None)
    assert [o.done for o in report.outcomes] == [True, True]
    assert sorted(v.id for v in github.versions("org", "acme", "app")) == [2, 4]
    assert github.deleted == [1, 3]


def test_last_tagged_version_refusal_is_reported_not_fatal(github: FakeGitHubPackages) -> None:
    old = NOW - timedelta(days=3)
    github.add_package(
        "org",
        "acme",
        "app",
        [
            FakeVersion(1, digest(1), ["pr-1-aaaaaaa"], old),
            FakeVersion(2, digest(2), ["pr-2-bbbbbbb"], old),
            FakeVersion(3, digest(3), [], old),
        ],
    )
    closed = PrStatus(PrState.CLOSED, old)
    with package(github, owner="acme", deletes_per_minute=6000) as target:
        plan = plan_retention(target.list_versions(), {1: closed, 2: closed}, now=NOW, backend=Backend.GHCR)
        report = apply_plan(plan, target, sleep=lambda s: None)
    assert [o.done for o in report.outcomes] == [True, False]
    assert "last tagged version" in report.failed[0].detail
    assert report.failed[0].detail.startswith(
        "GitHub DELETE /orgs/acme/packages/container/app/versions/2: 400"
    )
    assert report.removed_tags == ("pr-1-aaaaaaa",)
    assert sorted(v.id for v in github.versions("org", "acme", "app")) == [2, 3]


def test_secondary_rate_limit_403_is_retried_after_retry_after(github: FakeGitHubPackages) -> None:
    old = NOW - timedelta(days=3)
    github.add_package(
        "org",
        "acme",
        "app",
        [FakeVersion(1, digest(1), ["pr-1-aaaaaaa"], old), FakeVersion(2, digest(2), ["latest"], old)],
    )
    github.inject(
        "DELETE",
        403,
        headers={"retry-after": "7"},
        message="You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
    )
    waits: list[float] = []
    with package(github, owner="acme", deletes_per_minute=6000) as target:
        plan = plan_retention(
            target.list_versions(), {1: PrStatus(PrState.CLOSED, old)}, now=NOW, backend=Backend.GHCR
        )
        report = apply_plan(plan, target, sleep=waits.append)
    assert waits == [7.0]
    assert report.outcomes[0].done
    assert report.outcomes[0].attempts == 2
    assert github.deleted == [1]


def test_primary_limit_uses_ratelimit_reset(github: FakeGitHubPackages) -> None:
    github.add_package(
        "org", "acme", "app", [FakeVersion(1, digest(1), ["x"], NOW), FakeVersion(2, digest(2), [], NOW)]
    )
    reset = 1_900_000_000
    github.inject(
        "DELETE",
        429,
        headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
        message="API rate limit exceeded",
    )
    with (
        package(github, owner="acme", wall_clock=lambda: reset - 42.0) as target,
        pytest.raises(TransientGitHubError) as caught,
    ):
        target.delete_version(2)
    assert caught.value.retry_after == 42.0
    assert caught.value.status == 429


def test_403_without_rate_limit_is_an_auth_error(github: FakeGitHubPackages) -> None:
    github.add_package("org", "acme", "app", [FakeVersion(1, digest(1), ["x"], NOW)])
    github.inject("GET", 403, message="Must have admin rights to Repository.")
    with package(github, owner="acme") as target, pytest.raises(AuthError):
        target.list_versions()


def test_bad_token_missing_package_and_bad_id(github: FakeGitHubPackages) -> None:
    github.add_package("org", "acme", "app", [FakeVersion(1, digest(1), ["x"], NOW)])
    with (
        package(github, owner="acme", token=SecretStr("ghp_wrong")) as target,
        pytest.raises(AuthError) as auth,
    ):
        target.list_versions()
    assert "ghp_wrong" not in str(auth.value)
    with package(github, owner="acme", package="nope") as target, pytest.raises(GitHubNotFoundError):
        target.list_versions()
    with package(github, owner="acme") as target, pytest.raises(ValidationError, match="version_id"):
        target.delete_version("sha256:abc")  # type: ignore[arg-type]


def test_deletes_are_paced(github: FakeGitHubPackages) -> None:
    github.add_package(
        "org",
        "acme",
        "app",
        [FakeVersion(i, digest(i), [f"pr-{i}-aaaaaaa"], NOW) for i in range(1, 8)]
        + [FakeVersion(99, digest(99), ["latest"], NOW)],
    )
    with package(github, owner="acme", deletes_per_minute=600) as target:
        for version_id in range(1, 8):
            target.delete_version(version_id)
    times = [t for method, _, t in github.requests if method == "DELETE"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 6
    assert min(gaps) >= 0.07  # unpaced, local deletes are ~2 ms apart
    assert times[-1] - times[0] >= 0.58


def test_index_children_come_from_the_registry_and_go_with_their_parent(
    github: FakeGitHubPackages, registry: Registry
) -> None:
    """GitHub's API does not say which versions an index references; the manifests on the registry do."""
    owner, name = "cleanuptest", f"ghcr-{uuid.uuid4().hex[:8]}"
    repo = f"{owner}/{name}"
    old = NOW - timedelta(days=3)
    with OciRegistry(registry.url, username=registry.username, password=SecretStr(registry.password)) as oci:
        images = {}
        for marker in ("amd64", "arm64", "kept"):
            config = json.dumps({"created": old.isoformat(), "config": {"Labels": {"m": marker}}}).encode()
            blob = oci.ensure_blob(repo, config)
            body = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": blob,
                    "size": len(config),
                },
                "layers": [],
            }
            images[marker] = oci.put_manifest(repo, f"tmp-{marker}", json.dumps(body).encode(), OCI_MANIFEST)
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": images[m], "size": 1} for m in ("amd64", "arm64")
            ],
        }
        parent = oci.put_manifest(repo, "pr-1-aaaaaaa", json.dumps(index).encode(), OCI_INDEX)
    github.add_package(
        "org",
        owner,
        name,
        [
            FakeVersion(10, parent, ["pr-1-aaaaaaa"], old),
            FakeVersion(11, images["amd64"], [], old),
            FakeVersion(12, images["arm64"], [], old),
            FakeVersion(13, images["kept"], ["latest"], old),
            FakeVersion(14, "sha256:" + "e" * 64, [], old),  # untagged, unreferenced: left alone
        ],
    )
    manifests = OciRegistry(registry.url, username=registry.username, password=SecretStr(registry.password))
    with package(github, owner=owner, package=name, manifests=manifests, deletes_per_minute=6000) as target:
        versions = target.list_versions()
        assert next(v for v in versions if v.version_id == 10).children == (images["amd64"], images["arm64"])
        plan = plan_retention(versions, {1: PrStatus(PrState.CLOSED, old)}, now=NOW, backend=Backend.GHCR)
        assert [(a.version_id, [c.version_id for c in a.children]) for a in plan.actions] == [(10, [11, 12])]
        report = apply_plan(plan, target, sleep=lambda s: None)
    assert report.outcomes[0].children_deleted == (images["amd64"], images["arm64"])
    assert github.deleted == [10, 11, 12]
    assert sorted(v.id for v in github.versions("org", owner, name)) == [13, 14]
