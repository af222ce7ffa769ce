"""What every flow shares: how it receives its composition root, the one retry layer, step timing.

A flow's body takes its composition root as a keyword argument, ``wiring``, that is not a flow parameter
(:func:`wired_flow`). The deployed flow (the module-level name, the entrypoint in prefect.yaml) gets it from
:func:`blocks.load_wiring` when the run starts: the environment, then the named blocks. The CLI and the tests
run the same flow ``.over()`` the values they hold. Nothing reaches a flow through a global.

Retries live here and nowhere else in a flow's work: Prefect task retries (visible in the UI), counted and
spaced by ``PREVIEWS_RETRIES`` / ``PREVIEWS_RETRY_DELAY``, for transient errors only, after at least the
wait the remote asked for (:mod:`previews.core.retry`). Adapters make one attempt each.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from prefect import Flow, Task, get_run_logger
from prefect.client.schemas.objects import State, TaskRun
from prefect.exceptions import MissingContextError

from blocks import load_wiring
from previews.core.outcome import NotifyResult
from previews.core.retry import MAX_RETRY_AFTER, backoff, planned_delay, retry_wait
from previews.settings import Settings
from previews.wiring import Wiring

WiringSource = Callable[[], Wiring]
P = ParamSpec("P")
R = TypeVar("R")


class WiredFlow(Flow[..., R]):
    """A flow over one source of its composition root; :meth:`over` gives the same flow over another.

    The body's signature without ``wiring`` is the flow's signature (its parameters in the UI, the API, the
    event triggers); each run calls ``source()`` once and hands the result to the body.
    """

    def __init__(self, body: Callable[..., R], source: WiringSource, **options: Any) -> None:
        signature = inspect.signature(body, eval_str=True)
        public = [p for p in signature.parameters.values() if p.name != "wiring"]

        @functools.wraps(body)
        def run(*args: Any, **kwargs: Any) -> R:
            return body(*args, **kwargs, wiring=source())

        run.__signature__ = signature.replace(parameters=public)  # type: ignore[attr-defined]
        run.__annotations__ = {k: v for k, v in body.__annotations__.items() if k != "wiring"}
        super().__init__(fn=run, **options)
        self.body, self.source, self.options = body, source, options

    def over(self, source: WiringSource) -> WiredFlow[R]:
        """This flow with its composition root from ``source`` (a test's or the CLI's values)."""
        return WiredFlow(self.body, source, **self.options)


def wired_flow(**options: Any) -> Callable[[Callable[..., R]], WiredFlow[R]]:
    """``@flow(**options)`` for a body that takes ``wiring``: deployed, the environment and the blocks."""

    def decorate(body: Callable[..., R]) -> WiredFlow[R]:
        return WiredFlow(body, load_wiring, **options)

    return decorate


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
            _logger().info("the remote asked to wait %.1fs before retrying", wait)
            self._sleep(wait - planned)
        return True


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The task run's logger (the line shows in the UI), or this module's outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


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
        self.failed: str | None = None

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        """Time ``step`` whether it succeeds or not; remember it as ``failed`` when it raises."""
        start = time.monotonic()
        try:
            yield
        except BaseException:
            self.failed = step
            raise
        finally:
            self.durations[step] = round(time.monotonic() - start, 3)


def log_notify(logger: logging.Logger | logging.LoggerAdapter[logging.Logger], result: NotifyResult) -> None:
    """Put what notify-infra did (or why it did nothing) in the run's log."""
    (logger.info if result.sent else logger.warning)("%s", result.reason)
