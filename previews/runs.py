"""The Prefect-run adapter: read, tag and cancel flow runs through the Prefect API (sync client).

"In flight" has one definition, :data:`IN_FLIGHT`: a run that has not finished and may still build or push
(Scheduled, Pending, Running, Paused, Cancelling). The cleanup keeps the tags of every such run; the
supersede decision (:mod:`previews.core.supersede`) sets aside those already stopping.

Prefect's server cannot filter runs by parameter, and a Scheduled run has not tagged itself yet, so every
in-flight run of the flow is read and compared client-side by repository and PR number. The decisions are
pure; this module reads and writes flow runs only. Reconcile also puts a stranded run (Pending with no
container: :mod:`previews.core.stranded`) back to Scheduled through :meth:`PrefectRuns.reschedule`. Prefect
API failures become :class:`TransientPrefectError` (connection, timeout, 5xx, 429) or :class:`PrefectError`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterId,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterIdempotencyKey,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.runtime import flow_run
from prefect.states import Cancelled, Cancelling, Scheduled

from previews.core.events import parse_received
from previews.core.names import parse_pr_number, parse_repository, parse_sha
from previews.core.reconcile import FinishedRun, PreviewMark, TeardownMark
from previews.core.stranded import RESCHEDULED_STATE, PendingRun, Stranded
from previews.core.supersede import Cancellation, RunRef, SupersedeDecision, decide
from previews.errors import TransientPrefectError, ValidationError
from previews.prefect_errors import PrefectAdapter, translated

IN_FLIGHT = (
    StateType.SCHEDULED,
    StateType.PENDING,
    StateType.RUNNING,
    StateType.PAUSED,
    StateType.CANCELLING,
)
STOPPING = (StateType.CANCELLING,)
# A preview-image run that sent preview-create tags itself so (reconcile finds the previews to tear down).
PREVIEW_CREATED_TAG = "preview:created"
ENDING = (StateType.CANCELLING, StateType.CANCELLED, StateType.CRASHED, StateType.FAILED)
_PAGE = 200


@dataclass(frozen=True, slots=True)
class CancelledRun:
    """An older run this run moved to Cancelled (still queued) or Cancelling, and the server's answer."""

    run: RunRef
    proposed: str
    answer: str
    message: str
    accepted: bool = True


@dataclass(frozen=True, slots=True)
class Supersession:
    """What the supersede step decided, and the older runs it cancelled."""

    decision: SupersedeDecision
    cancelled: tuple[CancelledRun, ...] = ()


def run_ref(run: FlowRun) -> RunRef | None:
    """The run's PR and commit from its parameters; None when they are missing or invalid.

    Its order is the ``received`` parameter (when the receiver accepted the delivery) when valid, else the
    run's creation time (:class:`~previews.core.supersede.RunRef`).
    """
    params = run.parameters or {}
    try:
        repository = parse_repository(params.get("repository"))
        number = parse_pr_number(params.get("pr_number"))
        sha = parse_sha(params.get("head_sha"))
    except ValidationError:
        return None
    stopping = run.state is not None and run.state.type in STOPPING
    created = run.created or datetime.now(UTC)
    try:
        received = parse_received(params.get("received"))
    except ValidationError:
        received = None  # the run fails at validate; until then it is placed by its creation time
    return RunRef(
        str(run.id), run.name, created, repository, number, sha, stopping=stopping, received=received
    )


@dataclass(frozen=True, slots=True)
class StartedRun:
    """A flow run reconcile asked for: ``fresh`` when created now, else the run its key already started."""

    id: str
    name: str
    state: str
    fresh: bool


def _pr_of(run: FlowRun) -> tuple[str, int] | None:
    params = run.parameters or {}
    try:
        return parse_repository(params.get("repository")), parse_pr_number(params.get("pr_number"))
    except ValidationError:
        return None


def flow_run_url(ui_url: str | None) -> str | None:
    """The Prefect UI page of the current flow run (``ui_url``, the UI's base URL, wins over Prefect's own)."""
    run_id = flow_run.id
    if not run_id:
        return None
    if ui_url:
        return f"{ui_url.rstrip('/')}/runs/flow-run/{run_id}"
    url = flow_run.ui_url
    return str(url) if url else None


