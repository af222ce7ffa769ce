"""The ``preview-cleanup`` flow: delete stale ``pr-<N>-<sha>`` tags without breaking any image still in use.

Tasks: list-versions -> read-image-source -> read-pr-states -> in-flight-builds -> plan-cleanup ->
apply-cleanup (skipped on a dry run). The repository whose PR states decide is ``PREVIEWS_CLEANUP_REPOSITORY``,
else the images' ``org.opencontainers.image.source`` label, else the ghcr.io image name; the result says which
decided and how many PR states stayed unknown. In-flight builds are matched to tags by SHA prefix. Every decision and its reason goes into a table artifact; each deletion emits ``previews.cleanup.deleted``.
The executor paces and retries each deletion itself (one rate-limited request at a time, honouring
``retry_after``), so apply-cleanup is the one task that Prefect does not retry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.events import emit_event
from prefect.states import Completed
from pydantic import BaseModel, ConfigDict

from flows.common import retry_transient_only, retrying, wired_flow
from previews.core.cleanup_scope import RepositoryChoice, choose_repository, in_flight_tags
from previews.core.retention import (
    ImageVersion,
    Plan,
    PrStatus,
    RetentionRules,
    Verdict,
    plan_retention,
    pr_status,
)
from previews.core.tags import parse_pr_tag
from previews.errors import GitHubError, PreviewsError, TransientError
from previews.github.client import GitHubClient
from previews.registry import ActionOutcome, ApplyReport, CleanupTarget, apply_plan
from previews.registry.oci import OciRegistry
from previews.runs import PrefectRuns
from previews.wiring import Wiring

PREVIEW_IMAGE_FLOW = "preview-image"


class CleanupResult(BaseModel):
    """What a cleanup run decided and did."""

    model_config = ConfigDict(frozen=True)

    dry_run: bool
    image: str
    tags: int
    planned_removals: int
    removed: int
    failed: int
    counts: dict[str, int]
    failures: list[str]
    repository: str | None = None
    repository_decided_by: str = ""
    unknown_pr_states: int = 0

    @property
    def summary(self) -> str:
        """One line for the run's state message."""
        verb = "would remove" if self.dry_run else "removed"
        done = self.planned_removals if self.dry_run else self.removed
        return f"{self.image}: {verb} {done} of {self.tags} tags; {self.failed} failed"


