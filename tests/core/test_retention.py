"""Retention planner: table-driven rules and the safety invariants as Hypothesis properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from previews.core.retention import (
    ActionKind,
    Backend,
    ImageVersion,
    Plan,
    PrState,
    PrStatus,
    Reason,
    RetentionRules,
    Verdict,
    plan_retention,
)
from previews.core.tags import is_protected, parse_pr_tag
from previews.errors import ValidationError

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
OPEN = PrStatus(PrState.OPEN)


def closed(hours_ago: float) -> PrStatus:
    return PrStatus(PrState.CLOSED, NOW - timedelta(hours=hours_ago))


def digest(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def sha(n: int) -> str:
    return f"{n:07x}abcdef"[:40] if n else "0000000"


def ago(**kwargs: float) -> datetime:
    return NOW - timedelta(**kwargs)


def decision(plan: Plan, tag: str) -> tuple[Verdict, Reason]:
    found = [d for d in plan.decisions if d.tag == tag]
    assert len(found) == 1
    return found[0].verdict, found[0].reason


@pytest.mark.parametrize(
    ("tag", "created", "state", "expected"),
    [
        ("latest", ago(days=400), closed(1000), (Verdict.KEEP, Reason.PROTECTED)),
        ("master-abc", ago(days=400), None, (Verdict.KEEP, Reason.PROTECTED)),
        ("feature-x", ago(days=400), None, (Verdict.KEEP, Reason.NOT_PR_TAG)),
        ("v1.2.3", ago(days=400), None, (Verdict.KEEP, Reason.PROTECTED)),
        ("pr-1", ago(days=400), closed(1000), (Verdict.KEEP, Reason.NOT_PR_TAG)),
        ("pr-1-abcdef0-extra", ago(days=400), closed(1000), (Verdict.KEEP, Reason.NOT_PR_TAG)),
        ("pr-1-abcdef0", ago(hours=1), closed(25), (Verdict.DELETE, Reason.CLOSED_PAST_GRACE)),
        ("pr-1-abcdef0", ago(hours=1), closed(23), (Verdict.KEEP, Reason.CLOSED_IN_GRACE)),
        ("pr-1-abcdef0", ago(hours=1), PrStatus(PrState.CLOSED), (Verdict.KEEP, Reason.CLOSED_IN_GRACE)),
        ("pr-1-abcdef0", ago(days=29), None, (Verdict.KEEP, Reason.UNKNOWN_WITHIN_TTL)),
        ("pr-1-abcdef0", ago(days=31), None, (Verdict.DELETE, Reason.TTL_EXPIRED)),
        ("pr-1-abcdef0", ago(days=31), OPEN, (Verdict.DELETE, Reason.TTL_EXPIRED)),
        ("pr-1-abcdef0", None, None, (Verdict.KEEP, Reason.UNKNOWN_WITHIN_TTL)),
        ("pr-1-abcdef0", ago(days=5), OPEN, (Verdict.KEEP, Reason.OPEN_NEWEST)),
        ("pr-1-abcdef0", None, OPEN, (Verdict.KEEP, Reason.NO_CREATED_TIME)),
    ],
)
def test_single_tag_rules(
    tag: str, created: datetime | None, state: PrStatus | None, expected: tuple[Verdict, Reason]
) -> None:
    states = {1: state} if state else {}
    plan = plan_retention([ImageVersion(digest(1), (tag,), created)], states, now=NOW)
    assert decision(plan, tag) == expected
    assert bool(plan.actions) == (expected[0] is Verdict.DELETE)


def test_open_pr_keeps_newest_k_shas() -> None:
    versions = [ImageVersion(digest(i), (f"pr-7-{sha(i)}",), ago(hours=10 - i)) for i in range(1, 5)]
    plan = plan_retention(versions, {7: OPEN}, now=NOW, rules=RetentionRules(keep_per_open_pr=2))
    verdicts = {d.tag: d.verdict for d in plan.decisions}
    assert verdicts == {
        f"pr-7-{sha(1)}": Verdict.DELETE,
        f"pr-7-{sha(2)}": Verdict.DELETE,
        f"pr-7-{sha(3)}": Verdict.KEEP,
        f"pr-7-{sha(4)}": Verdict.KEEP,
    }
    assert {d.reason for d in plan.decisions if d.verdict is Verdict.DELETE} == {Reason.SUPERSEDED}


def test_protected_pattern_configured_is_never_touched() -> None:
    rules = RetentionRules(protected=("latest", "pr-9-*"))
    plan = plan_retention(
        [ImageVersion(digest(1), ("pr-9-abcdef0",), ago(days=90))], {9: closed(100)}, now=NOW, rules=rules
    )
    assert decision(plan, "pr-9-abcdef0") == (Verdict.KEEP, Reason.PROTECTED)
    assert plan.actions == ()


def test_in_flight_build_is_kept_even_past_ttl() -> None:
    plan = plan_retention(
        [ImageVersion(digest(1), ("pr-3-abcdef0",), ago(days=90))],
        {3: closed(100)},
        now=NOW,
        in_flight=[(3, "abcdef0")],
    )
    assert decision(plan, "pr-3-abcdef0") == (Verdict.KEEP, Reason.IN_FLIGHT)
    assert plan.actions == ()


def test_shared_digest_with_protected_tag_is_kept_when_untag_unsupported() -> None:
    plan = plan_retention(
        [ImageVersion(digest(1), ("pr-1-abcdef0", "latest"), ago(days=2))], {1: closed(48)}, now=NOW
    )
    found = next(d for d in plan.decisions if d.tag == "pr-1-abcdef0")
    assert (found.verdict, found.reason, found.wanted) == (
        Verdict.KEEP,
        Reason.SHARES_DIGEST_WITH_KEPT,
        Reason.CLOSED_PAST_GRACE,
    )
    assert plan.actions == ()


def test_shared_digest_with_kept_tag_is_untagged_when_supported() -> None:
    plan = plan_retention(
        [ImageVersion(digest(1), ("pr-1-abcdef0", "pr-2-abcdef0"), ago(days=2))],
        {1: closed(48), 2: OPEN},
        now=NOW,
        supports_untag=True,
    )
    assert decision(plan, "pr-1-abcdef0") == (Verdict.UNTAG, Reason.CLOSED_PAST_GRACE)
    assert decision(plan, "pr-2-abcdef0") == (Verdict.KEEP, Reason.OPEN_NEWEST)
    assert plan.actions[0].kind is ActionKind.UNTAG
    assert plan.actions[0].tags == ("pr-1-abcdef0",)
    assert plan.deleted_digests == frozenset()


def test_two_deletable_tags_on_one_digest_make_one_deletion() -> None:
    plan = plan_retention(
        [ImageVersion(digest(1), ("pr-1-abcdef0", "pr-2-1234567"), ago(days=2))],
        {1: closed(48), 2: closed(30)},
        now=NOW,
    )
    assert len(plan.actions) == 1
    assert plan.actions[0].tags == ("pr-1-abcdef0", "pr-2-1234567")


def test_index_children_go_with_parent_and_stay_with_kept_index() -> None:
    child_a, child_b, child_shared = digest(10), digest(11), digest(12)
    versions = [
        ImageVersion(digest(1), ("pr-1-abcdef0",), ago(days=2), children=(child_a, child_shared)),
        ImageVersion(digest(2), ("main-abc",), ago(days=2), children=(child_b, child_shared)),
        ImageVersion(child_a, (), ago(days=2)),
        ImageVersion(child_b, (), ago(days=2)),
        ImageVersion(child_shared, ("pr-5-1234567",), ago(days=2)),
    ]
    plan = plan_retention(versions, {1: closed(48), 5: closed(48)}, now=NOW)
    assert len(plan.actions) == 1
    action = plan.actions[0]
    assert action.digest == digest(1)
    assert [c.digest for c in action.children] == [child_a]
    assert decision(plan, "pr-5-1234567") == (Verdict.KEEP, Reason.CHILD_OF_KEPT)


def test_tagged_child_of_deleted_index_is_deleted_inside_parent_action() -> None:
    child = digest(10)
    versions = [
        ImageVersion(digest(1), ("pr-1-abcdef0",), ago(days=2), children=(child,)),
        ImageVersion(child, ("pr-1-abcdef0-amd64-x",), ago(days=2)),  # not a pr tag: kept
        ImageVersion(digest(3), ("pr-2-abcdef0",), ago(days=2), children=(digest(30),)),
        ImageVersion(digest(30), ("pr-2-1111111",), ago(days=2)),
    ]
    plan = plan_retention(versions, {1: closed(48), 2: closed(48)}, now=NOW)
    assert [(a.digest, [c.digest for c in a.children]) for a in plan.actions] == [
        (digest(1), []),
        (digest(3), [digest(30)]),
    ]
    assert plan.actions[1].tags == ("pr-2-1111111", "pr-2-abcdef0")
    assert decision(plan, "pr-1-abcdef0-amd64-x") == (Verdict.KEEP, Reason.NOT_PR_TAG)
    assert decision(plan, "pr-2-1111111") == (Verdict.DELETE, Reason.CLOSED_PAST_GRACE)


def test_untagged_top_level_manifest_protects_its_children() -> None:
    child = digest(10)
    versions = [
        ImageVersion(digest(1), (), ago(days=90), children=(child,)),
        ImageVersion(child, ("pr-1-abcdef0",), ago(days=90)),
    ]
    plan = plan_retention(versions, {1: closed(48)}, now=NOW)
    assert decision(plan, "pr-1-abcdef0") == (Verdict.KEEP, Reason.CHILD_OF_KEPT)
    assert plan.untagged_kept == 1


def test_ghcr_actions_use_version_ids_and_skip_versions_without_one() -> None:
    versions = [
        ImageVersion(digest(1), ("pr-1-abcdef0",), ago(days=2), children=(digest(10),), version_id=101),
        ImageVersion(digest(10), (), ago(days=2), version_id=110),
        ImageVersion(digest(2), ("pr-2-abcdef0",), ago(days=2)),
    ]
    plan = plan_retention(versions, {1: closed(48), 2: closed(48)}, now=NOW, backend=Backend.GHCR)
    assert [(a.kind, a.version_id, [c.version_id for c in a.children]) for a in plan.actions] == [
        (ActionKind.DELETE_VERSION, 101, [110])
    ]
    assert decision(plan, "pr-2-abcdef0") == (Verdict.KEEP, Reason.NO_VERSION_ID)


def _deleted_and_reachable_from_staying(plan: Plan, versions: list[ImageVersion]) -> set[str]:
    """Deleted digests that a manifest which stays still reaches, transitively (must be empty)."""
    by_digest = {v.digest: v for v in versions}
    deleted = plan.deleted_digests
    stack = [v.digest for v in versions if v.digest not in deleted]
    seen: set[str] = set()
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            known = by_digest.get(current)
            stack.extend(known.children if known else ())
    return seen & deleted


def test_ghcr_child_index_without_a_version_id_stays_with_its_children() -> None:
    """Regression (Hypothesis): the removed index's untagged child index has no version id, so it stays; its
    own children were still deleted inside the parent's action, breaking the staying index."""
    index, child_index, grandchild = digest(1), digest(2), digest(3)
    versions = [
        ImageVersion(index, ("pr-1-abcdef0",), ago(days=2), children=(child_index,), version_id=101),
        ImageVersion(child_index, (), ago(days=2), children=(grandchild,)),
        ImageVersion(grandchild, (), ago(days=2), version_id=103),
    ]
    plan = plan_retention(versions, {1: closed(48)}, now=NOW, backend=Backend.GHCR)
    assert [(a.version_id, a.children) for a in plan.actions] == [(101, ())]
    assert plan.deleted_digests == {index}
    assert not _deleted_and_reachable_from_staying(plan, versions)


