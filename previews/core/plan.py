"""The build plan: every decision of one preview-image run, pure.

The flow's parameters, the settings as plain values (:class:`BuildConfig`) and what the adapters found (the
pull request on GitHub, the checkout, the changed paths) go in; validated values, skip decisions with their
commit status, the tag, the labels, the fingerprint and the build spec come out. The flow carries these
between its tasks and decides nothing itself.

The steps, in the order the flow asks them:

1. :func:`validate_params`: every parameter, typed as the Prefect UI form or an event trigger may send it;
2. :func:`stale_event`: an event for a commit that is no longer the PR head builds nothing;
   :func:`reconcile`: the event against the pull request as GitHub has it now ("GitHub wins");
3. :func:`skip_before_checkout`: fork policy, push credentials;
4. :func:`skip_docs_only`: the changed paths against the ignore globs;
5. :func:`tag_for`, :func:`fingerprint_of`, :func:`build_spec`: what to build and push;
6. :func:`failure_status`: the commit status of a run that failed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol, TypeVar

from previews.core import status
from previews.core.events import parse_received
from previews.core.fingerprint import FINGERPRINT_LABEL, build_fingerprint
from previews.core.forks import decide_fork
from previews.core.labels import oci_labels
from previews.core.names import parse_sha
from previews.core.outcome import NotifyResult, PreviewResult
from previews.core.paths import PathDecision, PathFilter, choose_filter
from previews.core.request import BuildRequest, validate_request
from previews.core.status import StatusUpdate
from previews.core.tags import ensure_pushable, pr_tag
from previews.errors import BuildError, ValidationError

S = TypeVar("S")
_ACTION = re.compile(r"[a-z_]{1,40}")
NO_PUSH_CREDENTIALS = (
    "skipped: no push credentials (set PREVIEWS_REGISTRY_USERNAME and PREVIEWS_REGISTRY_TOKEN)"
)
UNKNOWN_FORK = "fork status unknown (no fork parameter, no GitHub credentials): treated as same-repository"


@dataclass(frozen=True, slots=True)
class BuildConfig:
    """The settings the plan reads, as plain values (built by :meth:`previews.settings.Settings.build_config`)."""

    registry: str
    image: str | None = None
    siblings: str = ""
    tag_sha_length: int = 40
    protected_tags: tuple[str, ...] = ()
    fork_policy: str = "skip"
    fork_label: str = "safe-to-preview"
    path_filter: PathFilter = field(default_factory=lambda: choose_filter(paths=None, paths_ignore=None))
    dockerfile: str = "Dockerfile"
    build_context: str = "."
    build_target: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    build_timeout: float = 1800.0
    has_push_credentials: bool = False
    fork_build_secrets: bool = False
    server_url: str = "https://github.com"
    cache_from_enabled: bool = True
    cache_from_fallback: str | None = None


@dataclass(frozen=True, slots=True)
class PreviewParams:
    """The flow's parameters, validated: the PR at one commit and how this run should treat it."""

    request: BuildRequest
    base_sha: str | None = None
    fork: bool | None = None
    labels: tuple[str, ...] | None = None
    delivery: str | None = None
    force_rebuild: bool = False
    action: str | None = None
    received: datetime | None = None


