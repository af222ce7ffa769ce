"""The preview-image flow served as a deployment from a subprocess (as ``previews up`` does), for tests and bench.

    with serve_preview_image(env={"PREVIEWS_REGISTRY": ...}) as deployment:
        run = create_run(deployment, {"repository": ..., "pr_number": 7, "head_sha": ...})
        state = wait_final(run.id)

``python -m tests.support.served <deployment-name>`` is the subprocess itself.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, State, StateType

from tests.support.services import stop

ROOT = Path(__file__).resolve().parents[2]
FINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED}


def _sync_client() -> Any:
    return get_client(sync_client=True)


@contextmanager
def serve_preview_image(
    env: Mapping[str, str],
    *,
    log: Path,
    name: str | None = None,
    timeout: float = 90.0,
    triggers: bool = False,
    teardown: bool = False,
) -> Iterator[str]:
    """Serve ``preview-image`` as deployment ``name`` in a subprocess; yields ``preview-image/<name>``.

    With ``triggers`` the deployment carries the event triggers of ``flows/triggers.py``; the deployment and
    its trigger automations are deleted afterwards, so later events of the session start nothing of it.
    With ``teardown``, ``preview-teardown/<name>`` (without triggers) is served by the same process too.
    """
    name = name or f"test-{uuid.uuid4().hex[:8]}"
    full = {**os.environ, "PREFECT_RUNNER_POLL_FREQUENCY": "1", **env}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.served",
                name,
                *(["--triggers"] if triggers else []),
                *(["--teardown"] if teardown else []),
            ],
            cwd=ROOT,
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        with _sync_client() as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
                try:
                    client.read_deployment_by_name(f"preview-image/{name}")
                    if teardown:
                        client.read_deployment_by_name(f"preview-teardown/{name}")
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
        yield f"preview-image/{name}"
    finally:
        stop(proc, timeout=30)
        if triggers:
            _delete_deployment(f"preview-image/{name}")


def _delete_deployment(full_name: str) -> None:
    """Delete a deployment and the automations its triggers left behind (deleting it alone keeps them)."""
    with _sync_client() as client:
        deployment = client.read_deployment_by_name(full_name)
        api = str(client.api_url).rstrip("/")
        owned = f"{api}/automations/owned-by/prefect.deployment.{deployment.id}"
        httpx.delete(owned, timeout=30).raise_for_status()
        client.delete_deployment(deployment.id)


def create_run(deployment: str, parameters: dict[str, Any], state: State | None = None) -> FlowRun:
    """A new flow run of ``deployment`` (what an event trigger or the UI's "Run" button creates)."""
    with _sync_client() as client:
        dep = client.read_deployment_by_name(deployment)
        run: FlowRun = client.create_flow_run_from_deployment(dep.id, parameters=parameters, state=state)
        return run


def read_run(run_id: uuid.UUID) -> FlowRun:
    with _sync_client() as client:
        run: FlowRun = client.read_flow_run(run_id)
        return run


def states_of(run_id: uuid.UUID) -> list[State]:
    """The run's state history, oldest first."""
    with _sync_client() as client:
        states: list[State] = client.read_flow_run_states(run_id)
        return states


def wait_for(run_id: uuid.UUID, types: set[StateType], *, timeout: float) -> FlowRun:
    """Poll until the run is in one of ``types``; raise with its state on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        run = read_run(run_id)
        if run.state is not None and run.state.type in types:
            return run
        if time.monotonic() > deadline:
            state = run.state.type.value if run.state else None
            raise TimeoutError(f"run {run.name} still {state} after {timeout}s")
        time.sleep(0.2)


def wait_final(run_id: uuid.UUID, *, timeout: float = 120.0) -> FlowRun:
    """Poll until the run is Completed, Failed, Cancelled or Crashed."""
    return wait_for(run_id, FINAL, timeout=timeout)


async def _task_names(run_id: uuid.UUID) -> dict[str, str]:
    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return {r.name.rsplit("-", 1)[0]: (r.state.type.value if r.state else "") for r in runs}


def task_states(run_id: uuid.UUID) -> dict[str, str]:
    """Task name -> state type of the run's task runs."""
    return asyncio.run(_task_names(run_id))


def main() -> None:
    """Serve the preview-image flow under the deployment name given on the command line (and with
    ``--teardown``, the preview-teardown flow under the same name), runs started as flows.serve starts them."""
    from prefect.runner import Runner

    from flows.preview_image import preview_image
    from flows.preview_teardown import preview_teardown
    from flows.serve import warm_start
    from flows.triggers import image_trigger, rerun_trigger

    triggers = [image_trigger(), rerun_trigger()] if "--triggers" in sys.argv[2:] else None
    warm_start(("prefect.flow_engine", "flows.preview_image", "flows.preview_teardown"))
    runner = Runner(limit=4)
    runner.add_flow(preview_image, name=sys.argv[1], triggers=triggers)
    if "--teardown" in sys.argv[2:]:
        runner.add_flow(preview_teardown, name=sys.argv[1])
    asyncio.run(runner.start())


if __name__ == "__main__":
    main()
