"""The reconcile decisions: per open PR head, and per closed PR that still has a preview."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from previews.core.reconcile import (
    DUPLICATE_SKIP,
    FinishedRun,
    OpenPull,
    OurStatus,
    PreviewMark,
    RunIndex,
    TeardownMark,
    decide_closed,
    decide_pull,
    delivery_id,
    needs_status,
    parse_repositories,
    teardown_candidates,
)
from previews.core.supersede import RunRef, decide
from previews.errors import ValidationError

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
STALE = timedelta(minutes=30)
SHA = "a" * 40
PULL = OpenPull("Acme/App", 7, SHA, "b" * 40, fork=False, labels=("x",))


def run(sha: str = SHA, *, pr: int = 7, repository: str = "acme/app", stopping: bool = False) -> RunRef:
    return RunRef("id-1", f"pr-{pr}-{sha[:7]}", NOW, repository, pr, sha, stopping=stopping)


def status(state: str, minutes_ago: float = 1) -> OurStatus:
    return OurStatus(11, state, NOW - timedelta(minutes=minutes_ago))


def test_delivery_id_follows_the_convention() -> None:
    expected = "reconcile:" + hashlib.sha256(f"Acme/App#7@{SHA}".encode()).hexdigest()[:16]
    assert delivery_id("Acme/App", 7, SHA) == expected
    assert delivery_id("Acme/App", 7, "c" * 40) != expected


@pytest.mark.parametrize(
    ("state", "in_flight", "kind", "starts"),
    [
        (None, [], "missing", True),
        (status("success"), [], "up-to-date", False),
        (status("failure"), [], "up-to-date", False),
        (status("error"), [], "up-to-date", False),
        (None, [run()], "up-to-date", False),
        (None, [run(SHA[:12])], "up-to-date", False),  # a short SHA from the UI form
        (status("pending", 45), [run()], "up-to-date", False),
        (status("pending", 5), [], "waiting", False),
        (status("pending", 45), [], "stale-pending", True),
        (None, [run("c" * 40)], "missing", True),  # another commit's run does not count
        (None, [run(pr=8)], "missing", True),
        (None, [run(repository="acme/other")], "missing", True),
        (None, [run(stopping=True)], "missing", True),  # a run being cancelled builds nothing
    ],
)
def test_decide_pull(state: OurStatus | None, in_flight: list[RunRef], kind: str, starts: bool) -> None:
    runs = RunIndex(in_flight)
    decision = decide_pull(PULL, state, runs, now=NOW, stale=STALE)
    assert decision.kind == kind, decision.reason
    assert (decision.start == "preview-image") is starts
    assert decision.reason
    assert needs_status(PULL, runs) is not decision.reason.endswith("is in flight for this commit")


@pytest.mark.parametrize(
    ("state", "message", "settled"),
    [
        ("COMPLETED", "pushed x@sha256:1", True),
        ("COMPLETED", "skipped: only docs changed", True),
        ("FAILED", "docker build failed", True),
        ("COMPLETED", DUPLICATE_SKIP + "pr-7-aaaaaaa already building " + SHA, False),
        ("CRASHED", "", False),
        ("CANCELLED", "superseded by " + "c" * 40, False),
    ],
)
def test_a_run_that_ended_having_posted_a_terminal_status_settles_the_head(
    state: str, message: str, settled: bool
) -> None:
    runs = RunIndex(finished=[FinishedRun(run(SHA[:7]), state, message)])
    decision = decide_pull(PULL, None, runs, now=NOW, stale=STALE)
    assert needs_status(PULL, runs) is not settled
    assert (decision.kind == "up-to-date") is settled
    if settled:
        assert decision.reason == f"run pr-7-aaaaaaa ended {state.lower()} for this commit"
    other = RunIndex(finished=[FinishedRun(run("c" * 40), state, message)])
    assert needs_status(PULL, other)


def test_the_duplicate_skip_is_the_one_supersede_gives() -> None:
    older = RunRef("1", "pr-7-aaaaaaa", NOW - timedelta(minutes=1), "acme/app", 7, SHA)
    newer = RunRef("2", "pr-7-aaaaaaa", NOW, "acme/app", 7, SHA)
    assert decide(newer, [older], now=NOW, stale_after=STALE).reason.startswith(DUPLICATE_SKIP)


def test_a_started_run_carries_the_events_parameters_and_a_key_per_window() -> None:
    decision = decide_pull(PULL, None, RunIndex(), now=NOW, stale=STALE)
    assert decision.parameters == {
        "repository": "Acme/App",
        "pr_number": 7,
        "head_sha": SHA,
        "base_sha": "b" * 40,
        "fork": False,
        "labels": ["x"],
        "delivery": delivery_id("Acme/App", 7, SHA),
    }
    same_window = decide_pull(PULL, None, RunIndex(), now=NOW + timedelta(minutes=1), stale=STALE)
    next_window = decide_pull(PULL, None, RunIndex(), now=NOW + STALE, stale=STALE)
    assert same_window.idempotency_key == decision.idempotency_key
    assert next_window.idempotency_key != decision.idempotency_key
    assert decision.idempotency_key is not None
    assert decision.idempotency_key.startswith(delivery_id("Acme/App", 7, SHA) + ":")


def test_teardown_candidates_are_closed_previews_without_a_later_teardown() -> None:
    t = NOW - timedelta(hours=2)
    previews = [
        PreviewMark("acme/app", 1, t),  # closed, never torn down
        PreviewMark("Acme/App", 2, t),  # torn down after
        PreviewMark("acme/app", 3, t),  # torn down, then previewed again (reopened): needs another
        PreviewMark("acme/app", 3, t + timedelta(hours=1)),
        PreviewMark("acme/app", 4, t),  # still open
        PreviewMark("acme/other", 5, t),  # another repository
    ]
    teardowns = [
        TeardownMark("acme/app", 2, t + timedelta(minutes=5)),
        TeardownMark("acme/app", 3, t + timedelta(minutes=5)),
        TeardownMark("acme/other", 1, t + timedelta(minutes=5)),
    ]
    assert teardown_candidates("Acme/App", [4], previews, teardowns) == [1, 3]


@pytest.mark.parametrize(
    ("state", "kind"), [("closed", "teardown"), (None, "teardown"), ("open", "up-to-date")]
)
def test_decide_closed(state: str | None, kind: str) -> None:
    decision = decide_closed("acme/app", 3, state, now=NOW, stale=STALE)
    assert decision.kind == kind
    if kind == "teardown":
        assert decision.start == "preview-teardown"
        assert decision.parameters is not None
        assert decision.parameters["delivery"].startswith("reconcile:")
        assert set(decision.parameters) == {"repository", "pr_number", "delivery"}


def test_parse_repositories() -> None:
    assert parse_repositories(" Acme/App, acme/app ,acme/lib,", field="F") == ("Acme/App", "acme/lib")
    assert parse_repositories("", field="F") == ()
    with pytest.raises(ValidationError, match=r"^F: "):
        parse_repositories("acme/app,not a repo", field="F")
