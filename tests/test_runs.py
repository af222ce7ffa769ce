"""The Prefect-run adapter against the real Prefect server: one definition of "in flight", cancel, errors."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelling, Completed, Pending, Running, Scheduled, State

from previews.core.stranded import PendingRun, Stranded, stranded_message
from previews.errors import TransientPrefectError
from previews.runs import PrefectRuns

pytestmark = pytest.mark.usefixtures("prefect_server")
A, B = "a" * 40, "b" * 40


@flow(name="runs-adapter-test")
def _stand_in(repository: str, pr_number: int, head_sha: str, received: str | None = None) -> None:
    """Only its name and parameters matter."""


@pytest.fixture
def runs() -> Iterator[PrefectRuns]:
    with PrefectRuns(get_client(sync_client=True)) as adapter:
        yield adapter


def start(
    pr: int, sha: str, state: State[None], repository: str = "acme/app", received: str | None = None
) -> uuid.UUID:
    params = {"repository": repository, "pr_number": pr, "head_sha": sha}
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(
            _stand_in, parameters={**params, "received": received} if received else params
        )
        client.set_flow_run_state(run.id, state, force=True)
        return run.id


def state_of(run_id: uuid.UUID) -> StateType | None:
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    return state.type if state else None


def test_in_flight_is_every_unfinished_run_and_marks_the_stopping_ones(runs: PrefectRuns) -> None:
    repo = f"acme/runs-{uuid.uuid4().hex[:6]}"
    running = start(1, A, Running(), repo)
    stopping = start(2, A, Cancelling(), repo)
    queued = start(3, A, Scheduled(), repo)
    start(4, A, Completed(), repo)
    found = {r.id: r for r in runs.in_flight(flow_name="runs-adapter-test") if r.repository == repo}
    assert set(found) == {str(running), str(stopping), str(queued)}
    assert [found[str(i)].stopping for i in (running, stopping, queued)] == [False, True, False]


def test_supersede_cancels_the_older_run_and_a_queued_one_at_once(runs: PrefectRuns) -> None:
    repo = f"acme/runs-{uuid.uuid4().hex[:6]}"
    older_running = start(7, A, Running(), repo)
    me = start(7, B, Running(), repo)
    done = runs.supersede(me, stale_after=timedelta(hours=1), tags=["pr:7"])
    assert done.decision.verdict == "proceed"
    assert [c.run.id for c in done.cancelled] == [str(older_running)]
    assert state_of(older_running) == StateType.CANCELLING
    with get_client(sync_client=True) as client:
        assert "pr:7" in client.read_flow_run(me).tags

    queued_me = start(8, B, Running(), repo)
    queued_old = start(8, A, Scheduled(), repo)  # created later, but Scheduled and at another SHA
    late = runs.supersede(queued_me, stale_after=timedelta(hours=1), apply=False)
    assert late.decision.verdict == "superseded"
    assert late.cancelled == ()
    assert state_of(queued_old) == StateType.SCHEDULED


def test_runs_are_ordered_by_their_received_parameter_else_creation_time(runs: PrefectRuns) -> None:
    """The old push's run was created last but its delivery came first: the final head's run cancels it."""
    repo = f"acme/runs-{uuid.uuid4().hex[:6]}"
    final = start(10, B, Running(), repo, received="2026-12-07T15:37:44.100000Z")
    old = start(10, A, Scheduled(), repo, received="2026-12-07T15:37:44.000000Z")
    found = {r.id: r for r in runs.in_flight(flow_name="runs-adapter-test") if r.repository == repo}
    assert found[str(old)].received is not None
    assert found[str(old)].order < found[str(final)].order
    done = runs.supersede(final, stale_after=timedelta(hours=1))
    assert done.decision.verdict == "proceed"
    assert [c.run.id for c in done.cancelled] == [str(old)]
    assert state_of(old) == StateType.CANCELLED
    # an invalid ``received`` (the run will fail at validate) counts as absent: creation time places it
    bad = start(11, A, Scheduled(), repo, received="yesterday")
    (ref,) = [r for r in runs.in_flight(flow_name="runs-adapter-test") if r.id == str(bad)]
    assert ref.received is None
    assert ref.order[0] == ref.created


def test_a_run_that_is_already_stopping_is_superseded(runs: PrefectRuns) -> None:
    me = start(9, A, Cancelling(message="superseded by " + B))
    done = runs.supersede(me, stale_after=timedelta(hours=1))
    assert (done.decision.verdict, done.decision.reason) == ("superseded", "superseded by " + B)


def test_an_unreachable_api_is_a_transient_error() -> None:
    from prefect.client.orchestration import SyncPrefectClient

    client = SyncPrefectClient("http://127.0.0.1:9/api", httpx_settings={"timeout": 2})
    with pytest.raises(TransientPrefectError), PrefectRuns(client) as adapter:
        adapter.in_flight(flow_name="runs-adapter-test")


def test_in_flight_reads_every_page() -> None:
    """Issue 13 item 9: more in-flight runs than one page holds are all found."""
    repository = f"acme/paged-{uuid.uuid4().hex[:6]}"
    started = [start(n, A, Scheduled(), repository=repository) for n in range(1, 8)]
    try:
        with PrefectRuns(get_client(sync_client=True), page_size=3) as paged:
            found = [r for r in paged.in_flight(flow_name="runs-adapter-test") if r.repository == repository]
        assert sorted(r.pr_number for r in found) == list(range(1, 8))
    finally:
        with get_client(sync_client=True) as client:
            for run_id in started:
                client.set_flow_run_state(run_id, Completed(), force=True)


def pending_now(runs: PrefectRuns, run_id: uuid.UUID) -> PendingRun:
    (found,) = [p for p in runs.pending(["runs-adapter-test"]) if p.id == str(run_id)]
    return found


def test_pending_reads_the_state_and_the_container_of_each_pending_run(runs: PrefectRuns) -> None:
    repo = f"acme/pending-{uuid.uuid4().hex[:6]}"
    bare = start(1, A, Scheduled(), repo)
    with_pid = start(2, A, Scheduled(), repo)
    running = start(3, A, Running(), repo)
    with get_client(sync_client=True) as client:
        for run_id in (bare, with_pid):
            assert client.set_flow_run_state(run_id, Pending()).status.value == "ACCEPT"  # as a worker does
        client.update_flow_run(with_pid, infrastructure_pid="host:0123abcd")
        state = client.read_flow_run(bare).state
    assert state is not None
    found = pending_now(runs, bare)
    assert (found.flow, found.state_id, found.state_name, found.since) == (
        "runs-adapter-test",
        str(state.id),
        "Pending",
        state.timestamp,
    )
    assert found.infrastructure_pid is None
    assert found.deployment_id is None  # created without a deployment
    assert pending_now(runs, with_pid).infrastructure_pid == "host:0123abcd"
    assert str(running) not in {p.id for p in runs.pending(["runs-adapter-test"])}


def test_reschedule_moves_a_stranded_run_back_to_scheduled_keeping_id_and_creation(runs: PrefectRuns) -> None:
    run_id = start(4, A, Pending(), f"acme/resched-{uuid.uuid4().hex[:6]}")
    stranded = Stranded(pending_now(runs, run_id), 312, stranded_message(312))
    with get_client(sync_client=True) as client:
        before = client.read_flow_run(run_id)
        done = runs.reschedule(stranded)
        after = client.read_flow_run(run_id)
    assert done.done, done.answer
    assert done.answer == "Pending -> AwaitingRetry ACCEPT"
    assert after.state is not None
    assert (after.state.type, after.state.name, after.state.message) == (
        StateType.SCHEDULED,
        "AwaitingRetry",
        "Pending for 312 s with no container: its worker died before starting it; rescheduled by reconcile",
    )
    assert (after.id, after.created, after.parameters) == (before.id, before.created, before.parameters)


@pytest.mark.parametrize("moved", ["started", "container"])
def test_reschedule_leaves_a_run_that_moved_since_it_was_read(runs: PrefectRuns, moved: str) -> None:
    """Prefect's set-state takes no precondition: the adapter reads the run again and leaves it alone when its
    Pending state is not the one read (its container started) or a container was recorded meanwhile."""
    run_id = start(5, A, Pending(), f"acme/moved-{uuid.uuid4().hex[:6]}")
    stranded = Stranded(pending_now(runs, run_id), 400, stranded_message(400))
    with get_client(sync_client=True) as client:
        if moved == "started":
            client.set_flow_run_state(run_id, Running(), force=True)
        else:
            client.update_flow_run(run_id, infrastructure_pid="host:feedbeef")
        done = runs.reschedule(stranded)
        state = client.read_flow_run(run_id).state
    assert not done.done
    assert done.answer.startswith("left alone: it moved since it was read (now ")
    assert state is not None
    assert state.type == (StateType.RUNNING if moved == "started" else StateType.PENDING)


def test_a_rescheduled_stranded_run_superseded_ends_cancelled_with_the_reason(runs: PrefectRuns) -> None:
    repo = f"acme/resched-sup-{uuid.uuid4().hex[:6]}"
    old = start(6, A, Pending(), repo)
    assert runs.reschedule(Stranded(pending_now(runs, old), 400, stranded_message(400))).done
    me = start(6, B, Running(), repo)
    done = runs.supersede(me, stale_after=timedelta(hours=1))
    assert [(c.run.id, c.proposed, c.accepted) for c in done.cancelled] == [(str(old), "Cancelled", True)]
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(old).state
    assert state is not None
    assert state.type == StateType.CANCELLED
    assert state.message == done.cancelled[0].message