@pytest.mark.parametrize("backend", list(Backend))
def test_removed_index_keeps_grandchildren_of_a_child_index_that_a_kept_index_shares(
    backend: Backend,
) -> None:
    removed, kept, shared_index, grandchild, own_child = digest(1), digest(2), digest(3), digest(4), digest(5)
    versions = [
        ImageVersion(removed, ("pr-1-abcdef0",), ago(days=2), (shared_index, own_child), version_id=1),
        ImageVersion(kept, ("main-1",), ago(days=2), (shared_index,), version_id=2),
        ImageVersion(shared_index, (), ago(days=2), (grandchild,), version_id=3),
        ImageVersion(grandchild, (), ago(days=2), version_id=4),
        ImageVersion(own_child, (), ago(days=2), version_id=5),
    ]
    plan = plan_retention(versions, {1: closed(48)}, now=NOW, backend=backend)
    assert [(a.digest, [c.digest for c in a.children]) for a in plan.actions] == [(removed, [own_child])]
    assert not _deleted_and_reachable_from_staying(plan, versions)


@st.composite
def shared_child_indexes(draw: st.DrawFn) -> list[ImageVersion]:
    """A removed index whose child index stays (kept by another tag, or without a GHCR version id), over a
    random tree of grandchildren that the removed index may also reference directly."""
    depth = draw(st.integers(1, 4))
    chain = [digest(100 + i) for i in range(depth)]
    extra = draw(st.lists(st.sampled_from(chain), max_size=2, unique=True))
    keeper = draw(st.sampled_from(["kept-tag", "no-version-id"]))
    versions = [
        ImageVersion(digest(1), ("pr-1-abcdef0",), ago(days=2), (chain[0], *extra), version_id=1),
        ImageVersion(
            chain[0],
            (),
            ago(days=2),
            tuple(chain[1:2]),
            version_id=None if keeper == "no-version-id" else 100,
        ),
        *(
            ImageVersion(chain[i], (), ago(days=2), tuple(chain[i + 1 : i + 2]), version_id=100 + i)
            for i in range(1, depth)
        ),
    ]
    if keeper == "kept-tag":
        versions.append(ImageVersion(digest(2), ("main-1",), ago(days=2), (chain[0],), version_id=2))
    return versions


