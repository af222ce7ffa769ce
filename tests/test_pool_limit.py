"""``previews pool-limit``: a work pool's limit made a hard cap, against a real Prefect server.

The pool's own limit is applied when a worker polls; the shared deployment limit is taken on the way to
Pending, atomically. The test proposes Pending for more runs than slots, all at once, the way several workers
would, and exactly ``limit`` of them get through.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import StateType
from prefect.states import Pending

from tests.support.console import PREVIEWS

pytestmark = pytest.mark.usefixtures("prefect_server")


def pool_limit(*args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [PREVIEWS, "pool-limit", *args, "--json"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, json.loads(done.stdout)


@pytest.fixture
def pool() -> dict[str, str]:
    """A process pool holding two deployments without a limit and one with its own limit of 1."""
    name = f"cap-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        flow_id = client.create_flow_from_name(f"{name}-flow")
        ids = {
            deployment: str(
                client.create_deployment(
                    flow_id=flow_id,
                    name=deployment,
                    work_pool_name=name,
                    concurrency_limit=1 if deployment == "one-at-a-time" else None,
                )
            )
            for deployment in ("builds", "teardowns", "one-at-a-time")
        }
    return {"pool": name, **ids}


def test_the_pool_limit_is_shared_by_the_deployments_without_their_own(pool: dict[str, str]) -> None:
    code, body = pool_limit("3", "--pool", pool["pool"])
    assert code == 0, body
    assert body["status"] == "ok"
    assert body["capped_deployments"] == ["builds", "teardowns"]
    assert body["deployments_with_their_own_limit"] == ["one-at-a-time"]
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(pool["pool"]).concurrency_limit == 3
        cap = client.read_global_concurrency_limit_by_name(f"{pool['pool']}-pool")
        assert (cap.limit, cap.active) == (3, True)
        limits = {
            name: client.read_deployment(pool[name]).global_concurrency_limit
            for name in pool
            if name != "pool"
        }
    assert limits["builds"] is not None
    assert limits["builds"].id == cap.id
    assert limits["teardowns"] is not None
    assert limits["teardowns"].id == cap.id
    own = limits["one-at-a-time"]
    assert own is not None
    assert (own.id != cap.id, own.limit) == (True, 1)

    # Again with another size (after a deploy, or to grow): the same limit, resized; nothing else moves.
    code, body = pool_limit("5", "--pool", pool["pool"])
    assert (code, body["capped_deployments"]) == (0, ["builds", "teardowns"])
    with get_client(sync_client=True) as client:
        again = client.read_global_concurrency_limit_by_name(f"{pool['pool']}-pool")
        assert (again.id, again.limit) == (cap.id, 5)
        assert client.read_work_pool(pool["pool"]).concurrency_limit == 5


def test_a_redeploy_removes_the_cap_and_the_command_puts_it_back(pool: dict[str, str]) -> None:
    assert pool_limit("2", "--pool", pool["pool"])[0] == 0
    with get_client(sync_client=True) as client:
        # What `prefect deploy` sends for a deployment without a limit: Prefect deletes the deployment's limit,
        # which here is the shared one, so every deployment of the pool loses it.
        deployment = client.read_deployment(pool["builds"])
        client.create_deployment(flow_id=deployment.flow_id, name="builds", work_pool_name=pool["pool"])
        assert client.read_deployment(pool["teardowns"]).global_concurrency_limit is None
    code, body = pool_limit("2", "--pool", pool["pool"])
    assert (code, body["capped_deployments"]) == (0, ["builds", "teardowns"])
    with get_client(sync_client=True) as client:
        cap = client.read_global_concurrency_limit_by_name(f"{pool['pool']}-pool")
        for name in ("builds", "teardowns"):
            shared = client.read_deployment(pool[name]).global_concurrency_limit
            assert shared is not None
            assert shared.id == cap.id


def test_runs_proposed_pending_at_once_get_exactly_the_limits_slots(pool: dict[str, str]) -> None:
    assert pool_limit("3", "--pool", pool["pool"])[0] == 0
    with get_client(sync_client=True) as client:
        runs = [
            client.create_flow_run_from_deployment(pool[name]).id
            for name in ["builds"] * 4 + ["teardowns"] * 3
        ]

    def propose(run_id: uuid.UUID) -> str:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run_id, Pending())
            state = client.read_flow_run(run_id).state
            assert state is not None
            return f"{state.type.value}/{state.name}"

    with ThreadPoolExecutor(len(runs)) as pool_of_workers:
        outcomes = list(pool_of_workers.map(propose, runs))
    assert outcomes.count(f"{StateType.PENDING.value}/Pending") == 3, outcomes
    assert outcomes.count(f"{StateType.SCHEDULED.value}/AwaitingConcurrencySlot") == 4, outcomes


def test_bad_input_is_named_and_changes_nothing() -> None:
    missing = f"no-such-pool-{uuid.uuid4().hex[:6]}"
    code, body = pool_limit("2", "--pool", missing)
    assert code == 2
    assert body["status"] == "failed"
    assert missing in body["reason"]
    assert "prefect work-pool create" in body["reason"]
    with get_client(sync_client=True) as client:
        names = [limit.name for limit in client.read_global_concurrency_limits(limit=200)]
    assert f"{missing}-pool" not in names
    done = subprocess.run([PREVIEWS, "pool-limit", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "'0' is not a number from 1 to 1000" in done.stderr
