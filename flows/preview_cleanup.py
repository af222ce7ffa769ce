"""The ``preview-cleanup`` flow: delete stale ``pr-<N>-<sha>`` tags without breaking any image still in use.

Tasks: list-versions -> read-pr-states -> in-flight-builds -> plan-cleanup -> apply-cleanup (skipped on a dry
run). Every decision and its reason goes into a table artifact; each deletion emits ``previews.cleanup.deleted``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.events import emit_event
from prefect.states import Completed
from pydantic import BaseModel, ConfigDict

from flows.common import backoff, current_settings, retry_transient_only
from previews.core.names import parse_repository
from previews.core.retention import (
    UNKNOWN_PR,
    ImageVersion,
    Plan,
    PrState,
    PrStatus,
    Verdict,
    plan_retention,
)
from previews.core.tags import parse_pr_tag
from previews.errors import GitHubError, TransientError
from previews.registry import (
    ActionOutcome,
    ApplyReport,
    CleanupTarget,
    apply_plan,
    cleanup_image,
    cleanup_target,
    retention_rules,
)
from previews.runs import PrefectRuns
from previews.settings import Settings

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


def pr_status(body: Any) -> PrStatus:
    """A :class:`PrStatus` from GitHub's pull-request JSON (state, closed_at)."""
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


@task(name="read-pr-states", cache_policy=NO_CACHE)
def read_pr_states(numbers: list[int], settings: Settings) -> dict[int, PrStatus]:
    """Each PR's state, read once per run; a PR that cannot be read is unknown (only the TTL applies)."""
    from previews.github.client import GitHubClient

    logger = get_run_logger()
    repository = settings.cleanup_repository
    client = GitHubClient.from_settings(settings) if repository else None
    if client is None or repository is None:
        logger.warning("no GitHub repository or credentials for PR states: only the TTL applies")
        return {}
    repo = parse_repository(repository, field="PREVIEWS_CLEANUP_REPOSITORY")
    states: dict[int, PrStatus] = {}
    unknown = 0
    with client:
        for number in sorted(set(numbers)):
            try:
                states[number] = pr_status(client.request_json("GET", f"/repos/{repo}/pulls/{number}"))
            except (GitHubError, TransientError) as exc:
                unknown += 1
                logger.warning("PR #%d state unknown (%s); only the TTL applies", number, type(exc).__name__)
    logger.info("read %d PR states (%d unknown)", len(states), unknown)
    return states


@task(name="in-flight-builds", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def in_flight_builds(settings: Settings) -> list[tuple[int, str]]:
    """``(pr, sha prefix)`` of every preview-image run in flight; their tags are never deleted."""
    from prefect.client.orchestration import get_client

    with PrefectRuns(get_client(sync_client=True)) as runs:
        found = {
            (r.pr_number, r.head_sha[: settings.tag_sha_length])
            for r in runs.in_flight(flow_name=PREVIEW_IMAGE_FLOW)
        }
    get_run_logger().info("%d builds in flight", len(found))
    return sorted(found)


@task(name="plan-cleanup", cache_policy=NO_CACHE)
def plan_cleanup(
    versions: list[ImageVersion],
    states: dict[int, PrStatus],
    in_flight: list[tuple[int, str]],
    target: CleanupTarget,
    settings: Settings,
) -> Plan:
    """The retention plan (pure)."""
    return plan_retention(
        versions,
        states,
        now=datetime.now(UTC),
        rules=retention_rules(settings),
        in_flight=in_flight,
        backend=target.backend,
        supports_untag=target.supports_untag,
    )


@task(name="apply-cleanup", cache_policy=NO_CACHE)
def apply_cleanup(plan: Plan, target: CleanupTarget, image: str, settings: Settings) -> ApplyReport:
    """Carry out the plan; one ``previews.cleanup.deleted`` (or ``.untagged``) event per removal."""
    logger = get_run_logger()
    resource_base = f"previews.image.{settings.registry}/{image}"

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
                "prefect.resource.id": f"{resource_base}@{action.digest}",
                "previews.registry": settings.registry,
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

    return apply_plan(
        plan,
        target,
        retries=settings.retries,
        backoff=settings.retry_delay,
        on_done=done,
    )


def _table(plan: Plan, report: ApplyReport | None) -> list[dict[str, Any]]:
    failed = {tag: o.detail for o in (report.failed if report else ()) for tag in o.action.tags}
    rows = []
    for decision in plan.decisions:
        if decision.verdict is Verdict.KEEP:
            result = "kept"
        elif report is None:
            result = "dry run"
        else:
            result = (
                "failed: " + failed[decision.tag][:120]
                if decision.tag in failed
                else decision.verdict.value + "d"
            )
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


@flow(name="preview-cleanup", validate_parameters=True)
def preview_cleanup(dry_run: bool = True) -> State[CleanupResult]:
    """Plan (and unless ``dry_run``, carry out) the removal of stale ``pr-*`` tags of the configured image."""
    settings = current_settings()
    image = cleanup_image(settings)
    target = cleanup_target(settings)
    try:
        versions = list_versions.with_options(
            retries=settings.retries, retry_delay_seconds=backoff(settings)
        )(target)
        numbers = [p.pr_number for v in versions for t in v.tags if (p := parse_pr_tag(t)) is not None]
        states = read_pr_states(numbers, settings)
        in_flight = in_flight_builds(settings)
        plan = plan_cleanup(versions, states, in_flight, target, settings)
        report = None if dry_run else apply_cleanup(plan, target, image, settings)
    finally:
        target.close()

    removed = len(report.removed_tags) if report else 0
    failures = [f"{', '.join(o.action.tags)}: {o.detail}" for o in (report.failed if report else ())]
    result = CleanupResult(
        dry_run=dry_run,
        image=image,
        tags=len(plan.decisions),
        planned_removals=len(plan.removed_tags),
        removed=removed,
        failed=len(failures),
        counts=dict(plan.counts),
        failures=failures,
    )
    create_table_artifact(key="preview-cleanup", table=_table(plan, report), description=result.summary)
    counts = "\n".join(f"| {reason} | {count} |" for reason, count in plan.counts.items())
    create_markdown_artifact(
        key="preview-cleanup-summary",
        markdown=f"## Preview cleanup{' (dry run)' if dry_run else ''}: {image}\n\n{result.summary}\n\n"
        f"| decision: reason | tags |\n|---|---|\n{counts}\n",
        description=result.summary,
    )
    return Completed(message=result.summary, data=result)