@settings(max_examples=200, deadline=None)
@given(versions=shared_child_indexes(), backend=st.sampled_from(list(Backend)), untag=st.booleans())
def test_everything_a_staying_child_index_reaches_stays(
    versions: list[ImageVersion], backend: Backend, untag: bool
) -> None:
    plan = plan_retention(versions, {1: closed(48)}, now=NOW, backend=backend, supports_untag=untag)
    assert not _deleted_and_reachable_from_staying(plan, versions)
    assert decision(plan, "pr-1-abcdef0")[0] is Verdict.DELETE


def test_a_kept_index_whose_references_cannot_be_read_blocks_every_deletion() -> None:
    """Fail closed (issue 13): a kept index read that failed must not make its children look unreferenced."""
    child_a, child_b = digest(10), digest(11)
    versions = [
        ImageVersion(digest(1), ("pr-1-abcdef0",), ago(days=2), (child_a, child_b), version_id=1),
        ImageVersion(digest(2), ("latest",), ago(days=2), version_id=2, unreadable="registry answered 404"),
        ImageVersion(child_a, (), ago(days=2), version_id=10),
        ImageVersion(child_b, (), ago(days=2), version_id=11),
        ImageVersion(digest(3), ("pr-3-1234567",), ago(days=90), version_id=3),  # unrelated, past the TTL
    ]
    for backend, untag in [(Backend.OCI, True), (Backend.GHCR, False)]:
        plan = plan_retention(versions, {1: closed(48)}, now=NOW, backend=backend, supports_untag=untag)
        assert plan.actions == ()
        assert plan.deleted_digests == frozenset()
        assert decision(plan, "latest") == (Verdict.KEEP, Reason.REFERENCES_UNREADABLE)
        assert decision(plan, "pr-1-abcdef0") == (Verdict.KEEP, Reason.BLOCKED_BY_UNREADABLE)
        assert decision(plan, "pr-3-1234567") == (Verdict.KEEP, Reason.BLOCKED_BY_UNREADABLE)
        blocked = next(d for d in plan.decisions if d.tag == "pr-1-abcdef0")
        assert blocked.wanted is Reason.CLOSED_PAST_GRACE
        assert plan.unreadable == {digest(2): "registry answered 404"}
        assert plan.counts["keep: its references could not be read"] == 1


