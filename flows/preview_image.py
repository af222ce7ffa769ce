"""The ``preview-image`` flow: one pull request at one commit becomes ``pr-<N>-<sha>`` in the registry.

Tasks, each one adapter call and each visible in the Prefect UI: validate -> read-pull-request -> supersede
-> checkout -> changed-files -> check-published -> warm-cache -> build -> check-superseded -> push ->
notify-infra. Every decision is made in :mod:`previews.core.plan`; this module carries the values between the
tasks, reports through :class:`~previews.github.reporting.Reporter` (commit statuses and/or check runs) and
writes the summary. Only transient failures are retried; invalid input fails at validate and touches nothing.

Stale events: a run started by an event (``delivery`` set: a webhook, reconcile, a check re-run) for a commit
that is no longer the PR's head on GitHub builds nothing and cancels nothing; it ends Cancelled, "superseded by
<head>", like any superseded run, and says so in a commit status on its commit. A run without ``delivery`` (a
UI rerun, ``previews build``) builds the commit it names, as asked, but never cancels the head's build.

Cancel-in-progress: ``supersede`` cancels older in-flight runs of the same PR at another SHA, skips this run
when an older run already builds the same SHA, and stops it when a newer run exists; the PR's real head, when
GitHub can be asked, outranks run order (a late run for an old commit never cancels the head's build). Without
GitHub, runs are ordered by ``received`` (when the receiver accepted the delivery), else by creation time.
``check-superseded`` asks again (with the head read again) right before the push. An image already published for the SHA with the same build settings is
reused (``force_rebuild`` overrides).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ParamSpec, TypeVar
from uuid import UUID

from prefect import Flow, Task, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import FlowRun, State
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed
from pydantic import SecretStr

from flows.common import Stopwatch, WiredFlow, log_notify, retry_transient_only, retrying, wired_flow
from previews import build_cache, git
from previews.core import checks, plan, status
from previews.core.fingerprint import is_published
from previews.core.names import FULL_SHA_RE, parse_pr_number, parse_sha
from previews.core.outcome import NotifyResult, PreviewResult, summary_markdown
from previews.core.plan import BuildConfig, BuildSpec, PreviewParams, Skip, Subject
from previews.core.request import BuildRequest
from previews.core.status import StatusUpdate
from previews.core.supersede import SupersedeDecision, run_tags, stale_after, superseded_message
from previews.docker_engine import BuiltImage, DockerEngine, PushedImage, RegistryLogin
from previews.errors import PreviewsError, RegistryNotFoundError, ValidationError
from previews.github import infra
from previews.github.checks import complete_open_check_runs
from previews.github.client import GitHubClient, PullRequestInfo
from previews.github.reporting import Reporter
from previews.registry.oci import OciRegistry
from previews.runs import PREVIEW_CREATED_TAG, CancelledRun, PrefectRuns, Supersession, flow_run_url
from previews.settings import Settings
from previews.wiring import Wiring

P = ParamSpec("P")
R = TypeVar("R")
# How long a run waits, at its end, for the runs it moved to Cancelling to end (the runner's kill grace is 30 s).
NAME_SUPERSEDED_TIMEOUT_S = 60.0


def run_name() -> str:
    """``pr-<N>-<sha7>`` from the run's parameters; hostile parameters never reach the name."""
    params = flow_run.parameters
    try:
        number = parse_pr_number(params.get("pr_number"))
        sha = parse_sha(params.get("head_sha"))
    except ValidationError:
        return "pr-invalid-input"
    return f"pr-{number}-{sha[:7]}"


# --- tasks: one adapter call each ----------------------------------------------------------------------------


