"""Cancel-in-progress decisions and the build fingerprint: pure tables."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from previews.core.fingerprint import FINGERPRINT_LABEL, REVISION_LABEL, build_fingerprint, is_published
from previews.core.supersede import RunRef, decide, run_tags, stale_after

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
A = "a" * 40
B = "b" * 40
C = "c" * 40
STALE = timedelta(hours=1)


def run(
    id_: str, minute: float, sha: str, *, pr: int = 7, repository: str = "Acme/App", stopping: bool = False
) -> RunRef:
    return RunRef(id_, f"run-{id_}", T0 + timedelta(minutes=minute), repository, pr, sha, stopping=stopping)


def verdict(me: RunRef, others: list[RunRef], now: datetime | None = None) -> tuple[str, str, list[str]]:
    decision = decide(me, others, now=now or T0 + timedelta(minutes=10), stale_after=STALE)
    because = decision.because_of.id if decision.because_of else ""
    return decision.verdict, because, [c.run.id for c in decision.cancel]


@pytest.mark.parametrize(
    ("me", "others", "expected"),
    [
        # alone
        (run("m", 5, B), [], ("proceed", "", [])),
        # an older run at another SHA is cancelled
        (run("m", 5, B), [run("o", 1, A)], ("proceed", "", ["o"])),
        # several older runs at other SHAs, oldest first
        (run("m", 5, C), [run("o2", 2, B), run("o1", 1, A)], ("proceed", "", ["o1", "o2"])),
        # an older run at the same SHA: this one is the duplicate
        (run("m", 5, A), [run("o", 1, A)], ("duplicate", "o", [])),
        # the same SHA given short by the UI form counts as the same commit
        (run("m", 5, A[:9]), [run("o", 1, A)], ("duplicate", "o", [])),
        (run("m", 5, A), [run("o", 1, A[:7].upper())], ("duplicate", "o", [])),
        # duplicate of the older same-SHA run, and still cancels an even older other SHA
        (run("m", 5, B), [run("o", 3, B), run("x", 1, A)], ("duplicate", "o", ["x"])),
        # a newer run at another SHA exists: this one started late and stops
        (run("m", 5, A), [run("n", 6, B)], ("superseded", "n", [])),
        # the newest of several newer runs is named
        # ... and the runs it outranks are cancelled now, not when it starts (issue 16: a burst of pushes)
        (run("m", 5, A), [run("n1", 6, B), run("n2", 7, C)], ("superseded", "n2", ["n1"])),
        (run("m", 5, B), [run("o", 1, A), run("n", 6, C)], ("superseded", "n", ["o"])),
        # an older run at the newest run's SHA is left alone: the newest will be its duplicate
        (run("m", 5, B), [run("o", 1, C), run("n", 6, C)], ("superseded", "n", [])),
        # a newer run at the same SHA: it will be the duplicate, not us
        (run("m", 5, A), [run("n", 6, A)], ("proceed", "", [])),
        # other PRs and other repositories are untouched
        (run("m", 5, B), [run("o", 1, A, pr=8)], ("proceed", "", [])),
        (run("m", 5, B), [run("o", 1, A, repository="Acme/Other")], ("proceed", "", [])),
        (run("m", 5, B), [run("n", 6, C, pr=8)], ("proceed", "", [])),
        # the repository compares case-insensitively
        (run("m", 5, B), [run("o", 1, A, repository="acme/app")], ("proceed", "", ["o"])),
        # a run already being stopped (Cancelling) counts for nothing: not cancelled again, no duplicate,
        # and a newer one that is stopping does not stop this one
        (run("m", 5, B), [run("o", 1, A, stopping=True)], ("proceed", "", [])),
        (run("m", 5, A), [run("o", 1, A, stopping=True)], ("proceed", "", [])),
        (run("m", 5, A), [run("n", 6, B, stopping=True)], ("proceed", "", [])),
        # itself in the list is ignored
        (run("m", 5, B), [run("m", 5, B)], ("proceed", "", [])),
        # same created time: the id breaks the tie, both sides agree
        (run("b", 5, B), [run("a", 5, A)], ("proceed", "", ["a"])),
        (run("a", 5, A), [run("b", 5, B)], ("superseded", "b", [])),
        (run("b", 5, A), [run("a", 5, A)], ("duplicate", "a", [])),
        (run("a", 5, A), [run("b", 5, A)], ("proceed", "", [])),
    ],
)
def test_decide(me: RunRef, others: list[RunRef], expected: tuple[str, str, list[str]]) -> None:
    assert verdict(me, others) == expected


@pytest.mark.parametrize(
    ("me", "others", "head", "expected"),
    [
        # issue 13 item 4: a late run for an old commit (created after the head's run) cancels nothing at
        # the head; the head's run is not superseded by it
        (run("late", 6, A), [run("h", 5, B)], B, ("proceed", "", [])),
        (run("h", 5, B), [run("late", 6, A)], B, ("proceed", "", [])),
        # the head's run still cancels an older run at an old commit, and a short head SHA counts
        (run("h", 5, B[:7]), [run("o", 1, A)], B, ("proceed", "", ["o"])),
        # a run at an old commit is superseded by a newer run at the head, and cancels other old commits
        (run("m", 5, A), [run("h", 6, B)], B, ("superseded", "h", [])),
        (run("m", 5, A), [run("o", 1, C), run("h", 2, B)], B, ("proceed", "", ["o"])),
        # head unknown (no GitHub): creation time decides, as before
        (run("late", 6, A), [run("h", 5, B)], None, ("proceed", "", ["h"])),
        (run("h", 5, B), [run("late", 6, A)], None, ("superseded", "late", [])),
    ],
)
def test_the_prs_real_head_outranks_creation_time(
    me: RunRef, others: list[RunRef], head: str | None, expected: tuple[str, str, list[str]]
) -> None:
    decision = decide(me, others, now=T0 + timedelta(minutes=10), stale_after=STALE, head=head)
    because = decision.because_of.id if decision.because_of else ""
    assert (decision.verdict, because, [c.run.id for c in decision.cancel]) == expected


def test_a_stale_same_sha_run_does_not_block_a_rebuild() -> None:
    me = run("m", 200, A)
    old = run("o", 1, A)
    assert verdict(me, [old], now=T0 + timedelta(minutes=200)) == ("proceed", "", [])
    assert verdict(me, [old], now=T0 + timedelta(minutes=50)) == ("duplicate", "o", [])


def test_messages_name_the_newer_sha_and_the_duplicate() -> None:
    decision = decide(run("m", 5, B), [run("o", 1, A)], now=T0, stale_after=STALE)
    assert [c.message for c in decision.cancel] == [f"superseded by {B}"]
    dup = decide(run("m", 5, A), [run("o", 1, A)], now=T0, stale_after=STALE)
    assert dup.reason == f"skipped: duplicate of run run-o already building {A}"
    late = decide(run("m", 5, A), [run("n", 6, B)], now=T0, stale_after=STALE)
    assert late.reason == f"superseded by {B}"


def test_both_sides_of_a_pair_agree() -> None:
    """Whatever the order the two runs check in, exactly one of them builds."""
    for first, second in [(run("x", 1, A), run("y", 1, B)), (run("x", 1, A), run("y", 1, A))]:
        verdicts = {
            verdict(first, [second])[0],
            verdict(second, [first])[0],
        }
        assert "proceed" in verdicts
        assert verdicts - {"proceed"} <= {"duplicate", "superseded"}
        assert len(verdicts) == 2


BASE = {
    "dockerfile": "Dockerfile",
    "context": "..",
    "target": None,
    "build_args": {"A": "1", "B": "2"},
    "siblings": {"common=acme/common@main": A},
}


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({}, True),
        ({"build_args": {"B": "2", "A": "1"}}, True),  # order does not matter
        ({"target": ""}, True),  # no target either way
        ({"dockerfile": "Dockerfile.prod"}, False),
        ({"context": "."}, False),
        ({"target": "final"}, False),
        ({"build_args": {"A": "1", "B": "3"}}, False),
        ({"build_args": {"A": "1"}}, False),
        ({"siblings": {"common=acme/common@main": B}}, False),  # the sibling's branch moved
        ({"siblings": {}}, False),
    ],
)
def test_fingerprint_changes_with_every_build_setting(change: dict[str, object], same: bool) -> None:
    base = build_fingerprint(**BASE)  # type: ignore[arg-type]
    other = build_fingerprint(**{**BASE, **change})  # type: ignore[arg-type]
    assert base.startswith("sha256:")
    assert (base == other) is same


def test_is_published_needs_revision_and_fingerprint() -> None:
    fp = build_fingerprint(**BASE)  # type: ignore[arg-type]
    assert is_published({REVISION_LABEL: A, FINGERPRINT_LABEL: fp}, sha=A, fingerprint=fp)
    assert not is_published({REVISION_LABEL: B, FINGERPRINT_LABEL: fp}, sha=A, fingerprint=fp)
    assert not is_published({REVISION_LABEL: A, FINGERPRINT_LABEL: "sha256:0"}, sha=A, fingerprint=fp)
    assert not is_published({REVISION_LABEL: A}, sha=A, fingerprint=fp)


def test_stale_after_is_build_plus_push_plus_ten_minutes() -> None:
    assert stale_after(1800, 900) == timedelta(seconds=3300)
    assert stale_after(60, 30) == timedelta(seconds=690)


def test_run_tags_name_the_pr_lower_cased() -> None:
    assert run_tags("Acme/App", 7) == ["previews", "repo:acme/app", "pr:7"]


def received_at(ref: RunRef, minute: float | None) -> RunRef:
    """``ref`` with the time its delivery was accepted (None: a run no delivery started)."""
    return replace(ref, received=None if minute is None else T0 + timedelta(minutes=minute))


def test_delivery_order_outranks_creation_order() -> None:
    """A burst: the old push's run was created last; the later-received push still wins, both ways round."""
    final = received_at(run("final", 1, B), 0.2)  # created first, received second
    old = received_at(run("old", 2, A), 0.1)  # created second, received first
    assert verdict(final, [old]) == ("proceed", "", ["old"])
    assert verdict(old, [final]) == ("superseded", "final", [])
    decision = decide(old, [final], now=T0 + timedelta(minutes=10), stale_after=STALE)
    assert decision.reason == f"superseded by {B}"


def test_a_run_without_received_is_placed_by_its_creation_time() -> None:
    """A UI rerun created after a push's delivery is newer; one created before it is older (wall clock)."""
    push = received_at(run("push", 9, A), 3)
    assert verdict(run("rerun", 5, B), [push]) == ("proceed", "", ["push"])
    assert verdict(run("rerun", 2, B), [push]) == ("superseded", "push", [])
    # neither has it: creation time, as before
    assert verdict(run("m", 5, B), [received_at(run("o", 1, A), None)]) == ("proceed", "", ["o"])


def test_a_same_sha_run_is_judged_stale_by_its_creation_time_not_its_delivery() -> None:
    """A replayed old delivery keeps its old ``received``; its run is young and still makes a duplicate."""
    first = received_at(run("first", 9, A), -600)
    assert verdict(run("m", 10, A), [first], now=T0 + timedelta(minutes=11))[0] == "duplicate"