class PrefectRuns(PrefectAdapter):
    """Flow runs of this Prefect API, through one sync client (enter it before use, or call :meth:`close`)."""

    def __init__(self, client: SyncPrefectClient, *, page_size: int = _PAGE) -> None:
        super().__init__(client)
        self._page = page_size

    def ping(self) -> None:
        """Raise :class:`TransientPrefectError` naming the API when the Prefect server does not answer."""
        error = self._client.api_healthcheck()
        if error is not None:
            url = self._client.api_url
            raise TransientPrefectError(f"the Prefect API at {url} does not answer ({type(error).__name__})")

    def in_flight(self, *, flow_id: UUID | None = None, flow_name: str | None = None) -> list[RunRef]:
        """Every in-flight run of the flow (by id or name) whose parameters name a PR at a commit."""
        flows = FlowFilter(
            id=FlowFilterId(any_=[flow_id]) if flow_id else None,
            name=FlowFilterName(any_=[flow_name]) if flow_name else None,
        )
        return [ref for run in self._in_flight_runs(flows) if (ref := run_ref(run)) is not None]

    def _in_flight_runs(self, flows: FlowFilter, types: Sequence[StateType] = IN_FLIGHT) -> list[FlowRun]:
        """Every run of ``flows`` in one of the state ``types`` (in flight by default), every page read."""
        runs: list[FlowRun] = []
        states = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(types))))
        while True:
            with translated("read flow runs"):
                page = self._client.read_flow_runs(
                    flow_filter=flows, flow_run_filter=states, limit=self._page, offset=len(runs)
                )
            runs.extend(page)
            if len(page) < self._page:
                return runs

    def supersede(
        self,
        run_id: UUID,
        *,
        stale_after: timedelta,
        tags: Sequence[str] = (),
        apply: bool = True,
        head: str | None = None,
    ) -> Supersession:
        """Decide this run's fate; with ``apply``, tag it and cancel the older runs it supersedes.

        ``head`` is the PR's head SHA on GitHub when known: it outranks run order (a run at the head is
        never cancelled or stopped by a run at another SHA).

        When this run is itself Cancelling or Cancelled (someone else superseded it meanwhile), the verdict is
        ``superseded`` with the state's message as the reason.
        """
        with translated("read flow run"):
            me_run = self._client.read_flow_run(run_id)
        if me_run.state is not None and me_run.state.type in ENDING:
            return Supersession(SupersedeDecision("superseded", me_run.state.message or "cancelled"))
        me = run_ref(me_run)
        if me is None:
            return Supersession(SupersedeDecision("proceed", "this run has no valid PR parameters"))
        if apply:
            self._tag(me_run, tags)
        in_flight = {
            str(run.id): run
            for run in self._in_flight_runs(FlowFilter(id=FlowFilterId(any_=[me_run.flow_id])))
        }
        others = [ref for run in in_flight.values() if (ref := run_ref(run)) is not None]
        decision = decide(me, others, now=datetime.now(UTC), stale_after=stale_after, head=head)
        if not apply:
            return Supersession(decision)
        cancelled = tuple(self._cancel(c, in_flight[c.run.id]) for c in decision.cancel)
        return Supersession(decision, cancelled)

    def _tag(self, run: FlowRun, tags: Sequence[str]) -> None:
        wanted = [*run.tags, *(t for t in tags if t not in run.tags)]
        if wanted != list(run.tags):
            with translated("tag flow run"):
                self._client.update_flow_run(run.id, tags=wanted)

    def _cancel(self, cancellation: Cancellation, run: FlowRun) -> CancelledRun:
        state = run.state
        # A run still queued has no process to stop: Cancelled at once (Cancelling would never end). An
        # AwaitingRetry run may have one, unless no container was recorded (a stranded run reconcile
        # rescheduled): Prefect would turn Cancelling into a bare Cancelled then, losing the message.
        queued = (
            state is not None
            and state.type == StateType.SCHEDULED
            and (state.name != RESCHEDULED_STATE or not run.infrastructure_pid)
        )
        proposed = Cancelled if queued else Cancelling
        with translated("cancel flow run"):
            result: Any = self._client.set_flow_run_state(run.id, proposed(message=cancellation.message))
        answer = f"{state.name if state else '?'} -> {proposed.__name__} {result.status.value}"
        accepted = result.status.value == "ACCEPT"
        return CancelledRun(cancellation.run, proposed.__name__, answer, cancellation.message, accepted)

    def name_final_states(self, cancelled: Sequence[CancelledRun], *, timeout: float) -> list[CancelledRun]:
        """Wait (up to ``timeout`` seconds) for each run moved to Cancelling to end, then make its final
        Cancelled state carry the superseding message.

        Prefect's runner (and worker) ends a cancelled run with its generic "Flow run was cancelled
        successfully.", so the newer SHA would survive only in the intermediate Cancelling state (issue 13,
        item 11). Returns the runs whose final state was renamed.
        """
        waiting = {c.run.id: c for c in cancelled if c.proposed == "Cancelling" and c.accepted}
        renamed: list[CancelledRun] = []
        deadline = time.monotonic() + timeout
        while waiting:
            for run_id, wanted in list(waiting.items()):
                with translated("read flow run"):
                    state = self._client.read_flow_run(UUID(run_id)).state
                if state is not None and state.is_final():
                    del waiting[run_id]
                    if state.type == StateType.CANCELLED and state.message != wanted.message:
                        with translated("name the final state of a superseded run"):
                            self._client.set_flow_run_state(
                                UUID(run_id), Cancelled(message=wanted.message), force=True
                            )
                        renamed.append(wanted)
            if not waiting or time.monotonic() > deadline:
                return renamed
            time.sleep(0.5)
        return renamed

    # --- reconcile ------------------------------------------------------------------------------------------

    def start(
        self, deployment: str, parameters: dict[str, Any], *, idempotency_key: str, tags: Sequence[str] = ()
    ) -> StartedRun:
        """A run of ``deployment`` (``flow/deployment``) with ``parameters``, unless ``idempotency_key`` already
        started one (then that run, ``fresh`` False): two callers with one key get one run."""
        with translated(f"read deployment {deployment}"):
            found = self._client.read_deployment_by_name(deployment)
        keyed = FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[found.id]),
            idempotency_key=FlowRunFilterIdempotencyKey(any_=[idempotency_key]),
        )
        with translated("read flow runs"):
            earlier = self._client.read_flow_runs(flow_run_filter=keyed, limit=1)
        if earlier:
            return _started(earlier[0], fresh=False)
        with translated(f"create a run of {deployment}"):
            run = self._client.create_flow_run_from_deployment(
                found.id, parameters=parameters, idempotency_key=idempotency_key, tags=list(tags)
            )
        return _started(run, fresh=True)

    def _runs(
        self, flow_name: str, states: Sequence[StateType], since: datetime, tags: list[str]
    ) -> list[FlowRun]:
        runs: list[FlowRun] = []
        flows = FlowFilter(name=FlowFilterName(any_=[flow_name]))
        wanted = FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(states))),
            expected_start_time=FlowRunFilterExpectedStartTime(after_=since),
            tags=FlowRunFilterTags(all_=tags) if tags else None,
        )
        while True:
            with translated("read flow runs"):
                page = self._client.read_flow_runs(
                    flow_filter=flows, flow_run_filter=wanted, limit=_PAGE, offset=len(runs)
                )
            runs.extend(page)
            if len(page) < _PAGE:
                return runs

    def previews_created(self, flow_name: str, *, since: datetime) -> list[PreviewMark]:
        """Completed runs of ``flow_name`` since ``since`` that sent preview-create (and when they ended)."""
        runs = self._runs(flow_name, [StateType.COMPLETED], since, [PREVIEW_CREATED_TAG])
        return [
            PreviewMark(pr[0], pr[1], run.end_time or run.created or since)
            for run in runs
            if (pr := _pr_of(run)) is not None
        ]

    def finished(self, flow_name: str, *, since: datetime) -> list[FinishedRun]:
        """Runs of ``flow_name`` since ``since`` that ended Completed or Failed, with their state messages."""
        runs = self._runs(flow_name, [StateType.COMPLETED, StateType.FAILED], since, [])
        return [
            FinishedRun(ref, run.state.type.value, run.state.message or "")
            for run in runs
            if run.state is not None and (ref := run_ref(run)) is not None
        ]

    def teardowns(self, flow_name: str, *, since: datetime) -> list[TeardownMark]:
        """Runs of ``flow_name`` since ``since`` that count as a teardown: completed or in flight."""
        runs = self._runs(flow_name, [StateType.COMPLETED, *IN_FLIGHT], since, [])
        return [
            TeardownMark(pr[0], pr[1], run.created or since)
            for run in runs
            if (pr := _pr_of(run)) is not None
        ]

    def mark(self, run_id: UUID, tags: Sequence[str]) -> None:
        """Add ``tags`` to a flow run (kept with its other tags)."""
        with translated("read flow run"):
            run = self._client.read_flow_run(run_id)
        self._tag(run, tags)

    # --- stranded runs -------------------------------------------------------------------------------------

    def pending(self, flow_names: Sequence[str]) -> list[PendingRun]:
        """Every run of the flows named ``flow_names`` that is Pending now (any Pending sub-state)."""
        flows = FlowFilter(name=FlowFilterName(any_=list(flow_names)))
        runs = self._in_flight_runs(flows, (StateType.PENDING,))
        names = self._flow_names({run.flow_id for run in runs})
        return [p for run in runs if (p := _pending(run, names.get(run.flow_id, "?"))) is not None]

    def _flow_names(self, flow_ids: set[UUID]) -> dict[UUID, str]:
        if not flow_ids:
            return {}
        with translated("read flows"):
            found = self._client.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=list(flow_ids))))
        return {f.id: f.name for f in found}

    def reschedule(self, stranded: Stranded) -> Rescheduled:
        """Put a stranded run back to Scheduled (``AwaitingRetry``, now) unless it moved since it was read.

        Prefect's set-state API takes no precondition (no expected state), so the run is read again first and
        left alone when its state is no longer the Pending state read (same state id) or it has an
        ``infrastructure_pid`` now; the new state is forced (a Pending run's worker is gone: no orchestration
        rule should keep it Pending). What remains is the time between this read and the write, one API round
        trip.
        """
        with translated("read flow run"):
            run = self._client.read_flow_run(UUID(stranded.run.id))
        state = run.state
        if state is None or str(state.id) != stranded.run.state_id or run.infrastructure_pid:
            now = f"{state.type.value} {state.name}" if state is not None else "no state"
            return Rescheduled(stranded, False, f"left alone: it moved since it was read (now {now})")
        proposed: State[None] = Scheduled(
            name=RESCHEDULED_STATE, message=stranded.message, scheduled_time=datetime.now(UTC)
        )
        with translated("reschedule a stranded flow run"):
            result: Any = self._client.set_flow_run_state(run.id, proposed, force=True)
        accepted = result.status.value == "ACCEPT"
        return Rescheduled(stranded, accepted, f"Pending -> {RESCHEDULED_STATE} {result.status.value}")


@dataclass(frozen=True, slots=True)
class Rescheduled:
    """A stranded run reconcile tried to reschedule: ``done`` when it is Scheduled again, and what happened."""

    stranded: Stranded
    done: bool
    answer: str


def _pending(run: FlowRun, flow: str) -> PendingRun | None:
    state = run.state
    if state is None or state.type != StateType.PENDING:
        return None
    return PendingRun(
        id=str(run.id),
        name=run.name,
        flow=flow,
        state_id=str(state.id),
        state_name=state.name or "Pending",
        since=state.timestamp,
        infrastructure_pid=run.infrastructure_pid or None,
        deployment_id=str(run.deployment_id) if run.deployment_id else None,
    )


def _started(run: FlowRun, *, fresh: bool) -> StartedRun:
    state = run.state.name if run.state is not None else "?"
    return StartedRun(str(run.id), run.name, state or "?", fresh)
