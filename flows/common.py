"""What every flow shares: loading settings, the retry policy, step timing."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun

from blocks import PreviewsConfig, PreviewsCredentials
from previews.core.outcome import NotifyResult
from previews.errors import TransientError
from previews.settings import Settings


def load_settings(settings: Settings | None = None) -> Settings:
    """The composition root of a flow run: environment, then the config and credentials blocks if named."""
    resolved = settings if settings is not None else Settings()
    if resolved.config_block:
        resolved = PreviewsConfig.load(resolved.config_block).apply(resolved)  # type: ignore[union-attr]
    if resolved.credentials_block:
        resolved = PreviewsCredentials.load(resolved.credentials_block).apply(resolved)  # type: ignore[union-attr]
    return resolved


def retry_transient_only(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a task run only when it failed with a :class:`TransientError` (stamina's rule)."""
    return isinstance(state.data, TransientError)


@contextmanager
def timed(durations: dict[str, float], step: str) -> Iterator[None]:
    """Record the wall time of ``step`` into ``durations`` whether it succeeds or not."""
    start = time.monotonic()
    try:
        yield
    finally:
        durations[step] = round(time.monotonic() - start, 3)


_SETTINGS: ContextVar[Settings | None] = ContextVar("previews_settings", default=None)


@contextmanager
def use_settings(settings: Settings) -> Iterator[None]:
    """Run flows called inside this block with ``settings`` instead of the environment (CLI, tests)."""
    token = _SETTINGS.set(settings)
    try:
        yield
    finally:
        _SETTINGS.reset(token)


def current_settings() -> Settings:
    """Settings passed in by :func:`use_settings`, else the environment; then blocks applied."""
    return load_settings(_SETTINGS.get())


def backoff(settings: Settings) -> list[float]:
    """Exponential retry delays from the bounded settings: delay, 2*delay, 4*delay, ..."""
    return [settings.retry_delay * 2**attempt for attempt in range(settings.retries)]


P = ParamSpec("P")
R = TypeVar("R")


def retrying(task: Task[P, R], settings: Settings) -> Task[P, R]:
    """``task`` with the retry count and backoff of ``settings`` (only transient errors are retried)."""
    return task.with_options(retries=settings.retries, retry_delay_seconds=backoff(settings))


def log_notify(logger: logging.Logger | logging.LoggerAdapter[logging.Logger], result: NotifyResult) -> None:
    """Put what notify-infra did (or why it did nothing) in the run's log."""
    (logger.info if result.sent else logger.warning)("%s", result.reason)
