"""Registry adapters (OCI Distribution, GitHub Packages) and the executor of a retention plan.

:func:`apply_plan` carries out a :class:`~previews.core.retention.Plan` against a :class:`CleanupTarget`, in
plan order: a parent's children are deleted only after the parent itself is gone. Before deleting, the tags
are read again; when the references of a manifest a staying tag reaches cannot be read, every deletion is
skipped and reported (fail closed). A permanent refusal of one action (e.g. GHCR's "last tagged version")
is reported and the run goes on; an auth failure stops the run.

Retries: adapters make one attempt and raise ``TransientError`` (with ``retry_after`` when the remote said
how long to wait); Prefect task retries are the retry layer of flow work. :func:`apply_plan` is the
documented exception: it paces and retries each deletion itself (honouring ``retry_after``), because a
task-level retry would start the whole run again, listing and rechecking included, for one rate-limited
delete out of hundreds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from previews.core.retention import Action, ActionKind, Backend, ImageVersion, Plan
from previews.errors import (
    AuthError,
    GitHubNotFoundError,
    PermanentError,
    RegistryNotFoundError,
    TransientError,
)


class CleanupTarget(Protocol):
    """One image repository (OCI) or container package (GHCR) that a cleanup acts on."""

    backend: Backend
    supports_untag: bool

    def list_versions(self) -> list[ImageVersion]:
        """Every manifest with its tags, created time and children."""
        ...

    def delete_manifest(self, digest: str) -> None:
        """Delete a manifest by digest (OCI)."""
        ...

    def delete_version(self, version_id: int) -> None:
        """Delete a package version by numeric id (GHCR)."""
        ...

    def untag(self, tag: str) -> None:
        """Remove one tag and keep its manifest."""
        ...

    def current_tags(self, skip: frozenset[str]) -> dict[str, str]:
        """Tag -> digest as the registry holds them now, for every tag not in ``skip``."""
        ...

    def children_of(self, digest: str) -> tuple[str, ...]:
        """The child manifests of an index (empty for an image); raises when they cannot be read."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    """What happened to one planned action."""

    action: Action
    done: bool
    detail: str = ""
    children_deleted: tuple[str, ...] = ()
    children_failed: tuple[str, ...] = ()
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class ApplyReport:
    """The outcome of every action, in order."""

    outcomes: tuple[ActionOutcome, ...]
    seconds: float

    @property
    def removed_tags(self) -> tuple[str, ...]:
        """Tags that are gone after the run."""
        return tuple(tag for o in self.outcomes if o.done for tag in o.action.tags)

    @property
    def failed(self) -> tuple[ActionOutcome, ...]:
        """Actions that could not be carried out."""
        return tuple(o for o in self.outcomes if not o.done)


def _perform(target: CleanupTarget, action: Action) -> None:
    if action.kind is ActionKind.UNTAG:
        target.untag(action.tags[0])
    elif action.kind is ActionKind.DELETE_VERSION:
        if action.version_id is None:
            raise PermanentError(f"{action.digest}: no package version id")
        target.delete_version(action.version_id)
    else:
        target.delete_manifest(action.digest)


def _with_retries(
    call: Callable[[], None], *, retries: int, max_wait: float, backoff: float, sleep: Callable[[float], None]
) -> int:
    attempt = 0
    while True:
        attempt += 1
        try:
            call()
        except TransientError as exc:
            if attempt > retries:
                raise
            wait = exc.retry_after if exc.retry_after is not None else backoff * 2 ** (attempt - 1)
            sleep(min(max(wait, 0.0), max_wait))
            continue
        return attempt


@dataclass(frozen=True, slots=True)
class References:
    """What staying tags reach now: ``digests``, and ``unreadable`` (digest -> why) where that is unknown."""

    digests: frozenset[str]
    unreadable: dict[str, str]


def still_referenced(plan: Plan, target: CleanupTarget) -> References:
    """Digests that a tag the plan keeps (or a tag pushed since the listing) reaches now, children included.

    Run just before deleting: a tag moved or added since the listing (say ``latest`` promoted onto an old
    ``pr-*`` image) must not lose its manifest. A manifest whose children cannot be read is listed in
    ``unreadable``: what it references is unknown, so the caller must delete nothing.
    """
    current = target.current_tags(plan.removed_tags)
    referenced = set(current.values())
    known = {d.digest for d in plan.decisions}
    doomed = plan.deleted_digests
    unreadable: dict[str, str] = {}
    stack = [d for d in referenced if d not in known or d in doomed]
    while stack:
        digest = stack.pop()
        try:
            children = target.children_of(digest)
        except AuthError:
            raise
        except (PermanentError, TransientError) as exc:
            unreadable[digest] = str(exc)
            continue
        for child in children:
            if child not in referenced:
                referenced.add(child)
                stack.append(child)
    return References(frozenset(referenced), unreadable)


@dataclass(frozen=True, slots=True)
class _Pacing:
    """How one deletion is retried: transient failures only, after ``retry_after`` or the backoff."""

    retries: int
    max_wait: float
    backoff: float
    sleep: Callable[[float], None]

    def attempt(self, call: Callable[[], None]) -> int:
        """Run ``call`` until it succeeds; returns the number of attempts."""
        return _with_retries(
            call, retries=self.retries, max_wait=self.max_wait, backoff=self.backoff, sleep=self.sleep
        )


_NOT_FOUND = (RegistryNotFoundError, GitHubNotFoundError)


def _skip_reason(action: Action, references: References) -> str:
    """Why a deletion must not run now (a staying manifest reaches it, or may), else an empty string."""
    if action.kind is ActionKind.UNTAG:
        return ""
    if references.unreadable:
        unreadable = "; ".join(f"{d}: {why}" for d, why in sorted(references.unreadable.items()))
        return f"skipped: the references of a staying manifest could not be read ({unreadable})"
    if action.digest in references.digests:
        return "skipped: a staying tag points at this manifest since the listing"
    return ""


def _delete_children(
    target: CleanupTarget, action: Action, guarded: frozenset[str], pacing: _Pacing
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Delete the action's children (after their parent); returns (deleted, failed) digests."""
    deleted: list[str] = []
    failed: list[str] = []
    for child in action.children:
        if child.digest in guarded:
            continue
        try:
            if action.kind is ActionKind.DELETE_VERSION and child.version_id is not None:
                pacing.attempt(partial(target.delete_version, child.version_id))
            else:
                pacing.attempt(partial(target.delete_manifest, child.digest))
            deleted.append(child.digest)
        except AuthError:
            raise
        except _NOT_FOUND:
            deleted.append(child.digest)
        except (PermanentError, TransientError):
            failed.append(child.digest)
    return tuple(deleted), tuple(failed)


