"""Stranded runs: a deployment's flow run left Pending by a worker that died before it created the container.

A Prefect worker (and a served runner) claims a Scheduled run by moving it to Pending, then creates and starts
the container (the process), and only then records the container as the run's ``infrastructure_pid``; the
flow inside the container moves the run to Running seconds later. A worker killed between the Pending and the
container leaves the run Pending for ever: Prefect 3.9 recovers no such run, no other worker picks up a Pending
run, and reconcile counts it as in flight, so it never starts a replacement either.

The rule (pure; the reconcile flow reads the runs and acts): a run of a deployment that has been Pending
(Prefect's ``Pending`` or the worker's ``Submitting`` sub-state) for longer than the threshold and has no
``infrastructure_pid`` is stranded; it goes back to Scheduled (``AwaitingRetry``), keeping its id, parameters
and creation time (supersede orders runs by their ``received`` parameter, else creation time), so any worker
picks it up again. A Pending run with an ``infrastructure_pid`` is a slow start and is never touched; a run
without a deployment (an in-process ``previews build``) has no worker that could pick it up, so it is left
alone too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

RESCHEDULED_STATE = "AwaitingRetry"


@dataclass(frozen=True, slots=True)
class PendingRun:
    """A flow run in a Pending state, as Prefect has it now."""

    id: str
    name: str
    flow: str
    state_id: str
    state_name: str
    since: datetime
    infrastructure_pid: str | None
    deployment_id: str | None


@dataclass(frozen=True, slots=True)
class Stranded:
    """A Pending run to reschedule, how long it has waited, and the message its Scheduled state carries."""

    run: PendingRun
    waited_seconds: int
    message: str

    def to_json(self) -> dict[str, object]:
        """The report's row for this run."""
        return {
            "run_id": self.run.id,
            "run_name": self.run.name,
            "flow": self.run.flow,
            "pending_state": self.run.state_name,
            "waited_seconds": self.waited_seconds,
            "message": self.message,
        }


def stranded_message(waited_seconds: int) -> str:
    """The message of the Scheduled state a stranded run goes back to."""
    return (
        f"Pending for {waited_seconds} s with no container: its worker died before starting it; "
        "rescheduled by reconcile"
    )


def find_stranded(runs: Iterable[PendingRun], *, now: datetime, threshold: timedelta) -> list[Stranded]:
    """The runs of ``runs`` that are stranded at ``now``: Pending longer than ``threshold`` (strictly), with
    no infrastructure and a deployment a worker can pick them up from; oldest first."""
    found: list[Stranded] = []
    for run in runs:
        waited = now - run.since
        if run.infrastructure_pid or run.deployment_id is None or waited <= threshold:
            continue
        seconds = int(waited.total_seconds())
        found.append(Stranded(run, seconds, stranded_message(seconds)))
    return sorted(found, key=lambda s: (s.run.since, s.run.id))
