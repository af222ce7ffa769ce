"""Retention planner: which ``pr-<N>-<sha>`` tags a cleanup may remove, and how, without breaking any image.

Pure: the registry listing, the PR states, the rules and ``now`` go in; a frozen :class:`Plan` comes out with a
decision and a reason for every tag and the backend actions that carry the deletions out.

Safety invariants (each one is a property test in ``tests/core/test_retention.py``):

- only tags matching ``pr-<N>-<sha>`` are ever candidates; a protected tag is never touched;
- a tag whose build is in flight is kept;
- a manifest is deleted only when every tag on it is deleted, and never while it is reachable from a manifest
  that stays (a kept tag, an untagged top-level manifest, a GHCR manifest without a version id, or a
  staying index's children, transitively: a staying child index keeps its own children);
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
from operator import attrgetter
from typing import NamedTuple

from previews.core.tags import DEFAULT_PROTECTED, PR_TAG_RE, protected_matcher
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


def pr_status(body: object) -> PrStatus:
    """A :class:`PrStatus` from GitHub's pull-request JSON (``state``, ``closed_at``); odd shapes are unknown."""
    if not isinstance(body, dict) or body.get("state") not in ("open", "closed"):
        return UNKNOWN_PR
    if body["state"] == "open":
        return PrStatus(PrState.OPEN)
    closed_at = body.get("closed_at")
    try:
        closed = datetime.fromisoformat(str(closed_at).replace("Z", "+00:00")) if closed_at else None
    except ValueError:
        closed = None
    return PrStatus(PrState.CLOSED, closed)


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


class _Rule(NamedTuple):
    """A tag's rule decision; ``pr`` is its parsed ``(pr_number, sha)``. A tuple: built once per tag."""

    delete: bool
    reason: Reason
    pr: tuple[int, str] | None = None


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
    by_pr: dict[int, tuple[bool, Reason] | None] = {}
    protected = protected_matcher(tuple(rules.protected))
    expired_before = now - rules.ttl  # created before this: past the TTL
    for version in listing.values():
        created = version.created
        for tag in version.tags:
            if protected(tag):
                result[tag] = _Rule(False, Reason.PROTECTED)
                continue
            match = PR_TAG_RE.fullmatch(tag)
            if match is None:
                result[tag] = _Rule(False, Reason.NOT_PR_TAG)
                continue
            pr = (int(match[1]), match[2])
            if pr in in_flight:
                result[tag] = _Rule(False, Reason.IN_FLIGHT, pr)
            elif created is not None and created < expired_before:
                result[tag] = _Rule(True, Reason.TTL_EXPIRED, pr)
            else:
                if pr[0] not in by_pr:  # one verdict per PR: OPEN (None, ranked below), closed, unknown
                    by_pr[pr[0]] = _closed_or_unknown(lookup(pr[0]), now=now, grace=rules.grace)
                verdict = by_pr[pr[0]]
                if verdict is None:
                    open_candidates.setdefault(pr[0], []).append((pr[1], created, tag))
                else:
                    result[tag] = _Rule(verdict[0], verdict[1], pr)
    _rank_open(open_candidates, result, now=now, keep=rules.keep_per_open_pr)
    return result


def _closed_or_unknown(status: PrStatus, *, now: datetime, grace: timedelta) -> tuple[bool, Reason] | None:
    """(delete, reason) for every tag of a closed or unknown PR; None for an open PR."""
    if status.state is PrState.OPEN:
        return None
    if status.state is PrState.CLOSED:
        closed = status.closed_at
        if closed is not None and now - closed > grace:
            return True, Reason.CLOSED_PAST_GRACE
        return False, Reason.CLOSED_IN_GRACE
    return False, Reason.UNKNOWN_WITHIN_TTL


def _rank_open(
    open_candidates: Mapping[int, list[tuple[str, datetime | None, str]]],
    result: dict[str, _Rule],
    *,
    now: datetime,
    keep: int,
) -> None:
    """Each open PR keeps its newest ``keep`` SHAs; older SHAs are superseded."""
    for number, entries in open_candidates.items():
        newest: dict[str, datetime | None] = {}
        for sha, created, _tag in entries:
            if sha not in newest:
                newest[sha] = created
            else:
                prior = newest[sha]
                newest[sha] = None if prior is None or created is None else max(prior, created)
        # Unknown creation time sorts as newest: it is never the reason a tag goes.
        ranked = sorted(newest, key=lambda s: (newest[s] is None, newest[s] or now, s), reverse=True)
        kept = set(ranked[:keep])
        for sha, created, tag in entries:
            if sha in kept:
                reason = Reason.OPEN_NEWEST if created else Reason.NO_CREATED_TIME
                result[tag] = _Rule(False, reason, (number, sha))
            else:
                result[tag] = _Rule(True, Reason.SUPERSEDED, (number, sha))


@dataclass(frozen=True, slots=True)
class _Digests:
    """The digest-level picture: what would go, what stays and why some cannot go."""

    doomed: frozenset[str]
    staying: frozenset[str]
    undeletable: frozenset[str]
    blocked: frozenset[str]
    unreadable: Mapping[str, str]