def test_an_unreadable_version_is_kept_even_when_its_tags_would_go() -> None:
    versions = [ImageVersion(digest(1), ("pr-1-abcdef0",), ago(days=90), unreadable="registry answered 400")]
    plan = plan_retention(versions, {1: closed(2000)}, now=NOW)
    assert decision(plan, "pr-1-abcdef0") == (Verdict.KEEP, Reason.REFERENCES_UNREADABLE)
    assert plan.decisions[0].wanted is Reason.TTL_EXPIRED
    assert plan.actions == ()


def test_a_tag_on_a_staying_digest_may_still_be_untagged_while_references_are_unknown() -> None:
    """Untagging deletes no manifest anyone references, so it stays allowed."""
    versions = [
        ImageVersion(digest(1), ("pr-1-abcdef0", "main-1"), ago(days=2)),
        ImageVersion(digest(2), ("stable",), ago(days=2), unreadable="registry answered 500"),
    ]
    plan = plan_retention(versions, {1: closed(48)}, now=NOW, supports_untag=True)
    assert [(a.kind, a.tags) for a in plan.actions] == [(ActionKind.UNTAG, ("pr-1-abcdef0",))]


def test_pr_state_callable_is_called_once_per_pr() -> None:
    calls: list[int] = []

    def lookup(number: int) -> PrStatus:
        calls.append(number)
        return closed(48)

    versions = [ImageVersion(digest(i), (f"pr-4-{sha(i)}",), ago(days=1)) for i in range(1, 6)]
    plan = plan_retention(versions, lookup, now=NOW)
    assert calls == [4]
    assert len(plan.actions) == 5


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"grace": timedelta(hours=-1)}, "cleanup_grace_hours"),
        ({"keep_per_open_pr": 0}, "cleanup_keep_per_open_pr"),
        ({"ttl": timedelta(0)}, "cleanup_ttl_days"),
    ],
)
def test_rules_are_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        RetentionRules(**kwargs)  # type: ignore[arg-type]


