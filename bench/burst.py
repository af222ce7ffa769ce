"""A burst of pushes, side by side: SQLite / one server / one worker against ``previews up --production``.

    python bench/burst.py [--prs 30] [--deliveries 100] [--only single|production]

Both shapes run the same deployments on the same Docker pool (prefect.yaml, the runner image, pool
concurrency limit ``--pool-limit``) with the same crash-retry automation; the burst is the one of
tests/e2e/test_production.py (1-6 pushes per PR, shuffled across PRs, 0-250 ms apart). Printed per shape:
time from the first delivery to the last image (the last final head's run Completed), builds executed
(runs whose ``build`` task completed) against PRs, the p50/p99 of delivery accepted (202) -> run Running, and
the load average while it ran. It starts and stops (by PID) its own registry, git server, PostgreSQL, Redis,
servers and workers; it takes several minutes per shape on a 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = Path(tempfile.mkdtemp(prefix="previews-bench-burst-"))
WORK.chmod(0o755)  # PostgreSQL's user must reach its data directory below
os.environ["PREFECT_HOME"] = str(WORK / "bench-client")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

import docker  # noqa: E402

from previews.local import processes, production  # noqa: E402
from previews.local.stack import Stack, _bin, _wait_http  # noqa: E402
from tests.support.burst import (  # noqa: E402
    Push,
    builds_executed,
    failed_actions,
    finals,
    plan_burst,
    running_intervals,
    save_blocks,
    send,
    states_of,
    wait_all_final,
)
from tests.support.git_http import GitHttpServer, run_git_http  # noqa: E402
from tests.support.sample import make_sample  # noqa: E402
from tests.support.services import Registry, ensure_base_image, free_port, run_registry  # noqa: E402

SECRET = "bench-burst-webhook-secret"
GIT_TOKEN = "bench-burst-git-token"


@dataclass(frozen=True)
class Endpoints:
    api: str
    receiver: str
    parts: dict[str, int]  # the stack's long-lived processes by name: their CPU time is measured


def parts_of(stack: Stack) -> dict[str, int]:
    return {part.name: part.proc.pid for part in stack.parts}


@contextmanager
def single(pool_limit: int) -> Iterator[Endpoints]:
    """One ``prefect server start`` on SQLite (services included), one Docker worker, the receiver."""
    root = WORK / "single"
    root.mkdir()
    stack = Stack(root)
    port, receiver_port = free_port(), free_port()
    api = f"http://127.0.0.1:{port}/api"
    try:
        env = {
            **production.client_environment(root, api, "server"),
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": str(production.SLOT_WAIT_SECONDS),
        }
        argv = [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        proc, log = stack.start("prefect-server", argv, env, grace=5)
        _wait_http(f"{api}/health", proc, log, timeout=240)
        production.prepare_pool(api, production.client_environment(root, api, "deploy"), limit=pool_limit)
        production.install_retry_automation(api)
        production.start_workers(stack, root, api, 1)
        receiver = _receiver(stack, root, api, receiver_port)
        yield Endpoints(api, receiver, parts_of(stack))
    finally:
        stack.stop()


def _receiver(stack: Stack, root: Path, api: str, port: int) -> str:
    env = {
        **production.client_environment(root, api, "receiver"),
        "PREVIEWS_WEBHOOK_SECRET": SECRET,
        "PREVIEWS_OUTBOX_PATH": str(root / "outbox.sqlite3"),
    }
    argv = [_bin("previews"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc, log = stack.start("receiver", argv, env, grace=3, tier=3)
    _wait_http(f"http://127.0.0.1:{port}/healthz", proc, log, timeout=60)
    return f"http://127.0.0.1:{port}/webhooks/github"


@contextmanager
def production_shaped(pool_limit: int, workers: int) -> Iterator[Endpoints]:
    """``previews up --production``'s stack (PostgreSQL, Redis, 2 API servers, HAProxy, ``workers``)."""
    ports = production.Ports(
        postgres=free_port(),
        redis=free_port(),
        servers=(free_port(), free_port()),
        api=free_port(),
        receiver=free_port(),
    )
    with production.run_production(
        state_dir=WORK,
        ports=ports,
        workers=workers,
        pool_limit=pool_limit,
        receiver_env={"PREVIEWS_WEBHOOK_SECRET": SECRET},
    ) as running:
        yield Endpoints(running.api, running.receiver, parts_of(running.stack))


