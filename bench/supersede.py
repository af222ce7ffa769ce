"""Cancel-in-progress and rerun benchmark, side by side in one run, on real parts (issue 5).

    python bench/supersede.py                  # everything, 2 supersede rounds
    python bench/supersede.py --rounds 3 --deps-seconds 8

It starts its own Prefect server, docker-registry (htpasswd) and git remotes under a temp dir, and the
preview-image deployment served from a subprocess (runner polling every second). It prints:

1. time to supersede: a new run of the PR is created while the old one is inside a slow ``RUN`` step ->
   the old run is Cancelled (median of ``--rounds``);
2. rerun of an already-published SHA versus a full rebuild of the same SHA (``force_rebuild``), wall time;
3. a one-line code change rebuilt on a cold engine (the PR's local images removed, base image kept) with
   and without ``cache_from`` (the PR's previous image pulled from the registry), wall time.

The Dockerfile stands in for a real one: an expensive dependency step (``--deps-seconds`` of work writing a
``--deps-mb`` layer) before the source COPY, and a cheap step after it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import services  # noqa: E402

WORK = Path(tempfile.mkdtemp(prefix="previews-bench-supersede-"))
PORT = services.free_port()
os.environ.update(services.prefect_env(WORK / "prefect-home", PORT))
for _name in [n for n in os.environ if n.startswith("PREVIEWS_")]:
    del os.environ[_name]

import docker  # noqa: E402
from prefect.client.schemas.objects import StateType  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from flows.preview_image import preview_image  # noqa: E402
from previews.settings import Settings  # noqa: E402
from previews.wiring import Wiring  # noqa: E402
from tests.support.served import (  # noqa: E402
    create_run,
    serve_preview_image,
    states_of,
    task_states,
    wait_final,
    wait_for,
)
from tests.support.services import BASE_IMAGE, Registry, Remote, make_remote  # noqa: E402


def dockerfile(marker: str, deps_seconds: float, deps_mb: int) -> str:
    return (
        f"FROM {BASE_IMAGE}\n"
        f"RUN mkdir -p /opt/deps && echo {marker} > /opt/marker && sleep {deps_seconds:g} "
        f"&& dd if=/dev/urandom of=/opt/deps/blob bs=1M count={deps_mb} 2>/dev/null\n"
        "COPY src/ /opt/app/\n"
        "RUN cat /opt/app/main.txt > /opt/combined.txt\n"
    )


def settings(reg: Registry, remote: Remote, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "registry": reg.host,
        "registry_username": reg.username,
        "registry_token": SecretStr(reg.password),
        "git_url_template": f"file://{WORK / 'remotes'}/{{repository}}.git",
        "retry_delay": 0.2,
        "workspace_root": WORK / "ws",
    }
    values.update(overrides)
    return Settings(**values)


def run_flow(config: Settings, **params: Any) -> tuple[float, Any]:
    start = time.monotonic()
    state = preview_image.over(lambda: Wiring(config))(**params, return_state=True)
    took = time.monotonic() - start
    if not state.is_completed():
        raise RuntimeError(f"run failed: {state.message}")
    return took, state.result()


def cold_engine(client: docker.DockerClient, repository: str) -> None:
    for image in client.images.list(filters={"label": f"previews.repository={repository}"}):
        client.images.remove(image.id, force=True)


def bench_supersede(reg: Registry, remote: Remote, rounds: int) -> list[float]:
    remote.commit({"src/main.txt": "v1\n", "Dockerfile": "FROM scratch\n"}, "init")
    env = {
        "PREVIEWS_REGISTRY": reg.host,
        "PREVIEWS_REGISTRY_USERNAME": reg.username,
        "PREVIEWS_REGISTRY_TOKEN": reg.password,
        "PREVIEWS_GIT_URL_TEMPLATE": f"file://{WORK / 'remotes'}/{{repository}}.git",
        "PREVIEWS_BUILD_CONTEXT": ".",
        "PREVIEWS_WORKSPACE_ROOT": str(WORK / "served-ws"),
        "PREVIEWS_CACHE_FROM_ENABLED": "false",
    }
    timings: list[float] = []
    with serve_preview_image(env, log=WORK / "served.log") as deployment:
        for number in range(1, rounds + 1):
            marker = uuid.uuid4().hex[:8]
            slow = remote.commit({"Dockerfile": dockerfile(marker, 60, 1)}, f"slow {number}")
            fast = remote.commit({"Dockerfile": dockerfile(marker + "b", 0, 1)}, f"fast {number}")
            params = {"repository": remote.repository, "pr_number": number}
            old = create_run(deployment, {**params, "head_sha": slow})
            deadline = time.monotonic() + 120
            while task_states(old.id).get("build") != "RUNNING":
                if time.monotonic() > deadline:
                    raise RuntimeError("the slow build never started")
                time.sleep(0.2)
            time.sleep(1.0)  # well inside the slow RUN step
            start = time.monotonic()
            new = create_run(deployment, {**params, "head_sha": fast})
            ended = wait_for(
                old.id, {StateType.CANCELLED, StateType.COMPLETED, StateType.FAILED}, timeout=120
            )
            took = time.monotonic() - start
            if ended.state is None or ended.state.type != StateType.CANCELLED:
                raise RuntimeError(f"old run ended {ended.state}")
            if not any((s.message or "") == f"superseded by {fast}" for s in states_of(old.id)):
                raise RuntimeError("no superseded message on the old run")
            final = wait_final(new.id)
            if final.state is None or final.state.type != StateType.COMPLETED:
                raise RuntimeError(f"new run ended {final.state}")
            timings.append(took)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2, help="supersede rounds (median is printed)")
    parser.add_argument("--deps-seconds", type=float, default=6.0, help="work in the dependency step")
    parser.add_argument("--deps-mb", type=int, default=40, help="size of the dependency layer")
    parser.add_argument(
        "--supersede-only", action="store_true", help="only the time to supersede (bench/run.py's row)"
    )
    args = parser.parse_args()

    client = services.docker_client()
    services.ensure_base_image(client)
    try:
        with (
            services.run_prefect_server(WORK / "prefect-home", PORT),
            services.run_registry(WORK / "registry") as reg,
        ):
            print(f"Prefect server, registry {reg.host}, Docker engine ready; work dir {WORK}", flush=True)
            sup_remote = make_remote(WORK / "remotes", f"bench-{uuid.uuid4().hex[:6]}/sup")
            try:
                supersede = bench_supersede(reg, sup_remote, args.rounds)
            finally:
                cold_engine(client, sup_remote.repository)
            if args.supersede_only:
                print(
                    f"time to supersede (new run created -> old run Cancelled): median "
                    f"{statistics.median(supersede):.2f} s; rounds: {', '.join(f'{t:.2f}' for t in supersede)}"
                )
                return

            remote = make_remote(WORK / "remotes", f"bench-{uuid.uuid4().hex[:6]}/app")
            marker = uuid.uuid4().hex[:8]
            first = remote.commit(
                {"Dockerfile": dockerfile(marker, args.deps_seconds, args.deps_mb), "src/main.txt": "v1\n"},
                "v1",
            )
            config = settings(reg, remote)
            params = {"repository": remote.repository, "pr_number": 1, "head_sha": first}
            initial, _ = run_flow(config, **params)
            rebuild, rebuilt = run_flow(config, **params, force_rebuild=True)
            rerun, reused = run_flow(config, **params)
            if reused.digest != rebuilt.digest or "build" in reused.durations_s:
                raise RuntimeError("the rerun did not reuse the published image")

            second = remote.commit({"src/main.txt": "v2\n"}, "one-line change")
            cold_engine(client, remote.repository)
            no_cache, plain = run_flow(
                settings(reg, remote, cache_from_enabled=False),
                repository=remote.repository,
                pr_number=2,
                head_sha=second,
            )
            cold_engine(client, remote.repository)
            with_cache, warmed = run_flow(config, repository=remote.repository, pr_number=1, head_sha=second)
            cold_engine(client, remote.repository)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)

    print()
    print(f"{'measurement':58} {'seconds':>9} {'ratio':>7}")
    print(
        f"{'time to supersede (new run created -> old run Cancelled)':58} "
        f"{statistics.median(supersede):9.2f} {'':>7}   rounds: {', '.join(f'{t:.2f}' for t in supersede)}"
    )
    print(f"{'first build of the SHA (cold cache, pushed)':58} {initial:9.2f} {initial / rerun:6.1f}x")
    print(
        f"{'full rebuild of the same SHA (force_rebuild, warm cache)':58} {rebuild:9.2f} {rebuild / rerun:6.1f}x"
    )
    print(f"{'rerun of the already-published SHA (no build, no push)':58} {rerun:9.2f} {'1.0x':>7}")
    print(
        f"{'one-line change, cold engine, no cache_from':58} {no_cache:9.2f}"
        f"            build {plain.durations_s['build']:.2f}s, {plain.cached_steps}/{plain.steps} steps cached"
    )
    print(
        f"{'one-line change, cold engine, cache_from the PR image':58} {with_cache:9.2f} "
        f"{no_cache / with_cache:6.1f}x   build {warmed.durations_s['build']:.2f}s "
        f"(+ pull {warmed.durations_s.get('warm-cache', 0):.2f}s), {warmed.cached_steps}/{warmed.steps} steps cached"
    )
    print(
        f"(dependency step: {args.deps_seconds:g}s of work + a {args.deps_mb} MB layer; "
        "flow-run wall times include Prefect task overhead; ratio = time / rerun, and no cache_from / cache_from)"
    )


if __name__ == "__main__":
    main()
