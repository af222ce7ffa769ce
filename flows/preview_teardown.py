"""The ``preview-teardown`` flow: a closed pull request tells infra to remove its preview environment."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.states import Completed

from flows.common import log_notify, retry_transient_only, retrying, wired_flow
from previews.core.names import parse_pr_number, parse_repository
from previews.core.outcome import NotifyResult
from previews.errors import ValidationError
from previews.github import infra
from previews.wiring import Wiring


def run_name() -> str:
    """``teardown-pr-<N>`` from the run's parameters."""
    try:
        number = parse_pr_number(flow_run.parameters.get("pr_number"))
    except ValidationError:
        return "teardown-invalid-input"
    return f"teardown-pr-{number}"


@task(name="notify-infra-teardown", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def notify_teardown(
    target: infra.InfraTarget | infra.NoTarget, repository: str, pr_number: int, delivery: str | None
) -> NotifyResult:
    """Send ``preview-teardown`` to the infra target."""
    result = infra.notify_teardown(target, repository=repository, pr_number=pr_number, delivery=delivery)
    log_notify(get_run_logger(), result)
    return result


@wired_flow(name="preview-teardown", flow_run_name=run_name, validate_parameters=False)
def preview_teardown(
    repository: str, pr_number: int, delivery: str | None = None, *, wiring: Wiring
) -> State[NotifyResult]:
    """Tell infra that ``repository``'s PR ``pr_number`` closed, so its preview environment goes away."""
    repo, number = parse_repository(repository), parse_pr_number(pr_number)
    github = wiring.github()
    try:
        target = wiring.infra_target(github)
        result = retrying(notify_teardown, wiring.settings)(target, repo, number, delivery)
    finally:
        if github is not None:
            github.close()
    create_markdown_artifact(
        key=f"teardown-pr-{number}",
        markdown=f"## Preview teardown: {repo}#{number}\n\n{result.reason}\n",
        description=result.reason,
    )
    return Completed(message=result.reason, data=result)
