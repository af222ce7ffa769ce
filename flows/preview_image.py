"""The ``preview-image`` flow: one pull request at one commit becomes ``pr-<N>-<sha>`` in the registry.

Tasks, each visible on its own in the Prefect UI: validate -> supersede -> checkout -> check-published ->
warm-cache -> build -> push -> notify-infra. Only transient failures are retried; invalid input fails fast
and touches nothing.

Cancel-in-progress (issue 5): the ``supersede`` step cancels older in-flight runs of the same PR at another
SHA, skips this run when an older run already builds the same SHA, and stops it when a newer run exists. The
check runs again right before the push, so a superseded run never pushes. An image already published for the
SHA with the same build settings is reused (``force_rebuild`` overrides).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from prefect import Flow, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import FlowRun, State
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed
from pydantic import SecretStr

from flows import supersede as supersede_runs
from flows.common import current_settings, log_notify, retry_transient_only, retrying, timed
from flows.reporting import StatusReporter, flow_run_url
from previews import build_cache, git
from previews.core import status
from previews.core.buildkit import parse_build_secrets, resolve_build_secrets
from previews.core.fingerprint import FINGERPRINT_LABEL, build_fingerprint, is_published
from previews.core.forks import decide_fork
from previews.core.labels import github_server_url, oci_labels
from previews.core.names import parse_pr_number, parse_sha
from previews.core.outcome import NotifyResult, PreviewResult, summary_markdown
from previews.core.request import BuildRequest, validate_request
from previews.core.status import StatusUpdate
from previews.core.supersede import SupersedeDecision
from previews.core.tags import ensure_pushable, pr_tag
from previews.docker_engine import BuildSpec, BuiltImage, DockerEngine, PushedImage, RegistryLogin
from previews.errors import BuildError, PreviewsError, RegistryNotFoundError, ValidationError
from previews.github import infra
from previews.github.client import GitHubClient, PullRequestInfo
from previews.registry.oci import OciRegistry, registry_url
from previews.settings import Settings


def run_name() -> str:
    """``pr-<N>-<sha7>`` from the run's parameters; hostile parameters never reach the name."""
    params = flow_run.parameters
    try:
        number = parse_pr_number(params.get("pr_number"))
        sha = parse_sha(params.get("head_sha"))
    except ValidationError:
        return "pr-invalid-input"
    return f"pr-{number}-{sha[:7]}"


@task(name="validate", retries=0, cache_policy=NO_CACHE)
def validate_inputs(
    repository: object, pr_number: object, head_sha: object, settings: Settings
) -> BuildRequest:
    """Parse every input into a frozen :class:`BuildRequest`; a bad field fails the run at once."""
    return validate_request(
        repository=repository,
        pr_number=pr_number,
        head_sha=head_sha,
        registry=settings.registry,
        image=settings.image,
        siblings=settings.siblings,
    )


