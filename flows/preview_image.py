"""The ``preview-image`` flow: one pull request at one commit becomes ``pr-<N>-<sha>`` in the registry.

Tasks, each visible on its own in the Prefect UI: validate -> checkout -> build -> push -> notify-infra.
Only transient failures are retried; invalid input fails fast and touches nothing.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.states import Completed

from flows.common import current_settings, retry_transient_only, retrying, timed
from previews import git
from previews.core.names import parse_pr_number, parse_sha
from previews.core.outcome import NotifyResult, PreviewResult, summary_markdown
from previews.core.request import BuildRequest, validate_request
from previews.core.tags import ensure_pushable, pr_tag
from previews.docker_engine import BuildSpec, BuiltImage, DockerEngine, PushedImage
from previews.errors import ValidationError
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
def checkout_source(request: BuildRequest, workspace: Path, settings: Settings) -> git.CheckoutResult:
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
        token=settings.git_token,
        app_name=settings.app_dir,
    )
    logger.info("Checked out %s at %s", request.repository, result.head_sha)
    for name, sha in result.siblings.items():
        logger.info("Checked out sibling %s at %s", name, sha)
    return result


def _build_spec(
    request: BuildRequest, checkout: git.CheckoutResult, tag: str, settings: Settings
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
        "org.opencontainers.image.source": request.source_url,
        "org.opencontainers.image.revision": checkout.head_sha,
        "org.opencontainers.image.created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "previews.pr": str(request.pr_number),
        "previews.repository": request.repository,
    }
    return BuildSpec(
        context_dir=context,
        dockerfile=str(dockerfile.relative_to(context)),
        image_ref=f"{request.image_name}:{tag}",
        target=settings.build_target,
        build_args=settings.build_arg_map(),
        labels=labels,
        timeout=settings.build_timeout,
    )


@task(name="build", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def build_image(
    request: BuildRequest, checkout: git.CheckoutResult, tag: str, settings: Settings
) -> BuiltImage:
    """Build the production Dockerfile at the checked-out commit, streaming its output into the run log."""
    logger = get_run_logger()
    spec = _build_spec(request, checkout, tag, settings)
    engine = DockerEngine.from_env(timeout=settings.build_timeout)
    built = engine.build(spec, on_line=logger.info)
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


@task(name="notify-infra", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def notify_infra(request: BuildRequest, pushed: PushedImage, settings: Settings) -> NotifyResult:
    """Tell the infra repository to create the preview environment, pinned by digest."""
    logger = get_run_logger()
    if not settings.infra_repository and not settings.infra_webhook_url:
        result = NotifyResult(
            sent=False, target=None, reason="no infra target configured; nobody was notified"
        )
        logger.warning(result.reason)
        return result
    raise NotImplementedError  # replaced by the GitHub integration


def _finish(result: PreviewResult) -> State[PreviewResult]:
    """Write the run's summary artifact and end the run Completed with the outcome as its message."""
    key = f"preview-pr-{result.pr_number}" if result.pr_number else "preview-invalid"
    create_markdown_artifact(markdown=summary_markdown(result), key=key, description=result.reason)
    return Completed(message=result.reason, data=result)


@flow(name="preview-image", flow_run_name=run_name, validate_parameters=False)
def preview_image(
    repository: str,
    pr_number: int,
    head_sha: str,
    base_sha: str | None = None,
    delivery: str | None = None,
) -> State[PreviewResult]:
    """Build and push the preview image of ``repository``'s PR ``pr_number`` at ``head_sha``.

    Parameters are plain values so a person can start or rerun a build from the Prefect UI's form.
    ``head_sha`` may be a 7-39 character prefix of the PR's current head commit.
    """
    settings = current_settings()
    logger = get_run_logger()
    run_id = str(flow_run.id) if flow_run.id else None
    durations: dict[str, float] = {}
    with timed(durations, "validate"):
        request = validate_inputs(repository, pr_number, head_sha, settings)

    if not settings.has_push_credentials:
        reason = "skipped: no push credentials (set PREVIEWS_REGISTRY_USERNAME and PREVIEWS_REGISTRY_TOKEN)"
        logger.warning("%s; nothing was built or pushed", reason)
        return _finish(
            PreviewResult(
                status="skipped",
                reason=reason,
                repository=request.repository,
                pr_number=request.pr_number,
                head_sha=request.head_sha,
                durations_s=durations,
                flow_run_id=run_id,
            )
        )

    root = settings.workspace_root
    workspace = Path(tempfile.mkdtemp(prefix=f"previews-pr{request.pr_number}-", dir=root)) / "ws"
    try:
        with timed(durations, "checkout"):
            checkout = retrying(checkout_source, settings)(request, workspace, settings)
        tag = pr_tag(request.pr_number, checkout.head_sha, sha_length=settings.tag_sha_length)
        ensure_pushable(tag, protected=settings.protected_tag_patterns())
        with timed(durations, "build"):
            built = retrying(build_image, settings)(request, checkout, tag, settings)
    finally:
        git.remove_workspace(workspace.parent)
    with timed(durations, "push"):
        pushed = retrying(push_image, settings)(request, tag, settings)
    with timed(durations, "notify-infra"):
        notified = retrying(notify_infra, settings)(request, pushed, settings)

    return _finish(
        PreviewResult(
            status="pushed",
            reason=f"pushed {pushed.reference}@{pushed.digest}",
            repository=request.repository,
            pr_number=request.pr_number,
            head_sha=checkout.head_sha,
            image=pushed.reference,
            tag=tag,
            digest=pushed.digest,
            size_bytes=built.size_bytes,
            steps=built.steps,
            cached_steps=built.cached_steps,
            durations_s=durations,
            notify=notified,
            flow_run_id=run_id,
        )
    )
