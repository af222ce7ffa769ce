"""Retention planner: which ``pr-<N>-<sha>`` tags a cleanup may remove, and how, without breaking any image.

Pure: the registry listing, the PR states, the rules and ``now`` go in; a frozen :class:`Plan` comes out with a
decision and a reason for every tag and the backend actions that carry the deletions out.

Safety invariants (each one is a property test in ``tests/core/test_retention.py``):

- only tags matching ``pr-<N>-<sha>`` are ever candidates; a protected tag is never touched;
- a tag whose build is in flight is kept;
- a manifest is deleted only when every tag on it is deleted, and never while it is reachable from a manifest
  that stays (a kept tag, an untagged top-level manifest, or a kept index's children, transitively);
- fail closed: a manifest whose references could not be read (``unreadable``) stays, and while one does no
  manifest is deleted at all, since any of them could be its child; every such tag says why;
  a deletable tag on a manifest that stays is untagged where the backend can, otherwise kept with a reason;
- an index's children are deleted only inside their parent's action, after the parent, never alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from previews.core.tags import DEFAULT_PROTECTED, is_protected, parse_pr_tag
from previews.errors import ValidationError


class PrState(StrEnum):
    """What GitHub says about a pull request. ``UNKNOWN`` when it could not be read."""

    OPEN = "open"
    CLOSED = "closed"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class PrStatus:
    """A pull request's state; ``closed_at`` is when it closed (merged or not)."""

    state: PrState
    closed_at: datetime | None = None


UNKNOWN_PR = PrStatus(PrState.UNKNOWN)


@dataclass(frozen=True, slots=True)
class ImageVersion:
    """One manifest in the registry: its digest, the tags on it, when it was made, and its child manifests.

    ``version_id`` is the GitHub Packages numeric id (GHCR); ``children`` are the digests an index or manifest
    list references. ``unreadable`` says why the manifest could not be read: its children are unknown.
    """

    digest: str
    tags: tuple[str, ...] = ()
    created: datetime | None = None
    children: tuple[str, ...] = ()
    version_id: int | None = None
    unreadable: str | None = None


@dataclass(frozen=True, slots=True)
class RetentionRules:
    """The configurable rules. Defaults: 24 h grace after close, newest 1 SHA per open PR, 30 day TTL."""

    grace: timedelta = timedelta(hours=24)
    keep_per_open_pr: int = 1
    ttl: timedelta = timedelta(days=30)
    protected: tuple[str, ...] = DEFAULT_PROTECTED

    def __post_init__(self) -> None:
        if self.grace < timedelta(0):
            raise ValidationError("cleanup_grace_hours", "must not be negative")
        if self.keep_per_open_pr < 1:
            raise ValidationError("cleanup_keep_per_open_pr", "must be at least 1")
        if self.ttl <= timedelta(0):
            raise ValidationError("cleanup_ttl_days", "must be positive")


class Verdict(StrEnum):
    """What happens to one tag."""

    KEEP = "keep"
    DELETE = "delete"
    UNTAG = "untag"


class Reason(StrEnum):
    """Why a tag is kept or removed. The value is the text shown in reports."""

    NOT_PR_TAG = "not a pr-<N>-<sha> tag"
    PROTECTED = "protected tag"
    IN_FLIGHT = "build in flight"
    OPEN_NEWEST = "among the newest SHAs of an open PR"
    CLOSED_IN_GRACE = "PR closed within the grace period"
    UNKNOWN_WITHIN_TTL = "PR state unknown, younger than the TTL"
    NO_CREATED_TIME = "creation time unknown"
    SHARES_DIGEST_WITH_KEPT = "digest shared with a kept tag"
    CHILD_OF_KEPT = "manifest referenced by a kept index"
    REFERENCES_UNREADABLE = "its references could not be read"
    BLOCKED_BY_UNREADABLE = "a kept manifest's references could not be read"
    NO_VERSION_ID = "no package version id to delete"
    CLOSED_PAST_GRACE = "PR closed longer than the grace period"
    SUPERSEDED = "older SHA of an open PR"
    TTL_EXPIRED = "older than the TTL"


