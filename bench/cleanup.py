"""Cleanup benchmark: plan time for 100,000 versions, and a 2,000-tag cleanup against a real local registry.

    python bench/cleanup.py                     # both parts
    python bench/cleanup.py --skip-registry     # planner only
    python bench/cleanup.py --tags 2000 --prs 300 --versions 100000 --concurrency 1,8

The registry part starts Debian's docker-registry on 127.0.0.1 (as the tests do), uploads ``--tags`` pr-* tags
of ``--prs`` PRs in mixed states plus protected tags, shared digests and OCI indexes through the registry API,
lists, plans, applies, then checks that exactly the planned tags are gone and every remaining tag still
resolves with all its blobs and children. ``--concurrency 1,8`` repeats that with a fresh repository for each
number of concurrent deletions (1 is how cleanup deleted before: one at a time), side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402

from previews.core.retention import (  # noqa: E402
    ImageVersion,
    PrState,
    PrStatus,
    Verdict,
    plan_retention,
)
from previews.errors import RegistryNotFoundError  # noqa: E402
from previews.registry import apply_plan  # noqa: E402
from previews.registry.oci import OCI_INDEX, OCI_MANIFEST, OciRegistry, OciRepository  # noqa: E402

NOW = datetime.now(UTC).replace(microsecond=0)
REPO = "cleanuptest/bench"


def pr_states(prs: int, rng: random.Random) -> dict[int, PrStatus]:
    """Mixed states: ~1/3 open, ~1/3 closed long ago, ~1/6 closed within the grace period, ~1/6 unknown."""
    states: dict[int, PrStatus] = {}
    for number in range(1, prs + 1):
        roll = rng.random()
        if roll < 1 / 3:
            states[number] = PrStatus(PrState.OPEN)
        elif roll < 2 / 3:
            states[number] = PrStatus(PrState.CLOSED, NOW - timedelta(days=rng.randint(2, 20)))
        elif roll < 5 / 6:
            states[number] = PrStatus(PrState.CLOSED, NOW - timedelta(hours=rng.randint(1, 20)))
    return states  # the rest are unknown


def bench_plan(count: int, prs: int) -> float:
    rng = random.Random(1)
    states = pr_states(prs, rng)
    versions = []
    for i in range(count):
        children = (f"sha256:{'c' * 48}{i:016x}",) if i % 50 == 0 else ()
        tags = [f"pr-{rng.randint(1, prs)}-{i:07x}"]
        if i % 97 == 0:
            tags.append("main-" + str(i))
        versions.append(
            ImageVersion(
                f"sha256:{i:064x}", tuple(tags), NOW - timedelta(hours=rng.randint(0, 1500)), children
            )
        )
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        plan = plan_retention(versions, states, now=NOW, in_flight=[(1, "0000000")])
        timings.append(time.perf_counter() - start)
    deletes = sum(1 for d in plan.decisions if d.verdict is Verdict.DELETE)
    print(
        f"plan: {count} versions, {prs} PRs: best {min(timings):.2f} s, worst {max(timings):.2f} s "
        f"({deletes} tags to delete, {len(plan.actions)} actions)"
    )
    return min(timings)


def populate(oci: OciRegistry, tags: int, prs: int, rng: random.Random, repo: str) -> dict[str, str]:
    """Upload the images; returns tag -> digest."""
    layer = oci.ensure_blob(repo, b"bench-layer-" * 64)

    def image(n: int, created: datetime) -> tuple[bytes, str]:
        config = json.dumps(
            {
                "created": created.isoformat().replace("+00:00", "Z"),
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"bench.n": str(n)}},
                "rootfs": {"type": "layers", "diff_ids": []},
            }
        ).encode()
        digest = oci.ensure_blob(repo, config)
        body = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest,
                "size": len(config),
            },
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 768}],
        }
        return json.dumps(body).encode(), OCI_MANIFEST

    plan: list[tuple[str, int, int]] = []  # (tag, image number, hours old)
    per_pr = max(1, tags // prs)
    n = 0
    for pr in range(1, prs + 1):
        for k in range(per_pr if pr < prs else tags - per_pr * (prs - 1)):
            plan.append((f"pr-{pr}-{rng.getrandbits(28):07x}", n, rng.randint(0, 24 * 40) + k))
            n += 1
    # Shared digests: some tags of other PRs and protected tags point at existing images.
    shared = [(f"pr-{rng.randint(1, prs)}-{rng.getrandbits(28):07x}", rng.randrange(n), 0) for _ in range(50)]
    protected = [("latest", 0, 0), ("main-1", 1, 0), ("v1.2.3", 2, 0)] + [
        (f"main-{i}", rng.randrange(n), 0) for i in range(2, 12)
    ]
    uploads: dict[int, tuple[bytes, str]] = {}

    def upload(item: tuple[str, int, int]) -> tuple[str, str]:
        tag, number, hours = item
        if number not in uploads:
            uploads[number] = image(number, NOW - timedelta(hours=hours))
        body, media = uploads[number]
        return tag, oci.put_manifest(repo, tag, body, media)

    with ThreadPoolExecutor(max_workers=8) as pool:
        result = dict(pool.map(upload, plan))
        result.update(dict(pool.map(upload, shared + protected)))
    # Indexes: a protected index sharing a child with a pr-* index.
    digests = sorted(set(result.values()))

    def index(tag: str, children: list[str]) -> None:
        body = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": c, "size": 1} for c in children],
        }
        result[tag] = oci.put_manifest(repo, tag, json.dumps(body).encode(), OCI_INDEX)

    index("stable", digests[:2])
    index(f"pr-{prs}-{'f' * 7}", digests[1:3])
    return result


def bench_registry(tags: int, prs: int, concurrency: list[int]) -> dict[int, float]:
    """Apply seconds per concurrency, each on its own freshly populated repository of one registry."""
    from tests.support.services import run_registry

    applied: dict[int, float] = {}
    with (
        run_registry(Path(tempfile.mkdtemp(prefix="bench-cleanup-")) / "registry") as reg,
        OciRegistry(reg.url, username=reg.username, password=SecretStr(reg.password), workers=8) as oci,
    ):
        for workers in concurrency:
            applied[workers] = _one_cleanup(oci, tags, prs, workers, f"{REPO}-c{workers}", reg.proc.pid)
    return applied


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _one_cleanup(oci: OciRegistry, tags: int, prs: int, workers: int, repo: str, registry_pid: int) -> float:
    rng = random.Random(2)
    states = pr_states(prs, rng)
    start = time.perf_counter()
    before = populate(oci, tags, prs, rng, repo)
    populate_s = time.perf_counter() - start
    target = OciRepository(oci, repo, concurrency=workers)

    start = time.perf_counter()
    versions = target.list_versions()
    list_s = time.perf_counter() - start
    start = time.perf_counter()
    plan = plan_retention(versions, states, now=NOW, supports_untag=True)
    plan_s = time.perf_counter() - start
    start, registry_cpu, own_cpu = time.perf_counter(), cpu_seconds(registry_pid), time.process_time()
    report = apply_plan(plan, target)
    apply_s = time.perf_counter() - start
    registry_cpu, own_cpu = cpu_seconds(registry_pid) - registry_cpu, time.process_time() - own_cpu

    remaining = set(oci.tags(repo))
    expected = set(before) - plan.removed_tags
    start = time.perf_counter()
    broken = []
    for tag in sorted(remaining):
        manifest = oci.manifest(repo, tag)
        refs = [oci.manifest(repo, c) for c in manifest.children] if manifest.is_index else [manifest]
        for ref in refs:
            for blob in [ref.body["config"], *ref.body.get("layers", [])]:
                if not oci.blob_exists(repo, blob["digest"]):
                    broken.append(tag)
    gone = 0
    for digest in plan.deleted_digests:
        try:
            oci.manifest(repo, digest)
        except RegistryNotFoundError:
            gone += 1
    verify_s = time.perf_counter() - start
    pr_tags = sum(1 for t in before if t.startswith("pr-"))
    print(
        f"registry, {workers} concurrent deletions: {len(before)} tags ({pr_tags} pr-*) of {prs} PRs, {len(versions)} manifests"
    )
    print(f"  populate {populate_s:.1f} s, list {list_s:.1f} s, plan {plan_s:.3f} s, apply {apply_s:.1f} s")
    print(f"  cleanup wall time (list + plan + apply): {list_s + plan_s + apply_s:.1f} s")
    print(
        f"  apply CPU: registry {registry_cpu:.1f} s, this client {own_cpu:.1f} s "
        f"(load {Path('/proc/loadavg').read_text().split()[0]})"
    )
    print(f"  plan: {dict(plan.counts)}")
    print(
        f"  actions {len(plan.actions)}, failed {len(report.failed)}, digests gone {gone}/{len(plan.deleted_digests)}"
    )
    print(f"  verify (every remaining tag's manifest, children and blobs): {verify_s:.1f} s")
    print(f"  remaining == expected: {remaining == expected}; broken remaining images: {len(broken)}")
    if remaining != expected or broken or report.failed or gone != len(plan.deleted_digests):
        raise SystemExit("cleanup did not end in exactly the planned state")
    return apply_s


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--tags", type=int, default=2000)
    parser.add_argument("--prs", type=int, default=300)
    parser.add_argument("--skip-registry", action="store_true")
    parser.add_argument("--concurrency", default="1,8", help="concurrent deletions to compare, e.g. 1,8")
    args = parser.parse_args()
    bench_plan(args.versions, args.prs)
    if not args.skip_registry:
        bench_registry(args.tags, args.prs, [int(n) for n in args.concurrency.split(",")])


if __name__ == "__main__":
    main()
