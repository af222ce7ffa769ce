"""Cancel-in-progress against the Prefect API: tag this run, find its PR's other in-flight runs, act on them.

The decision itself is pure (:mod:`previews.core.supersede`); this module reads and writes flow runs only.
Prefect's server cannot filter runs by parameter, and a Scheduled run has not tagged itself yet, so every
in-flight run of the flow is read and compared client-side by repository and PR number.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import OrchestrationResult
from prefect.states import Cancelled, Cancelling

from previews.core import status
from previews.core.names import FULL_SHA_RE, parse_pr_number, parse_repository, parse_sha
from previews.core.request import BuildRequest
from previews.core.supersede import RunRef, SupersedeDecision, decide
from previews.errors import PreviewsError, ValidationError
from previews.github.client import GitHubClient

IN_FLIGHT = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED]
ENDING = (StateType.CANCELLING, StateType.CANCELLED, StateType.CRASHED, StateType.FAILED)
_PAGE = 200


def run_tags(request: BuildRequest) -> list[str]:
    """The tags a preview-image run carries, for the UI's filters: ``previews``, ``repo:...``, ``pr:N``."""
    return ["previews", f"repo:{request.repository.lower()}", f"pr:{request.pr_number}"]


def run_ref(run: FlowRun) -> RunRef | None:
    """The run's PR and commit from its parameters; None when they are missing or invalid."""
    params = run.parameters or {}
    try:
        repository = parse_repository(params.get("repository"))
        number = parse_pr_number(params.get("pr_number"))
        sha = parse_sha(params.get("head_sha"))
    except ValidationError:
        return None
    return RunRef(str(run.id), run.name, run.created or datetime.now(UTC), repository, number, sha)


def _in_flight(client: SyncPrefectClient, flow_id: UUID) -> list[FlowRun]:
    runs: list[FlowRun] = []
    while True:
        page = client.read_flow_runs(
            flow_filter=FlowFilter(id=FlowFilterId(any_=[flow_id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=IN_FLIGHT))
            ),
            limit=_PAGE,
            offset=len(runs),
        )
        runs.extend(page)
        if len(page) < _PAGE:
            return runs


def _tag(client: SyncPrefectClient, run: FlowRun, tags: Iterable[str]) -> None:
    wanted = [*run.tags, *(t for t in tags if t not in run.tags)]
    if wanted != list(run.tags):
        client.update_flow_run(run.id, tags=wanted)


def check(
    flow_run_id: UUID,
    *,
    stale_after: timedelta,
    request: BuildRequest | None = None,
    github: GitHubClient | None = None,
    status_context: str = status.DEFAULT_CONTEXT,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    apply: bool = True,
) -> SupersedeDecision:
    """Decide this run's fate; with ``apply``, tag it and move the older runs it supersedes to Cancelling.

    When this run is itself Cancelling or Cancelled (someone else superseded it meanwhile), the verdict is
    ``superseded`` with the state's message as the reason.
    """
    log = logger or logging.getLogger(__name__)
    with get_client(sync_client=True) as client:
        me_run = client.read_flow_run(flow_run_id)
        if me_run.state is not None and me_run.state.type in ENDING:
            return SupersedeDecision("superseded", me_run.state.message or "cancelled")
        me = run_ref(me_run)
        if me is None:
            return SupersedeDecision("proceed", "this run has no valid PR parameters")
        if apply and request is not None:
            _tag(client, me_run, run_tags(request))
        in_flight = {str(run.id): run for run in _in_flight(client, me_run.flow_id)}
        others = [ref for run in in_flight.values() if (ref := run_ref(run)) is not None]
        decision = decide(me, others, now=datetime.now(UTC), stale_after=stale_after)
        if not apply:
            return decision
        for cancellation in decision.cancel:
            old = cancellation.run
            state = in_flight[old.id].state
            queued = state is not None and state.type == StateType.SCHEDULED and state.name != "AwaitingRetry"
            # A run still queued has no process to stop: Cancelled at once (Cancelling would never end).
            proposed = Cancelled if queued else Cancelling
            result: OrchestrationResult[Any] = client.set_flow_run_state(
                UUID(old.id), proposed(message=cancellation.message)
            )
            log.info(
                "run %s (%s) at %s: %s -> %s %s: %s",
                old.name,
                old.id,
                old.head_sha[:12],
                state.name if state else "?",
                proposed.__name__,
                result.status.value,
                cancellation.message,
            )
            if github is not None and FULL_SHA_RE.fullmatch(old.head_sha):
                update = status.superseded(me.head_sha)
                try:
                    github.create_status(
                        old.repository,
                        old.head_sha,
                        state=update.state,
                        context=status_context,
                        description=update.description,
                        target_url=None,
                    )
                except PreviewsError as exc:
                    log.warning("could not post the superseded status on %s: %s", old.head_sha[:12], exc)
    return decision