def _digests(listing: Mapping[str, ImageVersion], wanted: Mapping[str, _Rule], backend: Backend) -> _Digests:
    """Doomed digests (every tag goes), minus all that a staying manifest reaches; unreadable ones block all."""
    unreadable = {d: v.unreadable for d, v in listing.items() if v.unreadable is not None}
    referenced = {child for version in listing.values() for child in version.children}
    doomed: set[str] = set()
    roots: list[str] = []
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
        # GitHub Packages deletes by version id: a manifest without one cannot go, so it stays, and everything
        # it references stays with it (an untagged child index too, and that index's children).
        undeletable = {d for d in doomed if listing[d].version_id is None}
        doomed -= undeletable
        roots.extend(sorted(d for d, v in listing.items() if v.version_id is None))
    staying = _reachable(roots, listing)
    doomed -= staying
    # A manifest whose children are unknown could reference any other: nothing may be deleted.
    blocked, doomed = (doomed, set()) if unreadable else (set(), doomed)
    return _Digests(
        frozenset(doomed), frozenset(staying), frozenset(undeletable), frozenset(blocked), unreadable
    )


def _reachable(roots: Iterable[str], listing: Mapping[str, ImageVersion]) -> set[str]:
    """Everything reachable from a manifest that stays, stays."""
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
    return staying


def _deletions(listing: Mapping[str, ImageVersion], digests: _Digests, backend: Backend) -> list[Action]:
    """One action per doomed top manifest, carrying its doomed descendants; parents before children."""
    actions: list[Action] = []
    claimed: set[str] = set()
    staying, doomed = digests.staying, digests.doomed
    doomed_children = {c for d in doomed for c in listing[d].children}
    kind = ActionKind.DELETE_VERSION if backend is Backend.GHCR else ActionKind.DELETE_MANIFEST
    for digest in sorted(doomed - doomed_children) + sorted(doomed & doomed_children):
        if digest in claimed:
            continue
        claimed.add(digest)
        version = listing[digest]
        if not version.children:  # the common case: a plain image manifest
            actions.append(Action(kind, digest, tuple(sorted(version.tags)), version.version_id))
            continue
        children = _descendants(digest, listing, staying, claimed)
        removed = list(version.tags)
        for child in children:
            child_version = listing.get(child.digest)
            if child_version is not None:
                removed.extend(child_version.tags)
        if backend is Backend.GHCR:
            children = tuple(c for c in children if c.version_id is not None)
        actions.append(Action(kind, digest, tuple(sorted(removed)), version.version_id, children))
    return actions


def _verdict(
    tag: str,
    digest: str,
    version: ImageVersion,
    wanted: Mapping[str, _Rule],
    digests: _Digests,
    *,
    deleted: set[str],
    supports_untag: bool,
) -> tuple[Verdict, Reason, Reason | None]:
    """What happens to one tag, why, and (when it stays against its rule) what the rule wanted."""
    rule = wanted[tag]
    if digest in digests.unreadable:
        return Verdict.KEEP, Reason.REFERENCES_UNREADABLE, rule.reason if rule.delete else None
    if not rule.delete:
        return Verdict.KEEP, rule.reason, None
    if digest in deleted:
        return Verdict.DELETE, rule.reason, None
    if digest in digests.blocked:
        return Verdict.KEEP, Reason.BLOCKED_BY_UNREADABLE, rule.reason
    if supports_untag and digest not in digests.undeletable:
        return Verdict.UNTAG, rule.reason, None
    if digest in digests.undeletable:
        return Verdict.KEEP, Reason.NO_VERSION_ID, rule.reason
    if any(not wanted[t].delete for t in version.tags):
        return Verdict.KEEP, Reason.SHARES_DIGEST_WITH_KEPT, rule.reason
    return Verdict.KEEP, Reason.CHILD_OF_KEPT, rule.reason


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
    digests = _digests(listing, wanted, backend)
    actions = _deletions(listing, digests, backend)
    deleted = {a.digest for a in actions} | {c.digest for a in actions for c in a.children}
    decisions: list[TagDecision] = []
    untags: list[Action] = []
    unreadable = digests.unreadable
    for digest, version in listing.items():
        for tag in version.tags:
            rule = wanted[tag]
            if digest in unreadable or (rule.delete and digest not in deleted):
                verdict, reason, wanted_reason = _verdict(
                    tag, digest, version, wanted, digests, deleted=deleted, supports_untag=supports_untag
                )
            else:  # the common cases, inline: the rule's decision stands
                verdict = Verdict.DELETE if rule.delete else Verdict.KEEP
                reason, wanted_reason = rule.reason, None
            if verdict is Verdict.UNTAG:
                untags.append(Action(ActionKind.UNTAG, digest, (tag,), version.version_id))
            pr_number, sha = rule.pr or (None, None)
            decisions.append(
                TagDecision(tag, digest, verdict, reason, pr_number, sha, version.created, wanted_reason)
            )
    decisions.sort(key=attrgetter("tag"))
    tally = Counter((d.verdict, d.reason) for d in decisions)
    counts = {f"{v.value}: {r.value}": n for (v, r), n in tally.items()}
    return Plan(
        now=now,
        rules=rules,
        backend=backend,
        decisions=tuple(decisions),
        actions=tuple(untags + actions),
        untagged_kept=sum(1 for d, v in listing.items() if not v.tags and d not in deleted),
        counts=dict(sorted(counts.items())),
        unreadable=digests.unreadable,
    )


def _descendants(
    digest: str, listing: Mapping[str, ImageVersion], staying: frozenset[str], claimed: set[str]
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
