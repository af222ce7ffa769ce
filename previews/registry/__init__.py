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
from typing import TYPE_CHECKING, Protocol

from previews.core.names import parse_image_repository
from previews.core.retention import Action, ActionKind, Backend, ImageVersion, Plan, RetentionRules
from previews.errors import (
    AuthError,
    GitHubNotFoundError,
    PermanentError,
    RegistryNotFoundError,
    TransientError,
    ValidationError,
)

if TYPE_CHECKING:
    from previews.settings import Settings


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
    guarded = references.digests
    unreadable = "; ".join(f"{d}: {why}" for d, why in sorted(references.unreadable.items()))
    outcomes: list[ActionOutcome] = []
    not_found = (RegistryNotFoundError, GitHubNotFoundError)
    for action in plan.actions:
        detail = ""
        skip = ""
        if action.kind is not ActionKind.UNTAG and unreadable:
            skip = f"skipped: the references of a staying manifest could not be read ({unreadable})"
        elif action.kind is not ActionKind.UNTAG and action.digest in guarded:
            skip = "skipped: a staying tag points at this manifest since the listing"
        if skip:
            outcome = ActionOutcome(action, False, skip)
            outcomes.append(outcome)
            if on_done:
                on_done(outcome)
            continue
        try:
            attempts = _with_retries(
                partial(_perform, target, action),
                retries=retries,
                max_wait=max_wait,
                backoff=backoff,
                sleep=sleep,
            )
        except AuthError:
            raise
        except not_found as exc:
            attempts, detail = 1, f"already gone: {exc}"
        except (PermanentError, TransientError) as exc:
            outcome = ActionOutcome(action, False, str(exc))
            outcomes.append(outcome)
            if on_done:
                on_done(outcome)
            continue
        deleted: list[str] = []
        failed: list[str] = []
        for child in action.children:
            if child.digest in guarded:
                continue
            try:
                if action.kind is ActionKind.DELETE_VERSION and child.version_id is not None:
                    _with_retries(
                        partial(target.delete_version, child.version_id),
                        retries=retries,
                        max_wait=max_wait,
                        backoff=backoff,
                        sleep=sleep,
                    )
                else:
                    _with_retries(
                        partial(target.delete_manifest, child.digest),
                        retries=retries,
                        max_wait=max_wait,
                        backoff=backoff,
                        sleep=sleep,
                    )
                deleted.append(child.digest)
            except AuthError:
                raise
            except not_found:
                deleted.append(child.digest)
            except (PermanentError, TransientError):
                failed.append(child.digest)
        outcome = ActionOutcome(action, True, detail, tuple(deleted), tuple(failed), attempts)
        outcomes.append(outcome)
        if on_done:
            on_done(outcome)
    return ApplyReport(tuple(outcomes), round(time.monotonic() - start, 3))


def registry_kind(settings: Settings) -> Backend:
    """``PREVIEWS_REGISTRY_KIND``, defaulting to GHCR for ghcr.io and OCI for any other registry."""
    if settings.registry_kind:
        return Backend(settings.registry_kind)
    return Backend.GHCR if settings.registry == "ghcr.io" else Backend.OCI


def cleanup_image(settings: Settings) -> str:
    """The image repository to clean: ``PREVIEWS_IMAGE``, else ``PREVIEWS_CLEANUP_REPOSITORY`` lower-cased."""
    image = settings.image or settings.cleanup_repository
    if not image:
        raise ValidationError(
            "PREVIEWS_IMAGE", "set the image repository to clean (or PREVIEWS_CLEANUP_REPOSITORY)"
        )
    return parse_image_repository(image, field="PREVIEWS_IMAGE")


def retention_rules(settings: Settings) -> RetentionRules:
    """The retention rules from ``PREVIEWS_CLEANUP_*`` and ``PREVIEWS_PROTECTED_TAGS``."""
    from datetime import timedelta

    return RetentionRules(
        grace=timedelta(hours=settings.cleanup_grace_hours),
        keep_per_open_pr=settings.cleanup_keep_per_open_pr,
        ttl=timedelta(days=settings.cleanup_ttl_days),
        protected=settings.protected_tag_patterns(),
    )


def cleanup_target(settings: Settings) -> CleanupTarget:
    """The cleanup target the settings describe (an OCI repository or a GHCR package)."""
    from previews.github.packages import GhcrPackage, split_image
    from previews.registry.oci import OciRegistry, OciRepository, registry_url

    image = cleanup_image(settings)
    token = settings.registry_token
    if registry_kind(settings) is Backend.GHCR:
        if token is None or not token.get_secret_value():
            raise ValidationError(
                "PREVIEWS_REGISTRY_TOKEN", "GHCR cleanup needs a token with delete:packages"
            )
        owner, package = split_image(image)
        # ghcr.io's token endpoint takes Basic <any user>:<PAT>; the owner stands in when no username is set.
        manifests = OciRegistry(
            registry_url(settings.registry), username=settings.registry_username or owner, password=token
        )
        return GhcrPackage(
            owner=owner,
            package=package,
            token=token,
            owner_kind=settings.cleanup_ghcr_owner_kind,
            api_url=settings.github_api_url,
            deletes_per_minute=settings.cleanup_deletes_per_minute,
            manifests=manifests,
        )
    registry = OciRegistry(
        registry_url(settings.registry), username=settings.registry_username, password=token
    )
    return OciRepository(registry, image)