def _carry_out(
    target: CleanupTarget, action: Action, references: References, pacing: _Pacing
) -> ActionOutcome:
    """One action and its children; an auth failure stops the run, any other failure is its outcome."""
    skip = _skip_reason(action, references)
    if skip:
        return ActionOutcome(action, False, skip)
    detail = ""
    try:
        attempts = pacing.attempt(partial(_perform, target, action))
    except AuthError:
        raise
    except _NOT_FOUND as exc:
        attempts, detail = 1, f"already gone: {exc}"
    except (PermanentError, TransientError) as exc:
        return ActionOutcome(action, False, str(exc))
    deleted, failed = _delete_children(target, action, references.digests, pacing)
    return ActionOutcome(action, True, detail, deleted, failed, attempts)


def apply_plan(
    plan: Plan,
    target: CleanupTarget,
    *,
    recheck: bool = True,
    retries: int = 3,
    max_wait: float = 120.0,
    backoff: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    on_done: Callable[[ActionOutcome], None] | None = None,
) -> ApplyReport:
    """Carry out ``plan`` on ``target``; returns what happened to every action.

    With ``recheck`` (the default) the tags are read again first and any deletion whose manifest a staying
    tag now reaches is skipped (see :func:`still_referenced`). A manifest already gone (404) counts as done.
    ``on_done`` is called after each action (events, logs).
    """
    if plan.backend is not target.backend:
        raise PermanentError(f"plan is for {plan.backend.value}, target is {target.backend.value}")
    start = time.monotonic()
    references = still_referenced(plan, target) if recheck and plan.actions else References(frozenset(), {})
    pacing = _Pacing(retries, max_wait, backoff, sleep)
    outcomes: list[ActionOutcome] = []
    for action in plan.actions:
        outcome = _carry_out(target, action, references, pacing)
        outcomes.append(outcome)
        if on_done:
            on_done(outcome)
    return ApplyReport(tuple(outcomes), round(time.monotonic() - start, 3))