DELETE_REASONS = frozenset({Reason.CLOSED_PAST_GRACE, Reason.SUPERSEDED, Reason.TTL_EXPIRED})


class ActionKind(StrEnum):
    """A backend operation."""

    DELETE_MANIFEST = "delete-manifest"  # OCI: DELETE /v2/<name>/manifests/<digest>
    DELETE_VERSION = "delete-version"  # GitHub Packages: DELETE .../versions/<id>
    UNTAG = "untag"  # remove one tag, keep the manifest


class Backend(StrEnum):
    """How the registry deletes: by manifest digest (OCI) or by package version id (GHCR)."""

    OCI = "oci"
    GHCR = "ghcr"


@dataclass(frozen=True, slots=True)
class TagDecision:
    """The decision for one tag. ``wanted`` is the delete rule that matched when safety overrode it."""

    tag: str
    digest: str
    verdict: Verdict
    reason: Reason
    pr_number: int | None = None
    sha: str | None = None
    created: datetime | None = None
    wanted: Reason | None = None


@dataclass(frozen=True, slots=True)
class ChildManifest:
    """A child manifest deleted together with (after) its parent."""

    digest: str
    version_id: int | None = None


@dataclass(frozen=True, slots=True)
class Action:
    """One backend operation. For deletions, ``tags`` are every tag that disappears with the manifest."""

    kind: ActionKind
    digest: str
    tags: tuple[str, ...]
    version_id: int | None = None
    children: tuple[ChildManifest, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    """Every tag's decision and the actions that carry out the deletions, in order."""

    now: datetime
    rules: RetentionRules
    backend: Backend
    decisions: tuple[TagDecision, ...]
    actions: tuple[Action, ...]
    untagged_kept: int = 0
    counts: Mapping[str, int] = field(default_factory=dict)
    unreadable: Mapping[str, str] = field(default_factory=dict)

    @property
    def removed_tags(self) -> frozenset[str]:
        """Tags that the plan deletes or untags."""
        return frozenset(d.tag for d in self.decisions if d.verdict is not Verdict.KEEP)

    @property
    def deleted_digests(self) -> frozenset[str]:
        """Every manifest digest the plan deletes, children included."""
        found: set[str] = set()
        for action in self.actions:
            if action.kind is not ActionKind.UNTAG:
                found.add(action.digest)
                found.update(child.digest for child in action.children)
        return frozenset(found)


PrLookup = Callable[[int], PrStatus] | Mapping[int, PrStatus]


def plan_retention(
    versions: Iterable[ImageVersion],
    pr_states: PrLookup,
    *,
    now: datetime,
    rules: RetentionRules | None = None,
    in_flight: Iterable[tuple[int, str]] = (),
    backend: Backend = Backend.OCI,
    supports_untag: bool = False,
) -> Plan:
    """Plan a cleanup of ``versions`` at ``now``.

    ``pr_states`` maps a PR number to its :class:`PrStatus` (a mapping or a callable; missing = unknown).
    ``in_flight`` holds ``(pr_number, sha)`` pairs whose builds are running; their tags are kept.
    """
    if now.tzinfo is None:
        raise ValidationError("now", "must be timezone-aware")
    rules = rules or RetentionRules()
    listing = _index(versions)
    lookup = _lookup(pr_states)
    flight = {(number, sha) for number, sha in in_flight}

    wanted = _tag_rules(listing, lookup, now=now, rules=rules, in_flight=flight)
    return _resolve(listing, wanted, now=now, rules=rules, backend=backend, supports_untag=supports_untag)


def _index(versions: Iterable[ImageVersion]) -> dict[str, ImageVersion]:
    by_digest: dict[str, ImageVersion] = {}
    tag_owner: dict[str, str] = {}
    for version in versions:
        if version.created is not None and version.created.tzinfo is None:
            raise ValidationError("created", f"{version.digest}: must be timezone-aware")
        if version.digest in by_digest:
            raise ValidationError("versions", f"digest {version.digest} listed twice")
        for tag in version.tags:
            if tag in tag_owner:
                raise ValidationError("versions", f"tag {tag!r} listed on two digests")
            tag_owner[tag] = version.digest
        by_digest[version.digest] = version
    return by_digest


def _lookup(pr_states: PrLookup) -> Callable[[int], PrStatus]:
    cache: dict[int, PrStatus] = {}
    if isinstance(pr_states, Mapping):
        states = pr_states

        def from_mapping(number: int) -> PrStatus:
            return states.get(number, UNKNOWN_PR)

        return from_mapping
    fetch = pr_states

    def cached(number: int) -> PrStatus:
        if number not in cache:
            cache[number] = fetch(number)
        return cache[number]

    return cached


@dataclass(frozen=True, slots=True)
class _Rule:
    delete: bool
    reason: Reason


def _tag_rules(
    listing: Mapping[str, ImageVersion],
    lookup: Callable[[int], PrStatus],
    *,
    now: datetime,
    rules: RetentionRules,
    in_flight: set[tuple[int, str]],
) -> dict[str, _Rule]:
    """The rule decision for every tag, before the digest-level safety checks."""
    result: dict[str, _Rule] = {}
    open_candidates: dict[int, list[tuple[str, datetime | None, str]]] = {}
    for version in listing.values():
        for tag in version.tags:
            if is_protected(tag, rules.protected):
                result[tag] = _Rule(False, Reason.PROTECTED)
                continue
            parsed = parse_pr_tag(tag)
            if parsed is None:
                result[tag] = _Rule(False, Reason.NOT_PR_TAG)
                continue
            if (parsed.pr_number, parsed.sha) in in_flight:
                result[tag] = _Rule(False, Reason.IN_FLIGHT)
                continue
            created = version.created
            if created is not None and now - created > rules.ttl:
                result[tag] = _Rule(True, Reason.TTL_EXPIRED)
                continue
            status = lookup(parsed.pr_number)
            if status.state is PrState.CLOSED:
                closed = status.closed_at
                if closed is not None and now - closed > rules.grace:
                    result[tag] = _Rule(True, Reason.CLOSED_PAST_GRACE)
                else:
                    result[tag] = _Rule(False, Reason.CLOSED_IN_GRACE)
            elif status.state is PrState.OPEN:
                open_candidates.setdefault(parsed.pr_number, []).append((parsed.sha, created, tag))
            else:
                result[tag] = _Rule(False, Reason.UNKNOWN_WITHIN_TTL)

    for entries in open_candidates.values():
        newest: dict[str, datetime | None] = {}
        for sha, created, _tag in entries:
            if sha not in newest:
                newest[sha] = created
            else:
                prior = newest[sha]
                newest[sha] = None if prior is None or created is None else max(prior, created)
        # Unknown creation time sorts as newest: it is never the reason a tag goes.
        ranked = sorted(newest, key=lambda s: (newest[s] is None, newest[s] or now, s), reverse=True)
        keep = set(ranked[: rules.keep_per_open_pr])
        for sha, created, tag in entries:
            if sha in keep:
                result[tag] = _Rule(False, Reason.OPEN_NEWEST if created else Reason.NO_CREATED_TIME)
            else:
                result[tag] = _Rule(True, Reason.SUPERSEDED)
    return result


def _resolve(
    listing: Mapping[str, ImageVersion],
    wanted: Mapping[str, _Rule],
    *,
    now: datetime,
    rules: RetentionRules,
    backend: Backend,
    supports_untag: bool,
) -> Plan:
    """Apply the digest-level safety rules and build the actions."""
    doomed: set[str] = set()
    roots: list[str] = []
    referenced: set[str] = set()
    unreadable = {d: v.unreadable for d, v in listing.items() if v.unreadable is not None}
    for version in listing.values():
        referenced.update(version.children)
    for digest, version in listing.items():
        if version.tags:
            if digest not in unreadable and all(wanted[tag].delete for tag in version.tags):
                doomed.add(digest)
            else:
                roots.append(digest)
        elif digest not in referenced:
            roots.append(digest)  # an untagged top-level manifest may be pulled by digest: it stays

    undeletable: set[str] = set()
    if backend is Backend.GHCR:
        undeletable = {d for d in doomed if listing[d].version_id is None}
        doomed -= undeletable
        roots.extend(sorted(undeletable))

    # Everything reachable from a manifest that stays, stays.
    staying: set[str] = set()
    stack = list(roots)
    while stack:
        digest = stack.pop()
        if digest in staying:
            continue
        staying.add(digest)
        reached = listing.get(digest)
        if reached is not None:
            stack.extend(reached.children)
    doomed -= staying
    # A manifest whose children are unknown could reference any other: nothing may be deleted.
    blocked, doomed = (doomed, set()) if unreadable else (set(), doomed)

    actions: list[Action] = []
    claimed: set[str] = set()
    doomed_children = {c for d in doomed for c in listing[d].children}
    for digest in sorted(doomed - doomed_children) + sorted(doomed & doomed_children):
        if digest in claimed:
            continue
        claimed.add(digest)
        children = _descendants(digest, listing, staying, claimed)
        version = listing[digest]
        removed = list(version.tags)
        for child in children:
            child_version = listing.get(child.digest)
            if child_version is not None:
                removed.extend(child_version.tags)
        kind = ActionKind.DELETE_VERSION if backend is Backend.GHCR else ActionKind.DELETE_MANIFEST
        if backend is Backend.GHCR:
            children = tuple(c for c in children if c.version_id is not None)
        actions.append(Action(kind, digest, tuple(sorted(removed)), version.version_id, children))

    deleted = {a.digest for a in actions} | {c.digest for a in actions for c in a.children}
    decisions: list[TagDecision] = []
    untags: list[Action] = []
    for digest, version in listing.items():
        for tag in version.tags:
            rule = wanted[tag]
            wanted_reason: Reason | None = None
            if digest in unreadable:
                verdict, reason = Verdict.KEEP, Reason.REFERENCES_UNREADABLE
                wanted_reason = rule.reason if rule.delete else None
            elif not rule.delete:
                verdict, reason = Verdict.KEEP, rule.reason
            elif digest in deleted:
                verdict, reason = Verdict.DELETE, rule.reason
            elif digest in blocked:
                verdict, reason, wanted_reason = Verdict.KEEP, Reason.BLOCKED_BY_UNREADABLE, rule.reason
            elif supports_untag and digest not in undeletable:
                verdict, reason = Verdict.UNTAG, rule.reason
                untags.append(Action(ActionKind.UNTAG, digest, (tag,), version.version_id))
            else:
                verdict, wanted_reason = Verdict.KEEP, rule.reason
                if digest in undeletable:
                    reason = Reason.NO_VERSION_ID
                elif any(not wanted[t].delete for t in version.tags):
                    reason = Reason.SHARES_DIGEST_WITH_KEPT
                else:
                    reason = Reason.CHILD_OF_KEPT
            parsed = parse_pr_tag(tag)
            decisions.append(
                TagDecision(
                    tag=tag,
                    digest=digest,
                    verdict=verdict,
                    reason=reason,
                    pr_number=parsed.pr_number if parsed else None,
                    sha=parsed.sha if parsed else None,
                    created=version.created,
                    wanted=wanted_reason,
                )
            )

    decisions.sort(key=lambda d: d.tag)
    counts = Counter(f"{d.verdict.value}: {d.reason.value}" for d in decisions)
    untagged_kept = sum(1 for d, v in listing.items() if not v.tags and d not in deleted)
    return Plan(
        now=now,
        rules=rules,
        backend=backend,
        decisions=tuple(decisions),
        actions=tuple(untags + actions),
        untagged_kept=untagged_kept,
        counts=dict(sorted(counts.items())),
        unreadable=unreadable,
    )


def _descendants(
    digest: str, listing: Mapping[str, ImageVersion], staying: set[str], claimed: set[str]
) -> tuple[ChildManifest, ...]:
    """Children (transitively) of a doomed manifest that nothing staying references, each claimed once."""
    found: list[ChildManifest] = []
    version = listing.get(digest)
    stack = list(reversed(version.children)) if version else []
    while stack:
        child = stack.pop()
        if child in staying or child in claimed:
            continue
        claimed.add(child)
        child_version = listing.get(child)
        found.append(ChildManifest(child, child_version.version_id if child_version else None))
        if child_version is not None:
            stack.extend(reversed(child_version.children))
    return tuple(found)