@task(name="list-versions", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def list_versions(target: CleanupTarget) -> list[ImageVersion]:
    """Every manifest of the image with its tags, created time and children."""
    versions = target.list_versions()
    get_run_logger().info("listed %d manifests, %d tags", len(versions), sum(len(v.tags) for v in versions))
    return versions


@task(name="read-image-source", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def read_image_source(registry: OciRegistry, image: str, tag: str) -> dict[str, str]:
    """The labels of the newest ``pr-*`` image: its ``org.opencontainers.image.source`` names its repository."""
    return registry.manifest_labels(image, tag)


@task(name="read-pr-states", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def read_pr_states(github: GitHubClient, repository: str, numbers: list[int]) -> dict[int, PrStatus]:
    """Each PR's state, read once per run; a PR GitHub refuses to show is unknown (only the TTL applies)."""
    logger = get_run_logger()
    states: dict[int, PrStatus] = {}
    for number in sorted(set(numbers)):
        try:
            states[number] = pr_status(github.request_json("GET", f"/repos/{repository}/pulls/{number}"))
        except GitHubError as exc:
            logger.warning("PR #%d state unknown (%s); only the TTL applies", number, type(exc).__name__)
    logger.info("read %d PR states (%d unknown)", len(states), len(set(numbers)) - len(states))
    return states


@task(name="in-flight-builds", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def in_flight_builds(runs: PrefectRuns) -> list[tuple[int, str]]:
    """``(pr, head sha)`` of every preview-image run in flight (the SHA as given, maybe short)."""
    found = {(r.pr_number, r.head_sha.lower()) for r in runs.in_flight(flow_name=PREVIEW_IMAGE_FLOW)}
    get_run_logger().info("%d builds in flight", len(found))
    return sorted(found)


@task(name="plan-cleanup", cache_policy=NO_CACHE)
def plan_cleanup(
    versions: list[ImageVersion],
    states: dict[int, PrStatus],
    in_flight: list[tuple[int, str]],
    target: CleanupTarget,
    rules: RetentionRules,
) -> Plan:
    """The retention plan (pure)."""
    return plan_retention(
        versions,
        states,
        now=datetime.now(UTC),
        rules=rules,
        in_flight=in_flight,
        backend=target.backend,
        supports_untag=target.supports_untag,
    )


@task(name="apply-cleanup", cache_policy=NO_CACHE)
def apply_cleanup(
    plan: Plan, target: CleanupTarget, registry: str, image: str, retries: int, backoff: float
) -> ApplyReport:
    """Carry out the plan; one ``previews.cleanup.deleted`` (or ``.untagged``) event per removal."""
    logger = get_run_logger()

    def done(outcome: ActionOutcome) -> None:
        action = outcome.action
        if not outcome.done:
            logger.warning(
                "could not remove %s (%s): %s", ", ".join(action.tags), action.digest, outcome.detail
            )
            return
        kind = "untagged" if action.kind.value == "untag" else "deleted"
        logger.info("%s %s (%s)", kind, ", ".join(action.tags) or "(untagged)", action.digest)
        emit_event(
            event=f"previews.cleanup.{kind}",
            resource={
                "prefect.resource.id": f"previews.image.{registry}/{image}@{action.digest}",
                "previews.registry": registry,
                "previews.image": image,
            },
            payload={
                "digest": action.digest,
                "tags": list(action.tags),
                "version_id": action.version_id,
                "children": list(outcome.children_deleted),
                "detail": outcome.detail,
            },
        )

    return apply_plan(plan, target, retries=retries, backoff=backoff, on_done=done)


def _table(plan: Plan, report: ApplyReport | None) -> list[dict[str, Any]]:
    failed = {tag: o.detail for o in (report.failed if report else ()) for tag in o.action.tags}
    rows = []
    for decision in plan.decisions:
        if decision.verdict is Verdict.KEEP:
            result = "kept"
        elif report is None:
            result = "dry run"
        else:
            done = decision.verdict.value + "d"
            result = "failed: " + failed[decision.tag][:120] if decision.tag in failed else done
        rows.append(
            {
                "tag": decision.tag,
                "digest": decision.digest[:19],
                "decision": decision.verdict.value,
                "reason": decision.reason.value,
                "blocked rule": decision.wanted.value if decision.wanted else "",
                "created": decision.created.isoformat(timespec="seconds") if decision.created else "",
                "result": result,
            }
        )
    return rows


@dataclass(frozen=True, slots=True)
class _Scope:
    """What decided the plan beside the listing: the repository choice and the PR states it gave."""

    choice: RepositoryChoice
    states: dict[int, PrStatus]
    unknown: int


def _repository(wiring: Wiring, image: str, versions: list[ImageVersion]) -> RepositoryChoice:
    """``PREVIEWS_CLEANUP_REPOSITORY``, else the newest ``pr-*`` image's source label, else the ghcr.io name."""
    settings, labels = wiring.settings, {}
    oldest = datetime.min.replace(tzinfo=UTC)
    pr_tags = [(v.created or oldest, t) for v in versions for t in v.tags if parse_pr_tag(t) is not None]
    newest = max(pr_tags)[1] if pr_tags else None
    if not settings.cleanup_repository and newest is not None:
        try:
            with wiring.registry() as registry:
                labels = retrying(read_image_source, settings)(registry, image, newest)
        except PreviewsError as exc:
            get_run_logger().warning("could not read the labels of %s: %s", newest, exc)
    choice = choose_repository(
        settings.cleanup_repository,
        labels=labels,
        labelled_tag=newest,
        registry=settings.registry,
        image=image,
    )
    get_run_logger().info("PR states from %s (%s)", choice.repository, choice.decided_by)
    return choice


def _pr_states(wiring: Wiring, repo: str | None, numbers: list[int]) -> dict[int, PrStatus]:
    """The PR states GitHub gives; none when the repository or credentials are missing or GitHub is down."""
    logger = get_run_logger()
    github = wiring.github() if repo else None
    if github is None or repo is None:
        logger.warning("no GitHub repository or credentials for PR states: only the TTL applies")
        return {}
    with github:
        try:
            return retrying(read_pr_states, wiring.settings)(github, repo, numbers)
        except TransientError as exc:
            logger.warning("GitHub did not answer (%s): PR states unknown, only the TTL applies", exc)
            return {}


def _plan(wiring: Wiring, target: CleanupTarget, image: str) -> tuple[Plan, _Scope]:
    """List the image, read the PR states and the builds in flight, and plan the removals."""
    settings = wiring.settings
    versions = retrying(list_versions, settings)(target)
    numbers = {p.pr_number for v in versions for t in v.tags if (p := parse_pr_tag(t)) is not None}
    choice = _repository(wiring, image, versions)
    states = _pr_states(wiring, choice.repository, sorted(numbers))
    with wiring.prefect_runs() as runs:
        builds = retrying(in_flight_builds, settings)(runs)
    in_flight = in_flight_tags((t for v in versions for t in v.tags), builds)
    plan = plan_cleanup(versions, states, in_flight, target, wiring.retention_rules())
    return plan, _Scope(choice, states, len(numbers - set(states)))


def _report(
    image: str, dry_run: bool, plan: Plan, scope: _Scope, report: ApplyReport | None
) -> CleanupResult:
    """The run's result, its table artifact and its summary artifact."""
    failures = [f"{', '.join(o.action.tags)}: {o.detail}" for o in (report.failed if report else ())]
    result = CleanupResult(
        dry_run=dry_run,
        image=image,
        tags=len(plan.decisions),
        planned_removals=len(plan.removed_tags),
        removed=len(report.removed_tags) if report else 0,
        failed=len(failures),
        counts=dict(plan.counts),
        failures=failures,
        repository=scope.choice.repository,
        repository_decided_by=scope.choice.decided_by,
        unknown_pr_states=scope.unknown,
    )
    create_table_artifact(key="preview-cleanup", table=_table(plan, report), description=result.summary)
    counts = "\n".join(f"| {reason} | {count} |" for reason, count in plan.counts.items())
    create_markdown_artifact(
        key="preview-cleanup-summary",
        markdown=f"## Preview cleanup{' (dry run)' if dry_run else ''}: {image}\n\n{result.summary}\n\n"
        f"PR states from {result.repository or 'no repository'} ({result.repository_decided_by}); "
        f"{result.unknown_pr_states} unknown\n\n"
        f"| decision: reason | tags |\n|---|---|\n{counts}\n",
        description=result.summary,
    )
    return result


@wired_flow(name="preview-cleanup", validate_parameters=True)
def preview_cleanup(dry_run: bool = True, *, wiring: Wiring) -> State[CleanupResult]:
    """Plan (and unless ``dry_run``, carry out) the removal of stale ``pr-*`` tags of the configured image."""
    settings, image = wiring.settings, wiring.cleanup_image()
    target = wiring.cleanup_target()
    try:
        plan, scope = _plan(wiring, target, image)
        report = None
        if not dry_run:
            report = apply_cleanup(
                plan, target, settings.registry, image, settings.retries, settings.retry_delay
            )
    finally:
        target.close()
    result = _report(image, dry_run, plan, scope, report)
    return Completed(message=result.summary, data=result)