def burst(
    endpoints: Endpoints, registry: Registry, git: GitHttpServer, *, prs: int, deliveries: int
) -> dict[str, str]:
    """Send the burst, wait for every run to end, and measure."""
    sample = make_sample(WORK / "remotes", f"Bench-{uuid.uuid4().hex[:8]}")
    save_blocks(endpoints.api, registry, git.url_template(), GIT_TOKEN, sample)
    pushes = plan_burst(sample, prs=prs, deliveries=deliveries, seed=2026)
    rng = random.Random(2026)
    accepted: dict[str, float] = {}
    load_before = os.getloadavg()[0]
    cpu_before = {name: processes.cpu_seconds(pid) for name, pid in endpoints.parts.items()}
    busy_before = busy_seconds()
    for push in pushes:
        accepted[push.delivery] = send(
            endpoints.receiver, SECRET, sample.app.repository, push, sample.head_sha
        )
        time.sleep(rng.uniform(0.0, 0.25))
    first = min(accepted.values())
    runs = wait_all_final(endpoints.api, sample.app.repository, len(pushes), timeout=3600, settle=180)
    load_after = os.getloadavg()[0]
    cpu = {n: processes.cpu_seconds(pid) - cpu_before[n] for n, pid in endpoints.parts.items()}
    burst_s = time.time() - first
    final_runs = [
        r for r in runs if finals(pushes).get(r["parameters"]["pr_number"]) == r["parameters"]["head_sha"]
    ]
    last_image = max(
        datetime.fromisoformat(states_of(endpoints.api, r["id"])[-1]["timestamp"]).timestamp()
        for r in final_runs
    )
    intervals = running_intervals(endpoints.api, runs)
    waits = sorted(
        spans[0][0].timestamp() - accepted[r["parameters"]["delivery"]]
        for r in runs
        if (spans := intervals.get(r["id"]))
    )
    created = sorted(
        datetime.fromisoformat(r["created"]).timestamp() - accepted[r["parameters"]["delivery"]] for r in runs
    )
    failed = failed_actions(endpoints.api)
    image = sample.app.repository.lower()
    completed = sum(r["state"]["type"] == "COMPLETED" for r in final_runs)
    report_broken_promises(pushes, runs, registry.tags(image))
    return {
        "first delivery -> last image": f"{last_image - first:.0f} s",
        "builds executed / PRs": f"{builds_executed(endpoints.api, runs)} / {prs}",
        "final heads pushed": f"{len(registry.tags(image))} tags, {completed} final runs Completed",
        "runs Cancelled": f"{sum(r['state']['type'] == 'CANCELLED' for r in runs)} of {len(runs)}",
        "deliveries without a run (failed automation actions)": (
            f"{len(pushes) - len(runs)} ({'; '.join(sorted(set(failed))) or 'none failed'})"
        ),
        "accepted -> run created p50 / p99": f"{pct(created, 0.5):.1f} s / {pct(created, 0.99):.1f} s",
        "PRs whose runs were created out of push order": f"{out_of_order(pushes, runs)} of {prs}",
        "accepted -> Running p50": f"{pct(waits, 0.5):.1f} s ({len(waits)} runs reached Running)",
        "accepted -> Running p99": f"{pct(waits, 0.99):.1f} s",
        "load average (1 min) before/after": f"{load_before:.1f} / {load_after:.1f}",
        "CPU-s of the stack's processes": ", ".join(
            f"{name} {seconds:.0f} ({100 * seconds / burst_s:.0f}%)"
            for name, seconds in sorted(cpu.items(), key=lambda item: -item[1])
        ),
        "CPU-s of the whole machine (flow containers, builds, the rest)": f"{busy_seconds() - busy_before:.0f}",
    }


