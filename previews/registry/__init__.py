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

Concurrency: the deletions are independent of each other (each carries its own children), so up to
``target.concurrency`` of them run at once, after the untags (one at a time) (``PREVIEWS_CLEANUP_CONCURRENCY``, default 8). The safety recheck
still runs once before the first deletion and each action is still checked against it; when the remote asks
one worker to wait (``retry_after``), every worker waits; an auth failure stops the others from starting new
actions. GHCR runs one action at a time (GitHub asks for mutating requests to be made serially, and its ~180
deletes per minute, paced in the adapter, are the limit there anyway).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass
from functools import partial
from itertools import chain
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
    concurrency: int  # how many actions may run at once

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


class _Gate:
    """Shared by the workers of one run: when the remote asks one of them to wait, the others wait too."""

    def __init__(self, sleep: Callable[[float], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._sleep, self._clock = sleep, clock
        self._lock = threading.Lock()
        self._until = 0.0

    def hold(self, seconds: float) -> None:
        """No new request before ``seconds`` from now."""
        with self._lock:
            self._until = max(self._until, self._clock() + seconds)

    def pass_through(self) -> None:
        """Wait out a hold another worker set."""
        with self._lock:
            remaining = self._until - self._clock()
        if remaining > 0:
            self._sleep(remaining)


def _with_retries(
    call: Callable[[], None],
    *,
    retries: int,
    max_wait: float,
    backoff: float,
    sleep: Callable[[float], None],
    gate: _Gate | None = None,
) -> int:
    attempt = 0
    slept = False
    while True:
        attempt += 1
        if gate is not None and not slept:
            gate.pass_through()
        try:
            call()
        except TransientError as exc:
            if attempt > retries:
                raise
            wait = exc.retry_after if exc.retry_after is not None else backoff * 2 ** (attempt - 1)
            wait = min(max(wait, 0.0), max_wait)
            if gate is not None and exc.retry_after is not None:
                gate.hold(wait)  # the remote's limit applies to every worker, not just this one
            sleep(wait)
            slept = True
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
    gate: _Gate | None = None

    def attempt(self, call: Callable[[], None]) -> int:
        """Run ``call`` until it succeeds; returns the number of attempts."""
        return _with_retries(
            call,
            retries=self.retries,
            max_wait=self.max_wait,
            backoff=self.backoff,
            sleep=self.sleep,
            gate=self.gate,
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
    concurrency: int | None = None,
) -> ApplyReport:
    """Carry out ``plan`` on ``target``; returns what happened to every action, in plan order.

    With ``recheck`` (the default) the tags are read again first and any deletion whose manifest a staying
    tag now reaches is skipped (see :func:`still_referenced`). A manifest already gone (404) counts as done.
    ``on_done`` is called after each action, in plan order, on the calling thread (events, logs). Up to
    ``concurrency`` actions (default: ``target.concurrency``) run at once.
    """
    if plan.backend is not target.backend:
        raise PermanentError(f"plan is for {plan.backend.value}, target is {target.backend.value}")
    start = time.monotonic()
    references = still_referenced(plan, target) if recheck and plan.actions else References(frozenset(), {})
    workers = max(1, target.concurrency if concurrency is None else concurrency)
    pacing = _Pacing(retries, max_wait, backoff, sleep, _Gate(sleep) if workers > 1 else None)

    def carry_out(action: Action) -> ActionOutcome:
        return _carry_out(target, action, references, pacing)

    # Untags go first and one at a time: an untag writes a tag, and Distribution's DELETE reads every tag of
    # the repository after removing the manifest; a tag caught mid-write fails that DELETE half-done (the
    # manifest gone, its tags left behind). Measured: concurrent untags and deletes left dangling tags.
    serial = 1 + max((i for i, a in enumerate(plan.actions) if a.kind is ActionKind.UNTAG), default=-1)
    outcomes: list[ActionOutcome] = []
    for outcome in chain(
        _each(plan.actions[:serial], carry_out, 1), _each(plan.actions[serial:], carry_out, workers)
    ):
        outcomes.append(outcome)
        if on_done:
            on_done(outcome)
    return ApplyReport(tuple(outcomes), round(time.monotonic() - start, 3))


class _Stopped(Exception):
    """An action not started because another one failed in a way that stops the run."""


def _each(
    actions: Sequence[Action], carry_out: Callable[[Action], ActionOutcome], workers: int
) -> Iterator[ActionOutcome]:
    """Each action's outcome in plan order, up to ``workers`` at a time; the first error stops the rest."""
    if workers == 1 or len(actions) < 2:
        for action in actions:
            yield carry_out(action)
        return
    stop = threading.Event()

    def guarded(action: Action) -> ActionOutcome:
        if stop.is_set():
            raise _Stopped
        try:
            return carry_out(action)
        except BaseException:
            stop.set()
            raise

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cleanup") as pool:
        futures = [pool.submit(guarded, action) for action in actions]
        try:
            for future in futures:
                if future.exception() is not None:
                    raise _first_error(futures)
                yield future.result()
        finally:
            stop.set()  # also when the caller stops early: nothing queued starts after that


def _first_error(futures: list[Future[ActionOutcome]]) -> BaseException:
    """The error that stopped the run (not a :class:`_Stopped`), once every started action has ended."""
    for future in futures:  # stop is already set by the failed action; cancel what has not started
        future.cancel()
    wait_all([f for f in futures if not f.cancelled()])
    errors = [f.exception() for f in futures if not f.cancelled()]
    return next((e for e in errors if e is not None and not isinstance(e, _Stopped)), _Stopped())