@task(name="validate", retries=0, cache_policy=NO_CACHE)
def validate(
    config: BuildConfig,
    repository: object,
    pr_number: object,
    head_sha: object,
    base_sha: object,
    fork: object,
    labels: object,
    delivery: object,
    force_rebuild: object,
    action: object,
    received: object = None,
) -> PreviewParams:
    """Check every parameter (:func:`previews.core.plan.validate_params`); a bad one fails the run at once."""
    return plan.validate_params(
        config,
        repository=repository,
        pr_number=pr_number,
        head_sha=head_sha,
        base_sha=base_sha,
        fork=fork,
        labels=labels,
        delivery=delivery,
        force_rebuild=force_rebuild,
        action=action,
        received=received,
    )


@task(name="supersede", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def supersede(
    runs: PrefectRuns, run_id: str, request: BuildRequest, stale: timedelta, head: str | None
) -> Supersession:
    """Tag this run; cancel older runs of the PR at other SHAs; say whether this run is a duplicate or late."""
    logger = get_run_logger()
    done = runs.supersede(
        UUID(run_id), stale_after=stale, tags=run_tags(request.repository, request.pr_number), head=head
    )
    for old in done.cancelled:
        logger.info(
            "run %s (%s) at %s: %s: %s",
            old.run.name,
            old.run.id,
            old.run.head_sha[:12],
            old.answer,
            old.message,
        )
    logger.info("%s: %s", done.decision.verdict, done.decision.reason)
    return done


@task(name="check-superseded", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def check_superseded(runs: PrefectRuns, run_id: str, stale: timedelta, head: str | None) -> SupersedeDecision:
    """Right before the push: has a newer run of the PR started, or was this run cancelled meanwhile?"""
    return runs.supersede(UUID(run_id), stale_after=stale, apply=False, head=head).decision


@task(name="name-superseded", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def name_superseded(runs: PrefectRuns, cancelled: list[CancelledRun], timeout: float) -> int:
    """Make each run this one cancelled end as "superseded by <sha>", not with Prefect's generic message."""
    renamed = runs.name_final_states(cancelled, timeout=timeout)
    for old in renamed:
        get_run_logger().info("run %s (%s) ended Cancelled: %s", old.run.name, old.run.id, old.message)
    return len(renamed)


@task(name="revoke-approval", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def revoke_approval(github: GitHubClient, request: BuildRequest, label: str) -> bool:
    """Remove the fork-approval label from the PR (a new push needs a new review); False if it was gone."""
    return github.remove_label(request.repository, request.pr_number, label)


@task(name="read-pull-request", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def read_pull_request(github: GitHubClient, request: BuildRequest) -> PullRequestInfo:
    """Read the PR from GitHub: base SHA, head repository, labels and state for a run started by hand."""
    return github.get_pull(request.repository, request.pr_number)


@task(name="checkout", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def checkout_source(
    source: git.GitSource, request: BuildRequest, workspace: Path, base_sha: str | None
) -> git.CheckoutResult:
    """Fetch the exact head SHA (and the siblings) into a fresh workspace."""
    logger = get_run_logger()
    git.remove_workspace(workspace)
    workspace.mkdir(parents=True)
    result = source.checkout(
        workspace,
        repository=request.repository,
        sha=request.head_sha,
        pr_number=request.pr_number,
        siblings=request.siblings,
        fetch_base=base_sha,
    )
    logger.info("Checked out %s at %s", request.repository, result.head_sha)
    for name, sha in result.siblings.items():
        logger.info("Checked out sibling %s (%s) at %s", name, result.sibling_refs.get(name, "?"), sha)
    return result


@task(name="changed-files", cache_policy=NO_CACHE)
def list_changed_files(checkout: git.CheckoutResult, base_sha: str) -> list[str]:
    """Paths changed between the base and the head commit, from the checkout (no 300-file limit)."""
    return git.changed_files(checkout.app_dir, base_sha, checkout.head_sha)


@task(name="check-published", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def check_published(
    registry: OciRegistry, request: BuildRequest, tag: str, head_sha: str, fingerprint: str
) -> str | None:
    """The digest of ``pr-<N>-<sha>`` when the registry has it built from ``head_sha`` with these settings."""
    logger = get_run_logger()
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
def warm_cache(
    registry: OciRegistry,
    engine: DockerEngine,
    request: BuildRequest,
    config: BuildConfig,
    login: RegistryLogin | None,
    timeout: float,
) -> tuple[str, ...]:
    """Pull the PR's newest image (else ``PREVIEWS_CACHE_FROM_FALLBACK``) to use as ``cache_from``."""
    logger = get_run_logger()
    newest: str | None = None
    try:
        newest = build_cache.newest_pr_image(registry, request.image, request.pr_number)
    except PreviewsError as exc:
        logger.warning("could not list the PR's images for the build cache: %s", exc)
    sources = plan.cache_sources(config, request, newest)
    for source in sources:
        auth = login if source.ours else None  # the push credentials go to the push registry only
        username, password = (auth.username, auth.password) if auth else (None, None)
        failure = engine.pull(source.reference, username=username, password=password, timeout=timeout)
        if failure is None:
            logger.info("build cache: pulled %s", source.reference)
            return (source.reference,)
        logger.warning("build cache: could not pull %s (%s); building without it", source.reference, failure)
    if not sources:
        logger.info("build cache: no earlier image of this PR and no PREVIEWS_CACHE_FROM_FALLBACK")
    return ()


@task(name="build", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def build_image(
    engine: DockerEngine,
    spec: BuildSpec,
    secrets: dict[str, SecretStr],
    login: RegistryLogin | None,
    docker_cli: str | None,
) -> BuiltImage:
    """Build the production Dockerfile at the checked-out commit with BuildKit, streaming into the run log."""
    logger = get_run_logger()
    built = engine.build(spec, on_line=logger.info, secrets=secrets, login=login, docker_cli=docker_cli)
    logger.info("Built %s (%d of %d steps cached)", spec.image_ref, built.cached_steps, built.steps)
    return built


@task(name="push", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def push_image(
    engine: DockerEngine,
    request: BuildRequest,
    tag: str,
    login: RegistryLogin | None,
    protected: tuple[str, ...],
    timeout: float,
) -> PushedImage:
    """Push ``pr-<N>-<sha>`` (the tag policy is checked again right before the network call)."""
    logger = get_run_logger()
    assert login is not None  # the plan skips runs without push credentials
    pushed = engine.push(
        request.image_name,
        tag,
        username=login.username,
        password=login.password,
        protected=protected,
        timeout=timeout,
        on_line=logger.info,
    )
    logger.info("Pushed %s@%s", pushed.reference, pushed.digest)
    return pushed


@task(name="notify-infra", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def notify_infra(
    target: infra.InfraTarget | infra.NoTarget,
    github: GitHubClient | None,
    request: BuildRequest,
    pushed: PushedImage,
    tag: str,
    head_sha: str,
    delivery: str | None,
) -> NotifyResult:
    """Tell the infra repository to create the preview environment, pinned by digest."""
    result = infra.notify_create(
        target,
        client=github,
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


# --- the flow: carries values between the tasks ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Run:
    """One run's validated parameters, settings, clients, commit-status reporter and stopwatch."""

    params: PreviewParams
    settings: Settings
    config: BuildConfig
    wiring: Wiring
    github: GitHubClient | None
    reporter: Reporter
    clock: Stopwatch
    run_id: str | None
    cancelled: list[CancelledRun] = field(default_factory=list)

    @property
    def request(self) -> BuildRequest:
        return self.params.request

    @property
    def stale(self) -> timedelta:
        return stale_after(self.settings.build_timeout, self.settings.push_timeout)

    @property
    def login(self) -> RegistryLogin | None:
        return self.wiring.registry_login()

    def retrying(self, step: Task[P, R]) -> Task[P, R]:
        """``step`` with this run's retry count and backoff."""
        return retrying(step, self.settings)


@dataclass(frozen=True, slots=True)
class _Image:
    """The image of this run: its tag, and either the digest already published or the build just made."""

    tag: str
    published: str | None = None
    built: BuiltImage | None = None


def workspace_for(root: Path | None, run_id: str) -> Path:
    """The workspace of one flow run, derivable from its id alone (the cancellation hook removes it)."""
    return (root or Path(tempfile.gettempdir())) / f"previews-run-{run_id}"


def remove_run_workspace(flow: Flow[..., object], flow_run: FlowRun, state: State) -> None:
    """State hook (cancelled, crashed): remove the run's workspace; never raises."""
    try:
        assert isinstance(flow, WiredFlow)
        git.remove_workspace(workspace_for(flow.source().settings.workspace_root, str(flow_run.id)))
    except Exception:  # a hook must not mask the run's own outcome
        logging.getLogger(__name__).warning("could not remove the workspace of run %s", flow_run.id)


def close_run_check(flow: Flow[..., object], flow_run: FlowRun, state: State) -> None:
    """State hook (cancelled, crashed): complete the run's open check run so a required check never hangs."""
    try:
        assert isinstance(flow, WiredFlow)
        wiring = flow.source()
        params, settings = flow_run.parameters, wiring.settings
        sha, repository = params.get("head_sha"), params.get("repository")
        if not wiring.report_mode().checks or not isinstance(sha, str) or not isinstance(repository, str):
            return
        github = wiring.github()
        if github is None or not FULL_SHA_RE.fullmatch(sha):
            return
        url = f"{settings.ui_url.rstrip('/')}/runs/flow-run/{flow_run.id}" if settings.ui_url else None
        with github:
            complete_open_check_runs(
                github,
                repository,
                sha,
                name=settings.check_name,
                update=checks.run_ended(state.type.value),
                external_id=str(flow_run.id),
                run_url=url,
            )
    except Exception:  # a hook must not mask the run's own outcome
        logging.getLogger(__name__).warning("could not complete the check run of run %s", flow_run.id)


@wired_flow(
    name="preview-image",
    flow_run_name=run_name,
    validate_parameters=False,
    on_cancellation=[remove_run_workspace, close_run_check],
    on_crashed=[remove_run_workspace, close_run_check],
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
    action: str | None = None,
    received: str | None = None,
    *,
    wiring: Wiring,
) -> State:
    """Build and push the preview image of ``repository``'s PR ``pr_number`` at ``head_sha``.

    Only ``repository``, ``pr_number`` and ``head_sha`` are needed (a 7-39 character prefix of the PR's
    head works): the rest is read from GitHub when credentials are configured, and checked against it.
    ``fork``, ``labels`` and ``action`` (the pull_request action) come from the event; ``force_rebuild``
    builds even when the registry already has this SHA built the same way. ``received`` (ISO-8601, from the
    event) is when the receiver accepted the delivery: it orders the PR's runs for cancel-in-progress.
    """
    clock = Stopwatch()
    with clock("validate"):
        config = wiring.settings.build_config()
        event = (base_sha, fork, labels, delivery, force_rebuild, action, received)  # what an event adds
        params = validate(config, repository, pr_number, head_sha, *event)
    with _opened(wiring, params, clock) as run:
        return _reported(run)


@contextmanager
def _opened(wiring: Wiring, params: PreviewParams, clock: Stopwatch) -> Iterator[_Run]:
    """The run's GitHub client and commit-status reporter, closed when the run ends."""
    settings = wiring.settings
    with ExitStack() as stack:
        github = wiring.github()
        if github is not None:
            stack.enter_context(github)
        url = flow_run_url(settings.ui_url)
        run_id = str(flow_run.id) if flow_run.id else None
        reporter = wiring.reporter(
            github, params.request.repository, run_url=url, run_id=run_id, logger=get_run_logger()
        )
        reporter.use_sha(params.request.head_sha)
        yield _Run(params, settings, settings.build_config(), wiring, github, reporter, clock, run_id)


def _reported(run: _Run) -> State:
    """Run the steps; a failure posts its commit status, then propagates (a cancellation posts none)."""
    try:
        state = _preview(run)
    except TerminationSignal:
        raise  # cancelled (the superseding run posts the status) or killed: nothing more to say here
    except BaseException as exc:
        failure = checks.failed_step(run.clock.failed, exc)
        detail = checks.RunDetail(failure=failure, durations_s=run.clock.durations)
        run.reporter.post(plan.failure_status(exc), detail)
        _name_superseded(run)
        raise
    _name_superseded(run)
    return state


def _name_superseded(run: _Run) -> None:
    """Give the runs this one moved to Cancelling a final state that names this run's SHA; never raises."""
    if not any(c.proposed == "Cancelling" for c in run.cancelled):
        return
    try:
        with run.wiring.prefect_runs() as runs:
            name_superseded(runs, run.cancelled, NAME_SUPERSEDED_TIMEOUT_S)
    except PreviewsError as exc:
        get_run_logger().warning("could not name the final state of the superseded runs: %s", exc)


def _preview(run: _Run) -> State:
    """Read the PR, end a stale event's run, supersede, skip if the plan says so, else build and publish."""
    pull = _pull(run)
    newer_head = plan.stale_event(run.params, pull)
    if newer_head is not None:
        return _stale_event(run, newer_head)
    if run.run_id is not None:
        ended = _supersede(run, run.run_id, pull.head_sha if pull is not None else None)
        if ended is not None:
            return ended
    secrets = run.wiring.build_secrets()  # a secret without a value fails here, before any work
    subject = _subject(run, pull)
    skip = plan.skip_before_checkout(subject, run.config, action=run.params.action)
    if skip is not None:
        get_run_logger().warning("%s", skip.reason)
        _revoke_approval(run, skip.revoke)
        return _finish(run, plan.skipped(run.params, skip.reason), skip.status)
    given = plan.secrets_for(subject, secrets, run.config)
    if secrets and not given:
        get_run_logger().warning(
            "build secrets %s withheld from a fork's build (PREVIEWS_FORK_BUILD_SECRETS=true passes them)",
            ", ".join(sorted(secrets)),
        )
    return _build_and_publish(run, subject, given)


def _pull(run: _Run) -> PullRequestInfo | None:
    """The PR as GitHub has it now; None without GitHub credentials."""
    if run.github is None:
        return None
    with run.clock("read-pull-request"):
        return run.retrying(read_pull_request)(run.github, run.request)


def _revoke_approval(run: _Run, label: str | None) -> None:
    """Remove a fork's approval label after a new push (it approved an earlier commit); fails the run if
    GitHub refuses, so that a label left on never passes for an approval of this commit."""
    if label is None or run.github is None:
        return
    with run.clock("revoke-approval"):
        removed = run.retrying(revoke_approval)(run.github, run.request, label)
    get_run_logger().info("removed the '%s' label: %s", label, "done" if removed else "it was already gone")


def _stale_event(run: _Run, head: str) -> State:
    """End an event's run for a commit that is no longer the PR head: nothing built, nothing cancelled."""
    reason = (
        f"{superseded_message(head)}: this event's commit {run.request.head_sha} is no longer the PR head"
    )
    get_run_logger().warning("stopping: %s; nothing built, no other run cancelled", reason)
    run.reporter.post(status.stale_event(head))
    return Cancelled(message=reason)


def _supersede(run: _Run, run_id: str, head: str | None) -> State | None:
    """Cancel older runs of the PR; end this run when it is a duplicate or already superseded."""
    with run.clock("supersede"), run.wiring.prefect_runs() as runs:
        done = run.retrying(supersede)(runs, run_id, run.request, run.stale, head)
    run.cancelled.extend(done.cancelled)
    for old in done.cancelled:
        run.reporter.post_elsewhere(
            old.run.repository, old.run.head_sha, status.superseded(run.request.head_sha)
        )
    if done.decision.verdict == "duplicate":
        return _finish(run, plan.skipped(run.params, done.decision.reason))
    if done.decision.verdict == "superseded":
        return _superseded(run, done.decision)
    return None


def _superseded(run: _Run, decision: SupersedeDecision) -> State:
    """End a run that a newer run of its PR replaced: Cancelled, with the superseded commit status."""
    newer = decision.because_of.head_sha if decision.because_of is not None else None
    get_run_logger().warning("stopping: %s", decision.reason)
    run.reporter.post(status.superseded(newer))
    return Cancelled(message=decision.reason)


def _subject(run: _Run, pull: PullRequestInfo | None) -> Subject:
    """The PR as GitHub has it now, reconciled with the event; then the ``pending`` status."""
    subject = plan.reconcile(run.params, pull)
    logger = get_run_logger()
    for note in subject.notes:
        (logger.warning if note.level == "warning" else logger.info)("%s", note.message)
    if subject.status_sha is not None and run.reporter.sha is None:
        run.reporter.use_sha(subject.status_sha)
    run.reporter.post(status.pending())
    return subject


def _build_and_publish(run: _Run, subject: Subject, secrets: dict[str, SecretStr]) -> State:
    """Check out the commit; skip a docs-only change; build (or reuse) the image; then publish it."""
    workspace = _fresh_workspace(run)
    run.reporter.started()
    try:
        with run.clock("checkout"):
            checkout = run.retrying(checkout_source)(
                run.wiring.git(), run.request, workspace / "ws", subject.base_sha
            )
        run.reporter.use_sha(checkout.head_sha)
        skip = _docs_only(run, checkout, subject.base_sha)
        if skip is not None:
            get_run_logger().info("%s", skip.reason)
            result = plan.skipped(run.params, skip.reason, head_sha=checkout.head_sha)
            return _finish(run, result, skip.status)
        image = _image(run, checkout, secrets)
    finally:
        git.remove_workspace(workspace)
    return _publish(run, checkout.head_sha, image)


def _docs_only(run: _Run, checkout: git.CheckoutResult, base_sha: str | None) -> Skip | None:
    """The path filter over the PR's changed paths (known only with a base commit)."""
    if base_sha is None:
        return None
    paths = run.config.path_filter.decide(list_changed_files(checkout, base_sha))
    get_run_logger().info("path filter: %s", paths.reason)
    return plan.skip_docs_only(paths)


def _fresh_workspace(run: _Run) -> Path:
    """An empty workspace: named after the run (so the cancellation hook finds it), else a temporary one."""
    root = run.settings.workspace_root
    if run.run_id is None:
        return Path(tempfile.mkdtemp(prefix=f"previews-pr{run.request.pr_number}-", dir=root))
    workspace = workspace_for(root, run.run_id)
    git.remove_workspace(workspace)
    workspace.mkdir(parents=True)
    return workspace


def _image(run: _Run, checkout: git.CheckoutResult, secrets: dict[str, SecretStr]) -> _Image:
    """The tag, and the image already published for it with these settings, or else a fresh build."""
    tag = plan.tag_for(run.request, checkout.head_sha, run.config)
    fingerprint = plan.fingerprint_of(run.config, run.request, checkout.siblings)
    published = _published(run, tag, checkout.head_sha, fingerprint)
    if published is not None:
        return _Image(tag, published=published)
    return _Image(tag, built=_build(run, checkout, tag, fingerprint, secrets))


def _build(
    run: _Run, checkout: git.CheckoutResult, tag: str, fingerprint: str, secrets: dict[str, SecretStr]
) -> BuiltImage:
    """Warm the cache (when enabled), then build the spec the plan gives."""
    config, request, engine = run.config, run.request, run.wiring.docker()
    cache_from: tuple[str, ...] = ()
    if config.cache_from_enabled:
        with run.clock("warm-cache"), run.wiring.registry() as registry:
            cache_from = warm_cache(registry, engine, request, config, run.login, run.settings.push_timeout)
    labels = plan.image_labels(
        config,
        request,
        head_sha=checkout.head_sha,
        tag=tag,
        fingerprint=fingerprint,
        created=datetime.now(UTC),
    )
    paths = checkout.build_paths(config.build_context, config.dockerfile)
    spec = plan.build_spec(config, request, paths=paths, tag=tag, labels=labels, cache_from=cache_from)
    with run.clock("build"):
        return run.retrying(build_image)(engine, spec, secrets, run.login, run.settings.docker_cli)


def _published(run: _Run, tag: str, head_sha: str, fingerprint: str) -> str | None:
    """The digest of the tag when it is already built from this commit with these settings."""
    logger = get_run_logger()
    if run.params.force_rebuild:
        logger.info("force_rebuild: building even if %s is already published", tag)
        return None
    with run.clock("check-published"), run.wiring.registry() as registry:
        try:
            return run.retrying(check_published)(registry, run.request, tag, head_sha, fingerprint)
        except PreviewsError as exc:
            logger.warning("could not ask the registry whether %s exists (%s); building", tag, exc)
            return None


def _publish(run: _Run, head_sha: str, image: _Image) -> State:
    """Push the new image (unless a newer run took over) or reuse the published one; then tell infra."""
    request = run.request
    if image.published is not None:
        pushed = PushedImage(f"{request.image_name}:{image.tag}", image.published, duration_s=0.0)
        get_run_logger().info(
            "already published: %s@%s; nothing to build or push", pushed.reference, pushed.digest
        )
    else:
        stopped = _stopped_late(run)
        if stopped is not None:
            return stopped
        with run.clock("push"):
            engine, protected, timeout = (
                run.wiring.docker(),
                run.config.protected_tags,
                run.settings.push_timeout,
            )
            pushed = run.retrying(push_image)(engine, request, image.tag, run.login, protected, timeout)
    target = run.wiring.infra_target(run.github)
    with run.clock("notify-infra"):
        notified = run.retrying(notify_infra)(
            target, run.github, request, pushed, image.tag, head_sha, run.params.delivery
        )
    result = plan.pushed(
        run.params,
        head_sha=head_sha,
        tag=image.tag,
        image=pushed.reference,
        digest=pushed.digest,
        built=image.built,
        notify=notified,
    )
    return _finish(run, result, status.pushed(pushed.reference))


def _stopped_late(run: _Run) -> State | None:
    """Right before the push: end the run when a newer run of the PR took over meanwhile."""
    if run.run_id is None:
        return None
    head = _current_head(run)
    with run.clock("check-superseded"), run.wiring.prefect_runs() as runs:
        late = run.retrying(check_superseded)(runs, run.run_id, run.stale, head)
    return _superseded(run, late) if late.verdict == "superseded" else None


def _current_head(run: _Run) -> str | None:
    """The PR's head on GitHub now (it may have moved during the build); None when it cannot be read."""
    if run.github is None:
        return None
    try:
        return run.retrying(read_pull_request)(run.github, run.request).head_sha
    except PreviewsError as exc:
        get_run_logger().warning("could not read the PR head before the push (%s); run order decides", exc)
        return None


def _finish(run: _Run, result: PreviewResult, update: StatusUpdate | None = None) -> State:
    """Post the final commit status, write the summary artifact, end the run Completed with the outcome."""
    result = replace(result, durations_s=run.clock.durations, flow_run_id=run.run_id)
    if update is not None:
        run.reporter.post(update, checks.RunDetail(result=result))
    if result.notify is not None and result.notify.sent and run.run_id is not None:
        _mark_created(run, run.run_id)
    key = f"preview-pr-{result.pr_number}" if result.pr_number else "preview-invalid"
    create_markdown_artifact(markdown=summary_markdown(result), key=key, description=result.reason)
    return Completed(message=result.reason, data=result)


def _mark_created(run: _Run, run_id: str) -> None:
    """Tag the run ``preview:created``: reconcile tears down a closed PR's preview by it (best effort)."""
    try:
        with run.wiring.prefect_runs() as runs:
            runs.mark(UUID(run_id), [PREVIEW_CREATED_TAG])
    except PreviewsError as exc:
        get_run_logger().warning("could not tag the run %s (%s)", PREVIEW_CREATED_TAG, exc)
