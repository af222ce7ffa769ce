"""What every flow shares: where its composition root comes from, the one retry layer, step timing.

Each flow is built over a :data:`WiringSource`, a function that returns the run's composition root. The
deployed flows (the module-level ``preview_image`` and friends, the entrypoints in prefect.yaml) use
:func:`blocks.load_wiring`: the environment and the named blocks, read when the run starts. The CLI and the
tests build the same flow over the values they hold. Nothing reaches a flow through a global.

Retries live here and nowhere else in a flow's work: Prefect task retries (visible in the UI), counted and
spaced by ``PREVIEWS_RETRIES`` / ``PREVIEWS_RETRY_DELAY``, for transient errors only, after at least the
wait the remote asked for (:mod:`previews.core.retry`). Adapters make one attempt each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from prefect import Task, get_run_logger
from prefect.client.schemas.objects import State, TaskRun

from previews.core.outcome import NotifyResult
from previews.core.retry import MAX_RETRY_AFTER, backoff, planned_delay, retry_wait
from previews.settings import Settings
from previews.wiring import Wiring

WiringSource = Callable[[], Wiring]
P = ParamSpec("P")
R = TypeVar("R")


class TransientOnly:
    """A task's ``retry_condition_fn``: retry after a :class:`TransientError` only (stamina's rule).

    When the remote said how long to wait (``retry_after``) and that is longer than the scheduled backoff,
    the difference is waited here first, up to ``max_wait``; a remote asking for longer is not retried.
    """

    def __init__(
        self, max_wait: float = MAX_RETRY_AFTER, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.max_wait = max_wait
        self._sleep = sleep

    def __call__(self, task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
        planned = planned_delay(task.retry_delay_seconds, max(task_run.run_count - 1, 0))
        error = state.data if isinstance(state.data, BaseException) else None
        wait = retry_wait(error, planned=planned, max_wait=self.max_wait)
        if wait is None:
            return False
        if wait > planned:
            get_run_logger().info("the remote asked to wait %.1fs before retrying", wait)
            self._sleep(wait - planned)
        return True


retry_transient_only = TransientOnly()


def retrying(task: Task[P, R], settings: Settings) -> Task[P, R]:
    """``task`` with the retry count and backoff of ``settings``, retrying transient errors only."""
    return task.with_options(
        retries=settings.retries,
        retry_delay_seconds=backoff(settings.retry_delay, settings.retries),
        retry_condition_fn=retry_transient_only,
    )


class Stopwatch:
    """The wall time of each step of one run, for its summary (``PreviewResult.durations_s``)."""

    def __init__(self) -> None:
        self.durations: dict[str, float] = {}

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        """Time ``step`` whether it succeeds or not."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.durations[step] = round(time.monotonic() - start, 3)


def log_notify(logger: logging.Logger | logging.LoggerAdapter[logging.Logger], result: NotifyResult) -> None:
    """Put what notify-infra did (or why it did nothing) in the run's log."""
    (logger.info if result.sent else logger.warning)("%s", result.reason)
