"""What the adapters that talk to the Prefect API share: Prefect's failures in our error classes, and the
lifecycle of their one sync client.

Connection failures, timeouts, 429 and 5xx become :class:`TransientPrefectError` (retried); any other answer,
and a missing object, :class:`PrefectError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self

import httpx
from prefect.client.orchestration import SyncPrefectClient
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


class PrefectAdapter:
    """An adapter over one sync Prefect client: enter it before use (``with``), or call :meth:`close`."""

    def __init__(self, client: SyncPrefectClient) -> None:
        self._client = client

    def __enter__(self) -> Self:
        with translated("connect"):
            self._client.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client's connections."""
        self._client.__exit__(None, None, None)