@task(name="checkout", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def checkout_source(
    request: BuildRequest, workspace: Path, settings: Settings, base_sha: str | None = None
) -> git.CheckoutResult:
    """Fetch the exact head SHA (and the siblings) into a fresh workspace."""
    logger = get_run_logger()
    git.remove_workspace(workspace)
    workspace.mkdir(parents=True)
    url = git.repository_url(settings.git_url_template, request.repository)
    siblings = [(s, git.repository_url(settings.git_url_template, s.repository)) for s in request.siblings]
    result = git.checkout(
        workspace=workspace,
        url=url,
        sha=request.head_sha,
        pr_number=request.pr_number,
        siblings=siblings,
        token=settings.app_git_token(),
        siblings_token=settings.sibling_git_token(),
        app_name=settings.app_dir,
        fetch_base=base_sha,
    )
    logger.info("Checked out %s at %s", request.repository, result.head_sha)
    for name, sha in result.siblings.items():
        logger.info("Checked out sibling %s (%s) at %s", name, result.sibling_refs.get(name, "?"), sha)
    return result


def workspace_for(settings: Settings, run_id: str) -> Path:
    """The workspace of one flow run, derivable from its id alone (the cancellation hook removes it)."""
    root = settings.workspace_root or Path(tempfile.gettempdir())
    return root / f"previews-run-{run_id}"


def remove_run_workspace(flow: Flow[..., object], flow_run: FlowRun, state: State) -> None:
    """State hook (cancelled, crashed): remove the run's workspace; never raises."""
    try:
        git.remove_workspace(workspace_for(current_settings(), str(flow_run.id)))
    except Exception:  # a hook must not mask the run's own outcome
        logging.getLogger(__name__).warning("could not remove the workspace of run %s", flow_run.id)


def fingerprint_of(request: BuildRequest, checkout: git.CheckoutResult, settings: Settings) -> str:
    """The build-settings fingerprint of this build (see :mod:`previews.core.fingerprint`)."""
    return build_fingerprint(
        dockerfile=settings.dockerfile,
        context=settings.build_context,
        target=settings.build_target,
        build_args=settings.build_arg_map(),
        siblings={str(s): checkout.siblings.get(s.name, "") for s in request.siblings},
    )


def _build_spec(
    request: BuildRequest,
    checkout: git.CheckoutResult,
    tag: str,
    settings: Settings,
    cache_from: tuple[str, ...] = (),
) -> BuildSpec:
    app_dir = checkout.app_dir.resolve()
    context = (app_dir / settings.build_context).resolve()
    workspace = checkout.workspace.resolve()
    if not context.is_relative_to(workspace):
        raise ValidationError("PREVIEWS_BUILD_CONTEXT", f"{settings.build_context!r} leaves the workspace")
    dockerfile = (app_dir / settings.dockerfile).resolve()
    if not dockerfile.is_relative_to(context):
        raise ValidationError("PREVIEWS_DOCKERFILE", f"{settings.dockerfile!r} is outside the build context")
    labels = {
        **oci_labels(
            server_url=github_server_url(settings.github_api_url),
            repository=request.repository,
            revision=checkout.head_sha,
            created=datetime.now(UTC),
            version=tag,
        ),
        "previews.pr": str(request.pr_number),
        "previews.repository": request.repository,
        FINGERPRINT_LABEL: fingerprint_of(request, checkout, settings),
    }
    return BuildSpec(
        context_dir=context,
        dockerfile=str(dockerfile.relative_to(context)),
        image_ref=f"{request.image_name}:{tag}",
        target=settings.build_target,
        build_args=settings.build_arg_map(),
        labels=labels,
        cache_from=cache_from,
        timeout=settings.build_timeout,
    )


def build_secrets(settings: Settings) -> dict[str, SecretStr]:
    """``PREVIEWS_BUILD_SECRETS`` resolved from the credentials block, else this process's environment."""
    return resolve_build_secrets(
        parse_build_secrets(settings.build_secrets),
        environ=os.environ,
        stored=settings.build_secret_values,
    )


def _registry_login(settings: Settings) -> RegistryLogin | None:
    if settings.registry_username is None or settings.registry_token is None:
        return None
    return RegistryLogin(settings.registry, settings.registry_username, settings.registry_token)


@task(name="build", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def build_image(
    request: BuildRequest,
    checkout: git.CheckoutResult,
    tag: str,
    settings: Settings,
    cache_from: tuple[str, ...] = (),
    fork: bool = False,
) -> BuiltImage:
    """Build the production Dockerfile at the checked-out commit, streaming its output into the run log.

    A fork's Dockerfile is not trusted with the build secrets unless ``PREVIEWS_FORK_BUILD_SECRETS`` says so.
    """
    logger = get_run_logger()
    spec = _build_spec(request, checkout, tag, settings, cache_from)
    engine = DockerEngine.from_env(timeout=settings.build_timeout)
    secrets = build_secrets(settings)
    if fork and secrets and not settings.fork_build_secrets:
        logger.warning(
            "build secrets %s withheld from a fork's build (PREVIEWS_FORK_BUILD_SECRETS=true passes them)",
            ", ".join(sorted(secrets)),
        )
        secrets = {}
    built = engine.build(
        spec,
        on_line=logger.info,
        secrets=secrets,
        login=_registry_login(settings),
        docker_cli=settings.docker_cli,
    )
    logger.info("Built %s (%d of %d steps cached)", spec.image_ref, built.cached_steps, built.steps)
    return built


@task(name="push", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def push_image(request: BuildRequest, tag: str, settings: Settings) -> PushedImage:
    """Push ``pr-<N>-<sha>`` (the tag policy is checked again right before the network call)."""
    logger = get_run_logger()
    assert settings.registry_username is not None
    assert settings.registry_token is not None
    engine = DockerEngine.from_env(timeout=settings.push_timeout)
    pushed = engine.push(
        request.image_name,
        tag,
        username=settings.registry_username,
        password=settings.registry_token,
        protected=settings.protected_tag_patterns(),
        timeout=settings.push_timeout,
        on_line=logger.info,
    )
    logger.info("Pushed %s@%s", pushed.reference, pushed.digest)
    return pushed


def _registry(settings: Settings) -> OciRegistry:
    return OciRegistry(
        registry_url(settings.registry),
        username=settings.registry_username,
        password=settings.registry_token,
        timeout=min(settings.push_timeout, 60.0),
    )


def _stale_after(settings: Settings) -> timedelta:
    """How long an in-flight run at the same SHA is trusted to still be building it."""
    return timedelta(seconds=settings.build_timeout + settings.push_timeout + 600)


@task(name="supersede", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def supersede(
    request: BuildRequest, run_id: str, settings: Settings, client: GitHubClient | None
) -> SupersedeDecision:
    """Tag this run; cancel older runs of the PR at other SHAs; say whether this run is a duplicate or late."""
    from uuid import UUID

    logger = get_run_logger()
    decision = supersede_runs.check(
        UUID(run_id),
        stale_after=_stale_after(settings),
        request=request,
        github=client,
        status_context=settings.status_context,
        logger=logger,
    )
    logger.info("%s: %s", decision.verdict, decision.reason)
    return decision


@task(name="check-superseded", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def check_superseded(run_id: str, settings: Settings) -> SupersedeDecision:
    """Right before the push: has a newer run of the PR started, or was this run cancelled meanwhile?"""
    from uuid import UUID

    return supersede_runs.check(UUID(run_id), stale_after=_stale_after(settings), apply=False)


@task(name="check-published", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def check_published(
    request: BuildRequest, tag: str, head_sha: str, fingerprint: str, settings: Settings
) -> str | None:
    """The digest of ``pr-<N>-<sha>`` when the registry has it built from ``head_sha`` with these settings."""
    logger = get_run_logger()
    with _registry(settings) as registry:
        try:
            labels = registry.manifest_labels(request.image, tag)
        except RegistryNotFoundError:
            logger.info("%s:%s is not published yet", request.image_name, tag)
            return None
        if not is_published(labels, sha=head_sha, fingerprint=fingerprint):
            logger.info("%s:%s exists but was built from other settings; rebuilding", request.image_name, tag)
            return None
        return registry.digest(request.image, tag)


@task(name="warm-cache", cache_policy=NO_CACHE)
def warm_cache(request: BuildRequest, settings: Settings) -> tuple[str, ...]:
    """Pull the PR's newest image (else ``PREVIEWS_CACHE_FROM_FALLBACK``) to use as ``cache_from``."""
    logger = get_run_logger()
    candidates: list[str] = []
    try:
        with _registry(settings) as registry:
            newest = build_cache.newest_pr_image(registry, request.image, request.pr_number)
        if newest is not None:
            candidates.append(f"{request.image_name}:{newest}")
    except PreviewsError as exc:
        logger.warning("could not list the PR's images for the build cache: %s", exc)
    if settings.cache_from_fallback:
        candidates.append(settings.cache_from_fallback)
    engine = DockerEngine.from_env(timeout=settings.push_timeout)
    for ref in candidates:
        # the push credentials go to the push registry only, never to a fallback image's other registry
        ours = ref.startswith(f"{settings.registry}/")
        failure = build_cache.pull(
            engine.client,
            ref,
            username=settings.registry_username if ours else None,
            password=settings.registry_token if ours else None,
        )
        if failure is None:
            logger.info("build cache: pulled %s", ref)
            return (ref,)
        logger.warning("build cache: could not pull %s (%s); building without it", ref, failure)
    if not candidates:
        logger.info("build cache: no earlier image of this PR and no PREVIEWS_CACHE_FROM_FALLBACK")
    return ()


@task(name="read-pull-request", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def read_pull_request(client: GitHubClient, request: BuildRequest) -> PullRequestInfo:
    """Read the PR from GitHub: base SHA, head repository, labels and state for a run started by hand."""
    return client.get_pull(request.repository, request.pr_number)


@task(name="changed-files", cache_policy=NO_CACHE)
def list_changed_files(checkout: git.CheckoutResult, base_sha: str) -> list[str]:
    """Paths changed between the base and the head commit, from the checkout (no 300-file limit)."""
    return git.changed_files(checkout.app_dir, base_sha, checkout.head_sha)


@task(name="notify-infra", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def notify_infra(
    request: BuildRequest,
    pushed: PushedImage,
    tag: str,
    head_sha: str,
    delivery: str | None,
    client: GitHubClient | None,
    settings: Settings,
) -> NotifyResult:
    """Tell the infra repository to create the preview environment, pinned by digest."""
    result = infra.notify_create(
        infra.target_from_settings(settings, client),
        client=client,
        repository=request.repository,
        pr_number=request.pr_number,
        sha=head_sha,
        image=pushed.reference,
        digest=pushed.digest,
        tag=tag,
        delivery=delivery,
    )
    log_notify(get_run_logger(), result)
    return result


def _finish(
    result: PreviewResult, reporter: StatusReporter | None = None, update: StatusUpdate | None = None
) -> State:
    """Post the final commit status, write the summary artifact, end the run Completed with the outcome."""
    if reporter is not None and update is not None:
        reporter.post(update)
    key = f"preview-pr-{result.pr_number}" if result.pr_number else "preview-invalid"
    create_markdown_artifact(markdown=summary_markdown(result), key=key, description=result.reason)
    return Completed(message=result.reason, data=result)


def _failure_status(exc: BaseException) -> StatusUpdate:
    """``failure`` when the PR's own build broke; ``error`` when the pipeline could not do its job."""
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, BuildError):
        return status.failed(exc.reason, state="failure")
    return status.failed(f"{type(exc).__name__}: {first_line}", state="error")


@flow(
    name="preview-image",
    flow_run_name=run_name,
    validate_parameters=False,
    on_cancellation=[remove_run_workspace],
    on_crashed=[remove_run_workspace],
)
def preview_image(
    repository: str,
    pr_number: int,
    head_sha: str,
    base_sha: str | None = None,
    fork: bool | None = None,
    labels: list[str] | None = None,
    delivery: str | None = None,
    force_rebuild: bool = False,
) -> State:
    """Build and push the preview image of ``repository``'s PR ``pr_number`` at ``head_sha``.

    Parameters are plain values so a person can start or rerun a build from the Prefect UI's form: only
    ``repository``, ``pr_number`` and ``head_sha`` are needed (a 7-39 character prefix of the PR's head
    works); the rest is read from GitHub when credentials are configured, and checked against it.
    ``fork`` and ``labels`` come from the event (head repository != base repository; the PR's labels).
    ``force_rebuild`` builds and pushes even when the registry already has this SHA built the same way.
    """
    settings = current_settings()
    logger = get_run_logger()
    run_id = str(flow_run.id) if flow_run.id else None
    durations: dict[str, float] = {}
    with timed(durations, "validate"):
        request = validate_inputs(repository, pr_number, head_sha, settings)
    if not isinstance(force_rebuild, bool):
        raise ValidationError("force_rebuild", f"must be true or false, got {type(force_rebuild).__name__}")
    base = parse_sha(base_sha, field="base_sha", full=True) if base_sha else None
    outcome = partial(
        PreviewResult,
        repository=request.repository,
        pr_number=request.pr_number,
        head_sha=request.head_sha,
        durations_s=durations,
        flow_run_id=run_id,
    )

    client = GitHubClient.from_settings(settings)
    reporter = StatusReporter(
        client, request.repository, settings.status_context, flow_run_url(settings), logger
    )
    reporter.use_sha(request.head_sha)
    try:
        if run_id is not None:
            with timed(durations, "supersede"):
                decision = supersede(request, run_id, settings, client)
            if decision.verdict == "duplicate":
                return _finish(outcome(status="skipped", reason=decision.reason))
            if decision.verdict == "superseded":
                return _superseded(decision, reporter)
        return _run(
            request,
            base,
            fork,
            labels,
            delivery,
            settings,
            client,
            reporter,
            outcome,
            durations,
            run_id=run_id,
            force_rebuild=force_rebuild,
        )
    except TerminationSignal:
        raise  # cancelled (the superseding run posts the status) or killed: nothing more to say here
    except BaseException as exc:
        reporter.post(_failure_status(exc))
        raise
    finally:
        if client is not None:
            client.close()


def _superseded(decision: SupersedeDecision, reporter: StatusReporter) -> State:
    """End a run that a newer run of its PR replaced: Cancelled, with the superseded commit status."""
    newer = decision.because_of.head_sha if decision.because_of is not None else None
    get_run_logger().warning("stopping: %s", decision.reason)
    reporter.post(status.superseded(newer))
    return Cancelled(message=decision.reason)


def _run(
    request: BuildRequest,
    base_sha: str | None,
    fork: bool | None,
    labels: list[str] | None,
    delivery: str | None,
    settings: Settings,
    client: GitHubClient | None,
    reporter: StatusReporter,
    outcome: Callable[..., PreviewResult],
    durations: dict[str, float],
    *,
    run_id: str | None,
    force_rebuild: bool,
) -> State:
    """The steps after validation; ``outcome`` builds the result with the run's identity filled in."""
    logger = get_run_logger()
    if fork is not None and not isinstance(fork, bool):
        raise ValidationError("fork", f"must be true or false, got {type(fork).__name__}")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise ValidationError("labels", "must be a list of label names")
    pr_labels = list(labels or [])
    path_filter = settings.path_filter()  # a misconfigured filter or secret fails before any work is done
    build_secrets(settings)
    if client is not None:
        with timed(durations, "read-pull-request"):
            pull = retrying(read_pull_request, settings)(client, request)
        if not pull.head_sha.startswith(request.head_sha):
            logger.warning(
                "the PR head is now %s; building the requested %s", pull.head_sha, request.head_sha
            )
        elif reporter.sha is None:
            reporter.use_sha(pull.head_sha)
        if base_sha is not None and base_sha != pull.base_sha:
            logger.warning(
                "the event's base %s differs from GitHub's %s; using GitHub's", base_sha, pull.base_sha
            )
        base_sha = pull.base_sha
        if fork is not None and fork != pull.is_fork:
            logger.warning("the event said fork=%s but GitHub says %s; using GitHub's", fork, pull.is_fork)
        fork = pull.is_fork
        pr_labels = list(pull.labels)
    reporter.post(status.pending())

    if fork is None:
        logger.info(
            "fork status unknown (no fork parameter, no GitHub credentials): treated as same-repository"
        )
        fork = False
    decision = decide_fork(fork, settings.fork_policy, pr_labels, settings.fork_label)
    if not decision.build:
        logger.warning("%s", decision.reason)
        return _finish(
            outcome(status="skipped", reason=decision.reason), reporter, status.skipped_fork(decision.reason)
        )

    if not settings.has_push_credentials:
        reason = "skipped: no push credentials (set PREVIEWS_REGISTRY_USERNAME and PREVIEWS_REGISTRY_TOKEN)"
        logger.warning("%s; nothing was built or pushed", reason)
        return _finish(
            outcome(status="skipped", reason=reason), reporter, status.skipped_no_push_credentials()
        )

    if run_id is not None:
        workspace = workspace_for(settings, run_id)
        git.remove_workspace(workspace)
        workspace.mkdir(parents=True)
    else:
        workspace = Path(
            tempfile.mkdtemp(prefix=f"previews-pr{request.pr_number}-", dir=settings.workspace_root)
        )
    try:
        with timed(durations, "checkout"):
            checkout = retrying(checkout_source, settings)(request, workspace / "ws", settings, base_sha)
        reporter.use_sha(checkout.head_sha)
        if base_sha is not None:
            changed = list_changed_files(checkout, base_sha)
            paths = path_filter.decide(changed)
            logger.info("path filter: %s", paths.reason)
            if not paths.build:
                reason = f"skipped: docs-only change ({paths.reason})"
                logger.info("%s", reason)
                return _finish(
                    outcome(status="skipped", reason=reason, head_sha=checkout.head_sha),
                    reporter,
                    status.skipped_docs_only(),
                )
        tag = pr_tag(request.pr_number, checkout.head_sha, sha_length=settings.tag_sha_length)
        ensure_pushable(tag, protected=settings.protected_tag_patterns())
        published: str | None = None
        if force_rebuild:
            logger.info("force_rebuild: building even if %s is already published", tag)
        else:
            with timed(durations, "check-published"):
                try:
                    published = retrying(check_published, settings)(
                        request, tag, checkout.head_sha, fingerprint_of(request, checkout, settings), settings
                    )
                except PreviewsError as exc:
                    logger.warning("could not ask the registry whether %s exists (%s); building", tag, exc)
        built: BuiltImage | None = None
        if published is None:
            cache_from: tuple[str, ...] = ()
            if settings.cache_from_enabled:
                with timed(durations, "warm-cache"):
                    cache_from = warm_cache(request, settings)
            with timed(durations, "build"):
                built = retrying(build_image, settings)(
                    request, checkout, tag, settings, cache_from, fork=fork
                )
    finally:
        git.remove_workspace(workspace)
    if published is not None:
        pushed = PushedImage(reference=f"{request.image_name}:{tag}", digest=published, duration_s=0.0)
        logger.info("already published: %s@%s; nothing to build or push", pushed.reference, published)
    else:
        if run_id is not None:
            with timed(durations, "check-superseded"):
                late = check_superseded(run_id, settings)
            if late.verdict == "superseded":
                return _superseded(late, reporter)
        with timed(durations, "push"):
            pushed = retrying(push_image, settings)(request, tag, settings)
    with timed(durations, "notify-infra"):
        notified = retrying(notify_infra, settings)(
            request, pushed, tag, checkout.head_sha, delivery, client, settings
        )
    reason = (
        f"pushed {pushed.reference}@{pushed.digest}"
        if built is not None
        else f"already published {pushed.reference}@{pushed.digest}; nothing built"
    )
    return _finish(
        outcome(
            status="pushed",
            reason=reason,
            head_sha=checkout.head_sha,
            image=pushed.reference,
            tag=tag,
            digest=pushed.digest,
            size_bytes=built.size_bytes if built is not None else None,
            steps=built.steps if built is not None else None,
            cached_steps=built.cached_steps if built is not None else None,
            notify=notified,
        ),
        reporter,
        status.pushed(pushed.reference),
    )