def out_of_order(pushes: list[Push], runs: list[dict[str, Any]]) -> int:
    """How many PRs had their runs created in another order than their pushes were delivered."""
    created = {r["parameters"]["delivery"]: r["created"] for r in runs}
    count = 0
    for pr in finals(pushes):
        mine = [created[p.delivery] for p in pushes if p.pr == pr]
        count += mine != sorted(mine)
    return count


def report_broken_promises(pushes: list[Push], runs: list[dict[str, Any]], tags: list[str]) -> None:
    """Print each PR whose final head was not the one run Completed and pushed: its pushes and runs, in order."""
    final = finals(pushes)
    for pr, head in sorted(final.items()):
        mine = [r for r in runs if r["parameters"]["pr_number"] == pr]
        done = [r for r in mine if r["state"]["type"] == "COMPLETED"]
        pushed = sorted(t for t in tags if t.startswith(f"pr-{pr}-"))
        if [r["parameters"]["head_sha"] for r in done] == [head] and pushed == [f"pr-{pr}-{head}"]:
            continue
        order = [p.sha[:7] for p in pushes if p.pr == pr]
        print(f"PR {pr}: pushes {order} (final {head[:7]}), tags {[t.rsplit('-', 1)[1][:7] for t in pushed]}")
        for r in sorted(mine, key=lambda r: r["created"]):
            state = r["state"]
            print(
                f"  created {r['created']}  {r['parameters']['head_sha'][:7]}  {state['name']}: "
                f"{(state.get('message') or '')[:140]}"
            )


def busy_seconds() -> float:
    """CPU time the machine spent on anything but idle and I/O wait since boot (``/proc/stat``)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(p * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prs", type=int, default=30)
    parser.add_argument("--deliveries", type=int, default=100)
    parser.add_argument("--pool-limit", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="workers of the production-shaped stack")
    parser.add_argument("--only", choices=("single", "production"), help="measure one shape only")
    args = parser.parse_args()
    ensure_base_image(docker.from_env(timeout=300))
    shapes = {
        "SQLite, 1 server, 1 worker": lambda: single(args.pool_limit),
        f"PostgreSQL+Redis, 2 API servers, {args.workers} workers": lambda: production_shaped(
            args.pool_limit, args.workers
        ),
    }
    if args.only:
        shapes = {k: v for k, v in shapes.items() if (args.only == "single") == k.startswith("SQLite")}
    columns: dict[str, dict[str, str]] = {}
    started = time.monotonic()
    with run_registry(WORK / "registry") as registry, run_git_http(WORK / "remotes", GIT_TOKEN) as git:
        for name, shape in shapes.items():
            print(f"{name}: starting ...", flush=True)
            with shape() as endpoints:
                print(f"{name}: {args.deliveries} deliveries over {args.prs} PRs ...", flush=True)
                columns[name] = burst(endpoints, registry, git, prs=args.prs, deliveries=args.deliveries)
        client = docker.from_env(timeout=300)
        for image in client.images.list():  # the flows built on the host engine
            for ref in image.tags:
                if ref.startswith(f"{registry.host}/"):
                    with contextlib.suppress(docker.errors.APIError):
                        client.images.remove(ref, force=True)
    shutil.rmtree(WORK, ignore_errors=True)
    print(
        f"machine: {os.cpu_count()} CPUs (shared); pool limit {args.pool_limit}; total {time.monotonic() - started:.0f} s"
    )
    names = list(columns)
    rows = list(next(iter(columns.values())))
    widths = [max(len(r) for r in rows)] + [max(len(n), *(len(columns[n][r]) for r in rows)) for n in names]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(["burst", *names], widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        cells = [row, *(columns[n][row] for n in names)]
        print("| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
