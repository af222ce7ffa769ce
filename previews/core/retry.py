"""When to retry, and after how long: transient failures only, honouring what the remote asked for.

Stamina's rule: retrying on any exception is an attractive nuisance. Only a :class:`TransientError` (5xx,
429, timeouts, connection resets, rate limits) is worth another attempt; everything else fails at once.
A remote that said how long to wait (``Retry-After``, a rate-limit reset) is waited for, up to ``max_wait``;
a longer wait is not worth holding a run for, so the error stands.
"""

from __future__ import annotations

from collections.abc import Sequence

from previews.errors import TransientError

MAX_RETRY_AFTER = 120.0


def backoff(delay: float, retries: int) -> list[float]:
    """Exponential delays before each retry: ``delay``, ``2*delay``, ``4*delay``, ... (``retries`` of them)."""
    return [delay * 2**attempt for attempt in range(retries)]


def planned_delay(delays: Sequence[float] | float | None, retry: int) -> float:
    """The delay scheduled before retry number ``retry`` (0-based); the last one repeats."""
    if delays is None:
        return 0.0
    if isinstance(delays, int | float):
        return float(delays)
    if not delays:
        return 0.0
    return float(delays[min(retry, len(delays) - 1)])


def retry_wait(
    error: BaseException | None, *, planned: float, max_wait: float = MAX_RETRY_AFTER
) -> float | None:
    """Seconds to wait before retrying after ``error``, or None when it must not be retried."""
    if not isinstance(error, TransientError):
        return None
    if error.retry_after is None:
        return planned
    if error.retry_after > max_wait:
        return None
    return max(planned, error.retry_after)
