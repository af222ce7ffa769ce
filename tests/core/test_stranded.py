"""The stranded-run rule: Pending too long with no container and a deployment; nothing else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from previews.core.stranded import PendingRun, find_stranded, stranded_message

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
THRESHOLD = timedelta(seconds=300)


def pending(
    run_id: str, *, waited: float, pid: str | None = None, deployment: str | None = "dep-1"
) -> PendingRun:
    return PendingRun(
        id=run_id,
        name=f"run-{run_id}",
        flow="preview-image",
        state_id=f"state-{run_id}",
        state_name="Pending",
        since=NOW - timedelta(seconds=waited),
        infrastructure_pid=pid,
        deployment_id=deployment,
    )


@pytest.mark.parametrize(
    ("run", "stranded"),
    [
        (pending("a", waited=301), True),
        (pending("b", waited=300), False),  # exactly the threshold: not yet
        (pending("c", waited=5), False),  # a worker between Pending and its container
        (pending("d", waited=3600, pid="host:0123abcd"), False),  # a container exists: a slow start
        (pending("e", waited=3600, pid=""), True),  # Prefect's empty pid is no container
        (pending("f", waited=3600, deployment=None), False),  # no worker could pick it up again
    ],
    ids=["over", "at-threshold", "fresh", "with-container", "empty-pid", "no-deployment"],
)
def test_only_a_run_pending_too_long_without_a_container_is_stranded(run: PendingRun, stranded: bool) -> None:
    found = find_stranded([run], now=NOW, threshold=THRESHOLD)
    assert [s.run for s in found] == ([run] if stranded else [])


def test_stranded_runs_come_oldest_first_with_how_long_they_waited() -> None:
    runs = [pending("young", waited=400), pending("old", waited=4000), pending("mid", waited=1000.9)]
    found = find_stranded(runs, now=NOW, threshold=THRESHOLD)
    assert [(s.run.id, s.waited_seconds) for s in found] == [("old", 4000), ("mid", 1000), ("young", 400)]
    assert found[1].message == stranded_message(1000)
    assert found[1].to_json() == {
        "run_id": "mid",
        "run_name": "run-mid",
        "flow": "preview-image",
        "pending_state": "Pending",
        "waited_seconds": 1000,
        "message": found[1].message,
    }


def test_the_message_says_why_the_run_was_rescheduled() -> None:
    assert stranded_message(312) == (
        "Pending for 312 s with no container: its worker died before starting it; rescheduled by reconcile"
    )
