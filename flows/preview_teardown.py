"""The ``preview-teardown`` flow: a closed pull request tells infra to remove its preview environment."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.states import Completed

from flows.common import current_settings, log_notify, retry_transient_only, retrying
from previews.core.names import parse_pr_number, parse_repository
from previews.core.outcome import NotifyResult
from previews.errors import ValidationError
from previews.github import infra
from previews.github.client import GitHubClient
from previews.settings import Settings


def run_name() -> str:
    """``teardown-pr-<N>`` from the run's parameters."""
    try:
        number = parse_pr_number(flow_run.parameters.get("pr_number"))
    except ValidationError:
        return "teardown-invalid-input"
    return f"teardown-pr-{number}"


@task(name="notify-infra-teardown", cache_policy=NO_CACHE, retry_condition_fn=retry_transient_only)
def notify_teardown(
    repository: str, pr_number: int, delivery: str | None, settings: Settings
) -> NotifyResult:
    """Send ``preview-teardown`` to the infra target."""
    client = GitHubClient.from_settings(settings)
    try:
        target = infra.target_from_settings(settings, client)
        result = infra.notify_teardown(target, repository=repository, pr_number=pr_number, delivery=delivery)
    finally:
        if client is not None:
            client.close()
    log_notify(get_run_logger(), result)
    return result


@flow(name="preview-teardown", flow_run_name=run_name, validate_parameters=False)
def preview_teardown(repository: str, pr_number: int, delivery: str | None = None) -> State[NotifyResult]:
    """Tell infra that ``repository``'s PR ``pr_number`` closed, so its preview environment goes away."""
    settings = current_settings()
    repo = parse_repository(repository)
    number = parse_pr_number(pr_number)
    result = retrying(notify_teardown, settings)(repo, number, delivery, settings)
    create_markdown_artifact(
        key=f"teardown-pr-{number}",
        markdown=f"## Preview teardown: {repo}#{number}\n\n{result.reason}\n",
        description=result.reason,
    )
    return Completed(message=result.reason, data=result)
