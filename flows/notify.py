"""Telling infra about previews: the shared steps of the image and teardown flows."""

from __future__ import annotations

import logging

from previews.core.outcome import NotifyResult
from previews.github import infra
from previews.github.client import GitHubClient
from previews.settings import Settings


def send_create(
    *,
    settings: Settings,
    client: GitHubClient | None,
    repository: str,
    pr_number: int,
    sha: str,
    image: str,
    digest: str,
    tag: str,
    delivery: str | None,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> NotifyResult:
    """Send ``preview-create`` pinned by digest, unless the SHA is no longer the PR head."""
    target = infra.target_from_settings(settings, client)
    result = infra.notify_create(
        target,
        client=client,
        repository=repository,
        pr_number=pr_number,
        sha=sha,
        image=image,
        digest=digest,
        tag=tag,
        delivery=delivery,
    )
    (logger.info if result.sent else logger.warning)("%s", result.reason)
    return result


def send_teardown(
    repository: str,
    pr_number: int,
    *,
    delivery: str | None,
    settings: Settings,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> NotifyResult:
    """Send ``preview-teardown`` for a closed PR."""
    client = GitHubClient.from_settings(settings)
    try:
        target = infra.target_from_settings(settings, client)
        result = infra.notify_teardown(target, repository=repository, pr_number=pr_number, delivery=delivery)
    finally:
        if client is not None:
            client.close()
    (logger.info if result.sent else logger.warning)("%s", result.reason)
    return result
