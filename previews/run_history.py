"""The run-history adapter: a repository's preview-image and preview-teardown runs, read from the Prefect API.

Prefect's server cannot filter runs by parameter, so the newest ``scan`` runs of the two flows are read and
matched client-side by repository (case-insensitive, as GitHub names are) and PR number. Then, for the runs
shown, their task runs give the step durations and their summary artifacts the image and digest. What the
records mean (trigger, liveness) is :mod:`previews.core.history`. API failures become
:class:`TransientPrefectError` (connection, timeout, 5xx, 429) or :class:`PrefectError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import FlowRun, TaskRun
from prefect.client.schemas.sorting import FlowRunSort

from previews.core.history import RunRecord, trigger_of
from previews.core.names import parse_pr_number, parse_sha
from previews.errors import ValidationError
from previews.prefect_errors import PrefectAdapter, translated

IMAGE_FLOW, TEARDOWN_FLOW = "preview-image", "preview-teardown"
_PAGE = 200


def _record(run: FlowRun, flow: str) -> RunRecord | None:
    params = run.parameters or {}
    try:
        number = parse_pr_number(params.get("pr_number"))
        sha = parse_sha(params.get("head_sha")) if flow == IMAGE_FLOW else None
    except ValidationError:
        return None
    creator = run.created_by
    return RunRecord(
        flow_run_id=str(run.id),
        flow=flow,
        name=run.name,
        pr_number=number,
        head_sha=sha,
        state=(run.state.name if run.state is not None else None) or "Unknown",
        message=(run.state.message or None) if run.state is not None else None,
        created=run.created or datetime.now(UTC),
        trigger=trigger_of(
            params.get("delivery"),
            created_by_type=creator.type if creator else None,
            created_by_name=creator.display_value if creator else None,
            from_deployment=run.deployment_id is not None,
        ),
    )


def _step(task_run: TaskRun) -> tuple[str, float]:
    """``build-a1f`` -> ``build``, with its run time (so far, for a running step)."""
    base, _, suffix = task_run.name.rpartition("-")
    name = base if base and len(suffix) == 3 else task_run.name
    done = task_run.state is not None and task_run.state.is_final()
    took = task_run.total_run_time if done else task_run.estimated_run_time
    return name, round(took.total_seconds(), 3)


class RunHistory(PrefectAdapter):
    """Preview runs of this Prefect API, through one sync client (enter it before use)."""

    def runs(self, repository: str, pr_number: int | None, *, scan: int) -> list[RunRecord]:
        """The newest ``scan`` runs of both flows that belong to ``repository`` (and ``pr_number``)."""
        flows = FlowFilter(name=FlowFilterName(any_=[IMAGE_FLOW, TEARDOWN_FLOW]))
        with translated("read flows"):
            names = {flow.id: flow.name for flow in self._client.read_flows(flow_filter=flows)}
        found: list[RunRecord] = []
        for offset in range(0, scan, _PAGE):
            with translated("read flow runs"):
                page = self._client.read_flow_runs(
                    flow_filter=flows,
                    sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                    limit=min(_PAGE, scan - offset),
                    offset=offset,
                )
            for run in page:
                params = run.parameters or {}
                if str(params.get("repository", "")).lower() != repository.lower():
                    continue
                record = _record(run, names.get(run.flow_id, "?"))
                if record is not None and pr_number in (None, record.pr_number):
                    found.append(record)
            if len(page) < _PAGE:
                break
        return found

    def summaries(self, run_ids: Sequence[str]) -> dict[str, str]:
        """The markdown summary artifact of each run that has one, by flow-run id."""
        found: dict[str, str] = {}
        for start in range(0, len(run_ids), _PAGE):
            ids = [UUID(i) for i in run_ids[start : start + _PAGE]]
            with translated("read artifacts"):
                artifacts = self._client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)),
                    limit=_PAGE,
                )
            for artifact in artifacts:
                if artifact.type == "markdown" and artifact.flow_run_id and isinstance(artifact.data, str):
                    found.setdefault(str(artifact.flow_run_id), artifact.data)
        return found

    def durations(self, run_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """Each run's steps (task runs) in start order with their seconds, by flow-run id."""
        steps: dict[str, list[tuple[datetime, str, float]]] = {}
        for start in range(0, len(run_ids), 50):
            ids = [UUID(i) for i in run_ids[start : start + 50]]
            for offset in range(0, 10 * _PAGE, _PAGE):
                with translated("read task runs"):
                    page = self._client.read_task_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                        limit=_PAGE,
                        offset=offset,
                    )
                for task_run in page:
                    name, seconds = _step(task_run)
                    began = task_run.start_time or task_run.expected_start_time or datetime.now(UTC)
                    steps.setdefault(str(task_run.flow_run_id), []).append((began, name, seconds))
                if len(page) < _PAGE:
                    break
        return {run: {name: secs for _, name, secs in sorted(items)} for run, items in steps.items()}