def test_naive_times_and_duplicate_tags_are_refused() -> None:
    with pytest.raises(ValidationError, match="now"):
        plan_retention([], {}, now=datetime(2026, 1, 1))
    with pytest.raises(ValidationError, match="twice"):
        plan_retention([ImageVersion(digest(1)), ImageVersion(digest(1))], {}, now=NOW)
    with pytest.raises(ValidationError, match="two digests"):
        plan_retention([ImageVersion(digest(1), ("a",)), ImageVersion(digest(2), ("a",))], {}, now=NOW)


# --- properties -------------------------------------------------------------------------------------------

TAGS = st.one_of(
    st.builds(
        lambda n, s: f"pr-{n}-{s}", st.integers(1, 6), st.sampled_from(["abcdef0", "1234567", "fedcba9"])
    ),
    st.sampled_from(["latest", "main-1", "v1.2.3", "stable", "pr-1", "feature-x", "pr-1-ABCDEF0"]),
)
STATES = st.one_of(
    st.just(PrStatus(PrState.OPEN)),
    st.just(PrStatus(PrState.UNKNOWN)),
    st.builds(lambda h: PrStatus(PrState.CLOSED, NOW - timedelta(hours=h)), st.integers(0, 2000)),
)


@st.composite
def registries(draw: st.DrawFn) -> list[ImageVersion]:
    count = draw(st.integers(1, 12))
    tags = draw(st.lists(TAGS, unique=True, max_size=20))
    owners = [draw(st.integers(0, count - 1)) for _ in tags]
    versions = []
    for i in range(count):
        later = list(range(i + 1, count))
        children = (
            tuple(digest(c) for c in draw(st.lists(st.sampled_from(later), unique=True, max_size=3)))
            if later
            else ()
        )
        hours = draw(st.one_of(st.none(), st.integers(0, 2000)))
        versions.append(
            ImageVersion(
                digest(i),
                tuple(t for t, o in zip(tags, owners, strict=True) if o == i),
                None if hours is None else NOW - timedelta(hours=hours),
                children,
                version_id=draw(st.one_of(st.none(), st.just(1000 + i))),
                unreadable=draw(st.sampled_from([None] * 9 + ["registry answered 404"])),
            )
        )
    return versions


