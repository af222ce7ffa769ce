"""Reading what a flow run left on the real Prefect server: its logs and its task runs."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import State
from prefect.logging.handlers import APILogHandler


def _run_id(state: State[Any]) -> uuid.UUID:
    run_id = state.state_details.flow_run_id
    assert run_id is not None
    return run_id


async def _logs(flow_run_id: uuid.UUID) -> str:
    async with get_client() as client:
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(log.message for log in logs)


async def _task_runs(flow_run_id: uuid.UUID) -> dict[str, int]:
    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name.rsplit("-", 1)[0]: run.run_count for run in runs}


def flow_run_logs(state: State[Any]) -> str:
    """Every log line the run sent to the server (the queued ones are flushed first)."""
    APILogHandler().flush()
    return asyncio.run(_logs(_run_id(state)))


def task_run_counts(state: State[Any]) -> dict[str, int]:
    """Task name -> how many times it ran (1 = no retry) for the run that ended in ``state``."""
    return asyncio.run(_task_runs(_run_id(state)))