class PullFacts(Protocol):
    """What GitHub says about the pull request now (``previews.github.client.PullRequestInfo``)."""

    @property
    def head_sha(self) -> str: ...
    @property
    def base_sha(self) -> str: ...
    @property
    def is_fork(self) -> bool: ...
    @property
    def labels(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class Note:
    """A line for the run's log: something the plan noticed (``warning``) or assumed (``info``)."""

    level: Literal["info", "warning"]
    message: str


@dataclass(frozen=True, slots=True)
class Subject:
    """The pull request as this run treats it once reconciled with GitHub."""

    base_sha: str | None
    fork: bool
    labels: tuple[str, ...]
    status_sha: str | None = None
    notes: tuple[Note, ...] = ()


@dataclass(frozen=True, slots=True)
class Skip:
    """A reason to end the run without an image, and the commit status that says so."""

    reason: str
    status: StatusUpdate
    revoke: str | None = None


@dataclass(frozen=True, slots=True)
class BuildPaths:
    """Where the build happens, every path resolved on disk (symlinks followed) by the checkout."""

    workspace: Path
    context: Path
    dockerfile: Path


@dataclass(frozen=True, slots=True)
class BuildSpec:
    """What to build: a context directory, a Dockerfile inside it, and the production build's settings."""

    context_dir: Path
    dockerfile: str
    image_ref: str
    target: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    cache_from: Sequence[str] = ()
    timeout: float = 1800.0


def _flag(value: object, name: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise ValidationError(name, f"must be true or false, got {type(value).__name__}")


def _labels(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, list | tuple) and all(isinstance(x, str) for x in value):
        return tuple(value)
    raise ValidationError("labels", "must be a list of label names")


def validate_params(
    config: BuildConfig,
    *,
    repository: object,
    pr_number: object,
    head_sha: object,
    base_sha: object = None,
    fork: object = None,
    labels: object = None,
    delivery: object = None,
    force_rebuild: object = False,
    action: object = None,
    received: object = None,
) -> PreviewParams:
    """Every flow parameter, checked in order; the first bad one raises :class:`ValidationError` naming it."""
    request = validate_request(
        repository=repository,
        pr_number=pr_number,
        head_sha=head_sha,
        registry=config.registry,
        image=config.image,
        siblings=config.siblings,
    )
    if not isinstance(force_rebuild, bool):
        raise ValidationError("force_rebuild", f"must be true or false, got {type(force_rebuild).__name__}")
    if delivery is not None and not isinstance(delivery, str):
        raise ValidationError("delivery", f"must be a string, got {type(delivery).__name__}")
    if action is not None and not (isinstance(action, str) and _ACTION.fullmatch(action)):
        raise ValidationError("action", "must be a pull_request action name (lower-case letters and _)")
    return PreviewParams(
        request=request,
        base_sha=parse_sha(base_sha, field="base_sha", full=True) if base_sha else None,
        fork=_flag(fork, "fork"),
        labels=_labels(labels),
        delivery=delivery,
        force_rebuild=force_rebuild,
        action=action,
        received=parse_received(received),
    )


def reconcile(params: PreviewParams, pull: PullFacts | None) -> Subject:
    """The event's base, fork flag and labels checked against GitHub's pull request: GitHub wins.

    The requested head is built even when the PR moved on (a newer run builds the new head); statuses go on
    GitHub's full head SHA only when it is the requested commit. Without GitHub, an unknown fork flag means
    a same-repository PR (the event trigger always sends it).
    """
    notes: list[Note] = []
    base, fork, labels = params.base_sha, params.fork, params.labels or ()
    status_sha = None
    if pull is not None:
        requested = params.request.head_sha
        if not pull.head_sha.startswith(requested):
            notes.append(
                Note("warning", f"the PR head is now {pull.head_sha}; building the requested {requested}")
            )
        else:
            status_sha = pull.head_sha
        if base is not None and base != pull.base_sha:
            notes.append(
                Note(
                    "warning",
                    f"the event's base {base} differs from GitHub's {pull.base_sha}; using GitHub's",
                )
            )
        if fork is not None and fork != pull.is_fork:
            notes.append(
                Note("warning", f"the event said fork={fork} but GitHub says {pull.is_fork}; using GitHub's")
            )
        base, fork, labels = pull.base_sha, pull.is_fork, tuple(pull.labels)
    if fork is None:
        notes.append(Note("info", UNKNOWN_FORK))
        fork = False
    return Subject(base_sha=base, fork=fork, labels=labels, status_sha=status_sha, notes=tuple(notes))


def stale_event(params: PreviewParams, pull: PullFacts | None) -> str | None:
    """The PR's head when an event's run (``delivery`` set) names another commit: that run is superseded.

    A run without ``delivery`` (a UI rerun, ``previews build``) builds the commit it names even when the PR
    moved on: someone asked for that commit. Without GitHub (``pull`` None) the head is unknown.
    """
    if pull is None or not params.delivery:
        return None
    if pull.head_sha.lower().startswith(params.request.head_sha.lower()):
        return None
    return pull.head_sha


def skip_before_checkout(subject: Subject, config: BuildConfig, *, action: str | None = None) -> Skip | None:
    """The fork policy, then the push credentials: a reason to build nothing, or None to go on.

    A fork's new push under the ``label`` policy skips and names the approval label to remove (``revoke``).
    """
    decision = decide_fork(subject.fork, config.fork_policy, subject.labels, config.fork_label, action=action)
    if not decision.build:
        return Skip(decision.reason, status.skipped_fork(decision.reason), revoke=decision.revoke)
    if not config.has_push_credentials:
        return Skip(NO_PUSH_CREDENTIALS, status.skipped_no_push_credentials())
    return None


def skip_docs_only(paths: PathDecision) -> Skip | None:
    """Skip when the path filter (``PREVIEWS_PATHS`` or ``PREVIEWS_PATHS_IGNORE``) finds nothing to build."""
    if paths.build:
        return None
    return Skip(f"skipped: docs-only change ({paths.reason})", status.skipped_docs_only())


def secrets_for(subject: Subject, secrets: Mapping[str, S], config: BuildConfig) -> dict[str, S]:
    """The build secrets this build gets: none for a fork's Dockerfile unless ``PREVIEWS_FORK_BUILD_SECRETS``."""
    if subject.fork and not config.fork_build_secrets:
        return {}
    return dict(secrets)


def tag_for(request: BuildRequest, head_sha: str, config: BuildConfig) -> str:
    """``pr-<N>-<sha>`` for the full head SHA, refused here if the policy would not let it be pushed."""
    tag = pr_tag(request.pr_number, head_sha, sha_length=config.tag_sha_length)
    ensure_pushable(tag, protected=config.protected_tags)
    return tag


def fingerprint_of(config: BuildConfig, request: BuildRequest, siblings: Mapping[str, str]) -> str:
    """The build-settings fingerprint; ``siblings`` maps each sibling's name to the commit it resolved to."""
    return build_fingerprint(
        dockerfile=config.dockerfile,
        context=config.build_context,
        target=config.build_target,
        build_args=config.build_args,
        siblings={str(s): siblings.get(s.name, "") for s in request.siblings},
    )


def image_labels(
    config: BuildConfig,
    request: BuildRequest,
    *,
    head_sha: str,
    tag: str,
    fingerprint: str,
    created: datetime,
) -> dict[str, str]:
    """The labels of a preview image: metadata-action's OCI set, the PR and the build-settings fingerprint."""
    return {
        **oci_labels(
            server_url=config.server_url,
            repository=request.repository,
            revision=head_sha,
            created=created,
            version=tag,
        ),
        "previews.pr": str(request.pr_number),
        "previews.repository": request.repository,
        FINGERPRINT_LABEL: fingerprint,
    }


def build_spec(
    config: BuildConfig,
    request: BuildRequest,
    *,
    paths: BuildPaths,
    tag: str,
    labels: Mapping[str, str],
    cache_from: Sequence[str] = (),
) -> BuildSpec:
    """The build of ``request`` tagged ``tag``; the context stays in the workspace, the Dockerfile in the context."""
    if not paths.context.is_relative_to(paths.workspace):
        raise ValidationError("PREVIEWS_BUILD_CONTEXT", f"{config.build_context!r} leaves the workspace")
    if not paths.dockerfile.is_relative_to(paths.context):
        raise ValidationError("PREVIEWS_DOCKERFILE", f"{config.dockerfile!r} is outside the build context")
    return BuildSpec(
        context_dir=paths.context,
        dockerfile=str(paths.dockerfile.relative_to(paths.context)),
        image_ref=f"{request.image_name}:{tag}",
        target=config.build_target,
        build_args=dict(config.build_args),
        labels=dict(labels),
        cache_from=tuple(cache_from),
        timeout=config.build_timeout,
    )


@dataclass(frozen=True, slots=True)
class CacheSource:
    """An image to pull before the build for ``cache_from``; ``ours`` when it lives in the push registry."""

    reference: str
    ours: bool


def cache_sources(
    config: BuildConfig, request: BuildRequest, newest_tag: str | None
) -> tuple[CacheSource, ...]:
    """The PR's newest image, then ``PREVIEWS_CACHE_FROM_FALLBACK``: the first that pulls is the cache.

    Only an image of the push registry gets the push credentials; a fallback elsewhere is pulled without.
    """
    refs = [f"{request.image_name}:{newest_tag}"] if newest_tag is not None else []
    if config.cache_from_fallback:
        refs.append(config.cache_from_fallback)
    return tuple(CacheSource(ref, ref.startswith(f"{config.registry}/")) for ref in refs)


def failure_status(exc: BaseException) -> StatusUpdate:
    """``failure`` when the PR's own build broke; ``error`` when the pipeline could not do its job."""
    if isinstance(exc, BuildError):
        return status.failed(exc.reason, state="failure")
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return status.failed(f"{type(exc).__name__}: {first_line}", state="error")


def skipped(params: PreviewParams, reason: str, *, head_sha: str | None = None) -> PreviewResult:
    """The result of a run that built nothing."""
    request = params.request
    return PreviewResult(
        status="skipped",
        reason=reason,
        repository=request.repository,
        pr_number=request.pr_number,
        head_sha=head_sha or request.head_sha,
    )


class Built(Protocol):
    """The build's facts a result reports (``previews.docker_engine.BuiltImage``)."""

    @property
    def size_bytes(self) -> int: ...
    @property
    def steps(self) -> int: ...
    @property
    def cached_steps(self) -> int: ...


def pushed(
    params: PreviewParams,
    *,
    head_sha: str,
    tag: str,
    image: str,
    digest: str,
    built: Built | None,
    notify: NotifyResult,
) -> PreviewResult:
    """The result of a run that pushed ``image`` (or found it already published, ``built`` None)."""
    request = params.request
    reason = (
        f"pushed {image}@{digest}"
        if built is not None
        else f"already published {image}@{digest}; nothing built"
    )
    return PreviewResult(
        status="pushed",
        reason=reason,
        repository=request.repository,
        pr_number=request.pr_number,
        head_sha=head_sha,
        image=image,
        tag=tag,
        digest=digest,
        size_bytes=built.size_bytes if built is not None else None,
        steps=built.steps if built is not None else None,
        cached_steps=built.cached_steps if built is not None else None,
        notify=notify,
    )
