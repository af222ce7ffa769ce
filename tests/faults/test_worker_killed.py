"""A flow run whose process is killed mid-build becomes Crashed; retrying it (the UI's Retry) completes.

The preview-image flow is served as a deployment (tests/support/served.py, as ``previews up`` runs it); the
flow-run subprocess is found by its ``PREFECT__FLOW_RUN_ID`` and killed with SIGKILL during ``RUN sleep``.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import docker
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import AwaitingRetry

from tests.support.served import (
    create_run,
    serve_preview_image,
    task_states,
    wait_final,
    wait_for,
)
from tests.support.services import Registry, make_remote

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server", "base_image")]
DOCKERFILE = "FROM previews-test/busybox:1\nRUN echo {salt} && sleep 6\nRUN echo survived > /survived.txt\n"


def flow_run_pid(run_id: uuid.UUID, marker: str, *, timeout: float = 30) -> int:
    """The PID of the process executing ``run_id``: started by ``python -m prefect.engine`` it carries
    ``PREFECT__FLOW_RUN_ID`` in its environment; forked from the runner's warm forkserver (flows.serve), it is
    the forkserver's child, and both carry the served deployment's environment (``marker``, e.g. its unique
    ``PREVIEWS_WORKSPACE_ROOT=...``). One run at a time here, so the forkserver has one child."""
    needle, env_marker = f"PREFECT__FLOW_RUN_ID={run_id}".encode(), marker.encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        forked: dict[int, int] = {}  # pid -> parent pid, of forkserver processes with the marker
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                cmdline = (entry / "cmdline").read_bytes()
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if needle in environ:
                return int(entry.name)
            if env_marker in environ and b"multiprocessing.forkserver" in cmdline:
                forked[int(entry.name)] = parent
        children = [pid for pid, parent in forked.items() if parent in forked]
        if len(children) == 1:
            return children[0]
        time.sleep(0.2)
    raise TimeoutError(f"no process runs flow run {run_id}")


def test_a_killed_run_is_crashed_and_its_retry_completes(
    remotes_root: Path, registry: Registry, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    remote = make_remote(remotes_root, f"Crash-{uuid.uuid4().hex[:8]}/app")
    head = remote.commit(
        {"Dockerfile": DOCKERFILE.format(salt=uuid.uuid4().hex)}, "slow build"
    )  # salt: no cache
    env = {
        "PREVIEWS_REGISTRY": registry.host,
        "PREVIEWS_REGISTRY_USERNAME": registry.username,
        "PREVIEWS_REGISTRY_TOKEN": registry.password,
        "PREVIEWS_GIT_URL_TEMPLATE": f"file://{remotes_root}/{{repository}}.git",
        "PREVIEWS_RETRY_DELAY": "0.2",
        "PREVIEWS_WORKSPACE_ROOT": str(tmp_path),
    }
    with serve_preview_image(env, log=tmp_path / "serve.log") as deployment:
        run = create_run(deployment, {"repository": remote.repository, "pr_number": 31, "head_sha": head})
        wait_for(run.id, {StateType.RUNNING}, timeout=60)
        deadline = time.monotonic() + 60
        while task_states(run.id).get("build") != "RUNNING":
            assert time.monotonic() < deadline, task_states(run.id)
            time.sleep(0.2)
        time.sleep(1.0)
        os.kill(flow_run_pid(run.id, f"PREVIEWS_WORKSPACE_ROOT={tmp_path}"), signal.SIGKILL)
        crashed = wait_final(run.id, timeout=60)
        assert crashed.state is not None
        assert crashed.state.type == StateType.CRASHED
        assert registry.tags(remote.repository.lower()) == []

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, AwaitingRetry(), force=True)
        retried = wait_final(run.id, timeout=120)
    assert retried.state is not None
    assert retried.state.type == StateType.COMPLETED, retried.state.message
    assert registry.tags(remote.repository.lower()) == [f"pr-31-{head}"]
    docker_client.images.remove(f"{registry.host}/{remote.repository.lower()}:pr-31-{head}", force=True)
