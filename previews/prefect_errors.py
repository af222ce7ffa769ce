"""Prefect API failures in our error classes, shared by the adapters that talk to the Prefect API.

Connection failures, timeouts, 429 and 5xx become :class:`TransientPrefectError` (retried); any other answer,
and a missing object, :class:`PrefectError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from prefect.exceptions import ObjectNotFound

from previews.errors import PrefectError, TransientPrefectError


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Prefect API failures as :class:`TransientPrefectError` (transport, 429, 5xx) or :class:`PrefectError`."""
    try:
        yield
    except ObjectNotFound as exc:
        raise PrefectError(f"Prefect API {what}: not found") from exc
    except httpx.HTTPStatusError as exc:
        status = exc.response.status_code
        text = f"Prefect API {what}: {status}"
        if status == 429 or status >= 500:
            raise TransientPrefectError(text, status=status) from exc
        raise PrefectError(text, status=status) from exc
    except httpx.TransportError as exc:
        raise TransientPrefectError(f"Prefect API {what}: {type(exc).__name__}") from exc
