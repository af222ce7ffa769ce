"""OCI backend against the real registry: real pushed images, shared digests, an OCI index; plan, apply, pull."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import docker
import httpx
import pytest
from pydantic import SecretStr

from previews.core.retention import (
    ActionKind,
    Backend,
    PrState,
    PrStatus,
    Reason,
    Verdict,
    plan_retention,
)
from previews.errors import AuthError, RegistryNotFoundError, TransientRegistryError
from previews.registry import apply_plan
from previews.registry.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    OciRegistry,
    OciRepository,
    parse_challenge,
    registry_url,
)
from tests.support.faultproxy import FaultProxy
from tests.support.oci_images import put_config_image
from tests.support.services import Registry


def build(client: docker.DockerClient, base: str, ref: str, label: str) -> None:
    dockerfile = (
        f'FROM {base}\nLABEL test.marker="{label}" org.opencontainers.image.title="{label}"\n'.encode()
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=ref, rm=True, pull=False)


def push(client: docker.DockerClient, registry: Registry, repo: str, tag: str) -> None:
    auth = {"username": registry.username, "password": registry.password}
    out = client.images.push(f"{registry.host}/{repo}", tag=tag, auth_config=auth)
    assert '"error"' not in out, out


@dataclass
class Scenario:
    repo: str
    digests: dict[str, str]  # image name -> digest
    index_keep: str
    index_drop: str


@pytest.fixture(scope="module")
def scenario(docker_client: docker.DockerClient, base_image: str, registry: Registry) -> Iterator[Scenario]:
    repo = f"cleanuptest/oci-{uuid.uuid4().hex[:8]}"
    images = {
        "a": ["pr-1-aaaaaaa"],  # closed past grace: deleted
        "b": ["pr-2-bbbbbbb", "latest"],  # shares a digest with a protected tag: untagged only
        "c": ["pr-3-ccccccc"],  # open PR, older SHA: deleted
        "d": ["pr-3-ddddddd"],  # open PR, newest: kept
        "e": ["pr-4-eeeeeee", "pr-5-eeeeeee"],  # two closed PRs on one digest: one deletion
        "f": ["main-123"],  # protected
        "g": ["scratch-g"],  # child of both indexes
        "h": ["scratch-h"],  # child of the deleted index only
        "k": ["pr-7-7777777"],  # tagged child of the kept index: untagged, manifest kept
        "l": ["pr-8-8888888"],  # build in flight: kept
    }
    local = f"{registry.host}/{repo}"
    for name, tags in images.items():
        build(docker_client, base_image, f"{local}:{tags[0]}", f"{repo}-{name}")
        image = docker_client.images.get(f"{local}:{tags[0]}")
        for tag in tags:
            image.tag(local, tag)
            push(docker_client, registry, repo, tag)
    digests = {name: registry.manifest(repo, tags[0])[0] for name, tags in images.items()}

    def index(children: list[str], tag: str) -> str:
        body = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "digest": digests[c],
                    "size": len(
                        httpx.get(
                            f"{registry.url}/v2/{repo}/manifests/{digests[c]}",
                            auth=(registry.username, registry.password),
                            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
                        ).content
                    ),
                    "platform": {"architecture": arch, "os": "linux"},
                }
                for c, arch in zip(children, ["amd64", "arm64"], strict=False)
            ],
        }
        with registry.http() as http:
            resp = http.put(
                f"/v2/{repo}/manifests/{tag}", content=json.dumps(body), headers={"Content-Type": OCI_INDEX}
            )
            assert resp.status_code == 201, resp.text
            return resp.headers["Docker-Content-Digest"]

    index_drop = index(["g", "h"], "pr-6-6666666")
    index_keep = index(["g", "k"], "stable")
    with OciRegistry(registry.url, username=registry.username, password=SecretStr(registry.password)) as oci:
        oci.untag(repo, "scratch-g")
        oci.untag(repo, "scratch-h")
    yield Scenario(repo, digests, index_keep, index_drop)
    for tags in [*images.values(), ["stable"]]:
        for tag in tags:
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(f"{local}:{tag}", noprune=False)


def oci_for(registry: Registry) -> OciRegistry:
    return OciRegistry(registry.url, username=registry.username, password=SecretStr(registry.password))


def assert_complete(oci: OciRegistry, registry: Registry, repo: str, reference: str) -> None:
    """The manifest resolves and every blob and child it references is still served."""
    manifest = oci.manifest(repo, reference)
    with registry.http() as http:
        if manifest.is_index:
            for child in manifest.children:
                assert_complete(oci, registry, repo, child)
            return
        for layer in [manifest.body["config"], *manifest.body.get("layers", [])]:
            assert http.head(f"/v2/{repo}/blobs/{layer['digest']}").status_code == 200


def test_list_plan_apply_keeps_every_remaining_image_whole(
    scenario: Scenario, registry: Registry, docker_client: docker.DockerClient
) -> None:
    repo, d = scenario.repo, scenario.digests
    now = datetime.now(UTC)
    past = now - timedelta(days=2)
    states = {
        1: PrStatus(PrState.CLOSED, past),
        2: PrStatus(PrState.CLOSED, past),
        3: PrStatus(PrState.OPEN),
        4: PrStatus(PrState.CLOSED, past),
        5: PrStatus(PrState.CLOSED, past),
        6: PrStatus(PrState.CLOSED, past),
        7: PrStatus(PrState.CLOSED, past),
        8: PrStatus(PrState.CLOSED, past),
    }
    with oci_for(registry) as oci:
        target = OciRepository(oci, repo, concurrency=4)  # deletions, untags and children run concurrently
        versions = target.list_versions()
        by_digest = {v.digest: v for v in versions}
        assert by_digest[d["b"]].tags == ("latest", "pr-2-bbbbbbb")
        assert by_digest[scenario.index_drop].children == (d["g"], d["h"])
        assert all(v.created is not None and abs(now - v.created) < timedelta(hours=1) for v in versions)
        assert oci.manifest_labels(repo, "pr-1-aaaaaaa")["test.marker"] == f"{repo}-a"

        plan = plan_retention(
            versions, states, now=now, in_flight=[(8, "8888888")], backend=Backend.OCI, supports_untag=True
        )
        verdicts = {x.tag: (x.verdict, x.reason) for x in plan.decisions}
        assert verdicts["pr-1-aaaaaaa"] == (Verdict.DELETE, Reason.CLOSED_PAST_GRACE)
        assert verdicts["pr-2-bbbbbbb"] == (Verdict.UNTAG, Reason.CLOSED_PAST_GRACE)
        assert verdicts["pr-3-ccccccc"] == (Verdict.DELETE, Reason.SUPERSEDED)
        assert verdicts["pr-3-ddddddd"] == (Verdict.KEEP, Reason.OPEN_NEWEST)
        assert verdicts["pr-7-7777777"] == (Verdict.UNTAG, Reason.CLOSED_PAST_GRACE)
        assert verdicts["pr-8-8888888"] == (Verdict.KEEP, Reason.IN_FLIGHT)
        drop = next(a for a in plan.actions if a.digest == scenario.index_drop)
        assert [c.digest for c in drop.children] == [d["h"]]
        assert sorted(a.digest for a in plan.actions if a.kind is ActionKind.DELETE_MANIFEST) == sorted(
            [d["a"], d["c"], d["e"], scenario.index_drop]
        )

        report = apply_plan(plan, target, sleep=lambda s: None)
        assert report.failed == ()
        assert next(
            o for o in report.outcomes if o.action.digest == scenario.index_drop
        ).children_deleted == (d["h"],)

        assert registry.tags(repo) == sorted(["latest", "pr-3-ddddddd", "main-123", "stable", "pr-8-8888888"])
        for tag in registry.tags(repo):
            assert_complete(oci, registry, repo, tag)
        for gone in [d["a"], d["c"], d["e"], d["h"], scenario.index_drop]:
            with pytest.raises(RegistryNotFoundError):
                oci.manifest(repo, gone)
        for kept in [d["b"], d["g"], d["k"]]:
            assert_complete(oci, registry, repo, kept)

    auth = {"username": registry.username, "password": registry.password}
    for tag in ["latest", "pr-3-ddddddd", "main-123"]:
        local = f"{registry.host}/{repo}:{tag}"
        docker_client.images.remove(local)
        pulled = docker_client.images.pull(f"{registry.host}/{repo}", tag=tag, auth_config=auth)
        assert f"{registry.host}/{repo}:{tag}" in pulled.tags
    stable = docker_client.images.pull(f"{registry.host}/{repo}", tag="stable", auth_config=auth)
    assert stable.id


class _PagedTags(BaseHTTPRequestHandler):
    """Serves tags/list pages the way quay.io does (recorded in ivanilves/lstags#185 and
    TritonDataCenter/node-docker-registry-client#12):
    an opaque ``next_page`` cursor, page 2 linked RELATIVE, page 3 linked ABSOLUTE. The Debian registry
    here ignores ``n`` and never paginates, so the Link handling is checked against these recorded shapes."""

    pages: ClassVar[dict[str, tuple[list[str], str | None]]] = {}
    seen: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        query = parse_qs(urlsplit(self.path).query)
        cursor = query.get("next_page", ["start"])[0]
        tags, link = type(self).pages[cursor]
        body = json.dumps({"name": "coreos/etcd", "tags": tags}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if link:
            self.send_header("Link", link.replace("HOST", f"127.0.0.1:{self.server.server_address[1]}"))
        self.end_headers()
        self.wfile.write(body)


def test_tags_follow_relative_and_absolute_link_headers() -> None:
    _PagedTags.pages = {
        "start": (["v1", "v2"], '</v2/coreos/etcd/tags/list?next_page=gAAAAABcywP0Zuqt%3D&n=50>; rel="next"'),
        "gAAAAABcywP0Zuqt=": (
            ["v3"],
            '<http://HOST/v2/coreos/etcd/tags/list?next_page=gAAAAABYF4Xl%3D%3D&n=50>; rel="next"',
        ),
        "gAAAAABYF4Xl==": (["v4"], None),
    }
    _PagedTags.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PagedTags)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with OciRegistry(f"http://127.0.0.1:{server.server_address[1]}") as oci:
            assert oci.tags("coreos/etcd", page_size=50) == ["v1", "v2", "v3", "v4"]
    finally:
        server.shutdown()
        server.server_close()
    assert _PagedTags.seen == [
        "/v2/coreos/etcd/tags/list?n=50",
        "/v2/coreos/etcd/tags/list?next_page=gAAAAABcywP0Zuqt%3D&n=50",
        "/v2/coreos/etcd/tags/list?next_page=gAAAAABYF4Xl%3D%3D&n=50",
    ]


def test_errors_are_mapped(registry: Registry, scenario: Scenario) -> None:
    with OciRegistry(registry.url, username=registry.username, password=SecretStr("wrong")) as bad:
        with pytest.raises(AuthError) as caught:
            bad.tags(scenario.repo)
        assert "wrong" not in str(caught.value)
    with oci_for(registry) as oci:
        with pytest.raises(RegistryNotFoundError, match="MANIFEST_UNKNOWN"):
            oci.manifest(scenario.repo, "no-such-tag")
        with pytest.raises(RegistryNotFoundError, match="NAME_UNKNOWN"):
            oci.tags("cleanuptest/never-pushed")
    with FaultProxy(upstream=registry.host) as proxy:
        proxy.fail_next(1, status=429, headers={"Retry-After": "3"})
        with OciRegistry(proxy.url, username=registry.username, password=SecretStr(registry.password)) as oci:
            with pytest.raises(TransientRegistryError) as limited:
                oci.tags(scenario.repo)
            assert (limited.value.status, limited.value.retry_after) == (429, 3.0)
            proxy.fail_next(1, status=503)
            with pytest.raises(TransientRegistryError) as down:
                oci.tags(scenario.repo)
            assert down.value.status == 503
            proxy.reset_next(1)
            with pytest.raises(TransientRegistryError):
                oci.tags(scenario.repo)
            assert oci.tags(scenario.repo)


def test_challenge_parsing_and_url() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://ghcr.io/token",
        "service": "ghcr.io",
        "scope": "repository:user/image:pull,push",
    }
    assert registry_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert registry_url("ghcr.io") == "https://ghcr.io"


def _image(oci: OciRegistry, repo: str, tag: str, marker: str) -> str:
    return put_config_image(oci, repo, tag, created=datetime.now(UTC), marker=marker)


def test_tag_promoted_after_listing_saves_the_manifest(registry: Registry) -> None:
    repo = f"cleanuptest/race-{uuid.uuid4().hex[:8]}"
    closed = PrStatus(PrState.CLOSED, datetime.now(UTC) - timedelta(days=3))
    with oci_for(registry) as oci:
        promoted = _image(oci, repo, "pr-1-aaaaaaa", "one")
        other = _image(oci, repo, "pr-2-bbbbbbb", "two")
        target = OciRepository(oci, repo)
        plan = plan_retention(target.list_versions(), {1: closed, 2: closed}, now=datetime.now(UTC))
        assert {a.digest for a in plan.actions} == {promoted, other}
        with registry.http() as http:
            raw = http.get(f"/v2/{repo}/manifests/{promoted}", headers={"Accept": OCI_MANIFEST}).content
        oci.put_manifest(repo, "latest", raw, OCI_MANIFEST)  # someone promotes the PR image meanwhile

        report = apply_plan(plan, target, sleep=lambda s: None)
        skipped = next(o for o in report.outcomes if o.action.digest == promoted)
        assert not skipped.done
        assert "skipped" in skipped.detail
        assert oci.manifest(repo, "latest").digest == promoted
        assert registry.tags(repo) == ["latest", "pr-1-aaaaaaa"]
        with pytest.raises(RegistryNotFoundError):
            oci.manifest(repo, other)


def _many_closed_images(oci: OciRegistry, repo: str, count: int) -> dict[str, str]:
    """``count`` layer-less images tagged ``pr-<n>-<sha>`` plus a protected ``latest``; tag -> digest."""
    made = {f"pr-{n}-{n:07x}": _image(oci, repo, f"pr-{n}-{n:07x}", f"m{n}") for n in range(1, count + 1)}
    made["latest"] = _image(oci, repo, "latest", "kept")
    return made


def test_concurrent_deletes_end_in_exactly_the_planned_state(registry: Registry) -> None:
    repo = f"cleanuptest/concurrent-{uuid.uuid4().hex[:8]}"
    closed = PrStatus(PrState.CLOSED, datetime.now(UTC) - timedelta(days=3))
    with oci_for(registry) as oci:
        made = _many_closed_images(oci, repo, 24)
        target = OciRepository(oci, repo, concurrency=8)
        plan = plan_retention(
            target.list_versions(), dict.fromkeys(range(1, 25), closed), now=datetime.now(UTC)
        )
        done_order: list[str] = []
        report = apply_plan(
            plan, target, sleep=lambda s: None, on_done=lambda o: done_order.append(o.action.digest)
        )
        assert report.failed == ()
        assert [o.action for o in report.outcomes] == list(plan.actions)  # reported in plan order
        assert done_order == [a.digest for a in plan.actions]
        assert registry.tags(repo) == ["latest"]
        assert oci.manifest(repo, "latest").digest == made["latest"]
        for tag, digest_ in made.items():
            if tag != "latest":
                with pytest.raises(RegistryNotFoundError):
                    oci.manifest(repo, digest_)


def test_a_rate_limit_answer_holds_every_worker(registry: Registry) -> None:
    repo = f"cleanuptest/limited-{uuid.uuid4().hex[:8]}"
    closed = PrStatus(PrState.CLOSED, datetime.now(UTC) - timedelta(days=3))
    with oci_for(registry) as direct:
        _many_closed_images(direct, repo, 20)
    sleeps: list[float] = []
    lock = threading.Lock()

    def sleep(seconds: float) -> None:
        with lock:
            sleeps.append(seconds)
        time.sleep(seconds)

    with (
        FaultProxy(upstream=registry.host) as proxy,
        OciRegistry(proxy.url, username=registry.username, password=SecretStr(registry.password)) as oci,
    ):
        target = OciRepository(oci, repo, concurrency=4)
        plan = plan_retention(
            target.list_versions(), dict.fromkeys(range(1, 21), closed), now=datetime.now(UTC)
        )
        proxy.fail_next(1, status=429, headers={"Retry-After": "1"}, method="DELETE")
        report = apply_plan(plan, target, sleep=sleep)
    assert report.failed == ()
    assert sorted(o.attempts for o in report.outcomes)[-1] == 2
    assert 1.0 in sleeps  # the limited worker waited what the registry asked
    assert len(sleeps) >= 2, "the other workers went on sending while the registry asked to wait"
    assert all(0 < s <= 1.0 for s in sleeps)
    assert registry.tags(repo) == ["latest"]


def test_an_auth_failure_stops_the_other_workers(registry: Registry) -> None:
    repo = f"cleanuptest/denied-{uuid.uuid4().hex[:8]}"
    closed = PrStatus(PrState.CLOSED, datetime.now(UTC) - timedelta(days=3))
    with oci_for(registry) as direct:
        _many_closed_images(direct, repo, 30)
    with (
        FaultProxy(upstream=registry.host) as proxy,
        OciRegistry(proxy.url, username=registry.username, password=SecretStr(registry.password)) as oci,
    ):
        target = OciRepository(oci, repo, concurrency=4)
        plan = plan_retention(
            target.list_versions(), dict.fromkeys(range(1, 31), closed), now=datetime.now(UTC)
        )
        proxy.fail_next(1, status=403, method="DELETE")
        with pytest.raises(AuthError):
            apply_plan(plan, target, sleep=lambda s: None)
        deletes = [s for s in proxy.seen if s.method == "DELETE"]
    assert len(deletes) < 15, f"{len(deletes)} deletes were sent after a 403 stopped the run"
    assert len(registry.tags(repo)) > 15