@settings(max_examples=400, deadline=None)
@given(
    versions=registries(),
    states=st.dictionaries(st.integers(1, 6), STATES),
    backend=st.sampled_from(list(Backend)),
    supports_untag=st.booleans(),
    keep=st.integers(1, 3),
    in_flight=st.sets(st.tuples(st.integers(1, 6), st.sampled_from(["abcdef0", "1234567"]))),
)
def test_plan_never_breaks_a_kept_image(
    versions: list[ImageVersion],
    states: dict[int, PrStatus],
    backend: Backend,
    supports_untag: bool,
    keep: int,
    in_flight: set[tuple[int, str]],
) -> None:
    rules = RetentionRules(keep_per_open_pr=keep)
    plan = plan_retention(
        versions,
        states,
        now=NOW,
        rules=rules,
        in_flight=in_flight,
        backend=backend,
        supports_untag=supports_untag,
    )
    by_digest = {v.digest: v for v in versions}
    removed = plan.removed_tags
    deleted = plan.deleted_digests
    every_tag = {t for v in versions for t in v.tags}
    assert {d.tag for d in plan.decisions} == every_tag

    for tag in removed:
        parsed = parse_pr_tag(tag)
        assert parsed is not None, tag
        assert not is_protected(tag, rules.protected)
        assert (parsed.pr_number, parsed.sha) not in in_flight

    # A deleted digest carries only removed tags, and is not reachable from anything that stays.
    staying = set(by_digest) - deleted
    for digest_ in deleted:
        version = by_digest.get(digest_)
        if version is not None:
            assert set(version.tags) <= removed
    for digest_ in staying:
        for child in by_digest[digest_].children:
            assert child not in deleted, "a staying manifest lost a child"

    # Children are never deleted alone: each deleted child is inside the action of a deleted parent.
    for action in plan.actions:
        if action.kind is ActionKind.UNTAG:
            assert not supports_untag or action.digest not in deleted
            continue
        parents_of_root = [v for v in versions if action.digest in v.children]
        assert all(p.digest in deleted for p in parents_of_root)
        assert all(p.digest not in staying for p in parents_of_root)
        if backend is Backend.GHCR:
            assert action.version_id is not None
            assert all(c.version_id is not None for c in action.children)

    if not supports_untag:
        assert all(a.kind is not ActionKind.UNTAG for a in plan.actions)
    assert sum(plan.counts.values()) == len(plan.decisions)

    # Fail closed: a manifest whose references are unknown stays, and then no manifest is deleted at all.
    unreadable = {v.digest for v in versions if v.unreadable is not None}
    if unreadable:
        assert deleted == frozenset()
        assert not any(by_digest[d].tags and set(by_digest[d].tags) & removed for d in unreadable)


def test_plan_of_100k_versions_is_fast() -> None:
    import time

    versions = [
        ImageVersion(digest(i), (f"pr-{1 + i % 3000}-{i:07x}",), NOW - timedelta(hours=i % 1500))
        for i in range(100_000)
    ]
    states = {n: (OPEN if n % 3 else closed(n % 100)) for n in range(1, 3001)}
    start = time.perf_counter()
    plan = plan_retention(versions, states, now=NOW)
    assert time.perf_counter() - start < 20
    assert len(plan.decisions) == 100_000
