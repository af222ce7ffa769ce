"""GitHub REST answers, sans I/O: status, headers and body in; the JSON value or a typed error out.

The one decoder of the GitHub family (the REST API and the Packages API alike), modelled on gidgethub's
``sansio.decipher_response``:

- 2xx -> the decoded JSON (None for an empty body); a body that is not JSON -> :class:`TransientGitHubError`;
- 403/429 that is a rate limit (``retry-after``, ``x-ratelimit-remaining: 0``, or GitHub's "rate limit"
  message; every 429) -> :class:`TransientGitHubError` with ``retry_after`` in seconds: what GitHub asked
  for, else until ``x-ratelimit-reset``, else the minute GitHub's documentation says to wait;
- 401, other 403 -> :class:`AuthError`; 404 -> :class:`GitHubNotFoundError`; 422 ->
  :class:`GitHubUnprocessableError` with GitHub's ``errors``; 5xx -> :class:`TransientGitHubError`;
  anything else (an unfollowed redirect, other 4xx) -> :class:`GitHubError`.

Messages read ``<where>: <status> <GitHub's message>`` and never contain a credential.
https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from previews.errors import (
    AuthError,
    GitHubError,
    GitHubNotFoundError,
    GitHubUnprocessableError,
    PreviewsError,
    TransientGitHubError,
)
from previews.http import retry_after

SECONDARY_LIMIT_WAIT = 60.0


def _details(status: int, body: bytes) -> tuple[str, list[dict[str, Any]]]:
    """GitHub's ``message`` (or a short snippet of a body that is not JSON) and the 422 ``errors`` list."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        snippet = " ".join(body.decode("utf-8", "replace").split())[:120]
        return snippet or _phrase(status) or "no body", []
    if not isinstance(data, dict):
        return str(data)[:200], []
    message = str(data.get("message") or _phrase(status))[:300]
    errors = [e for e in data.get("errors") or [] if isinstance(e, dict)]
    return message, errors


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        where = ".".join(str(error[k]) for k in ("resource", "field") if error.get(k))
        what = error.get("message") or error.get("code") or "invalid"
        parts.append(f"{where} {what}".strip())
    return "; ".join(parts)


def error_for(
    status: int, headers: Mapping[str, str], body: bytes, *, where: str, now: float
) -> PreviewsError:
    """The typed error for a GitHub answer that is not 2xx. ``now`` is the wall clock (epoch seconds)."""
    message, errors = _details(status, body)
    text = f"{where}: {status} {message}".rstrip()
    if status in (403, 429):
        wait = retry_after(headers, now=now)
        if wait is None and (status == 429 or "rate limit" in message.lower()):
            wait = SECONDARY_LIMIT_WAIT
        if wait is not None:
            return TransientGitHubError(f"{text} (rate limited)", status=status, retry_after=wait)
    if status in (401, 403):
        return AuthError(text, status=status)
    if status == 404:
        return GitHubNotFoundError(text, status=status)
    if status == 422:
        detail = _describe(errors)
        return GitHubUnprocessableError(
            f"{text} ({detail})" if detail else text, status=status, errors=errors
        )
    if status >= 500:
        return TransientGitHubError(text, status=status, retry_after=retry_after(headers, now=now))
    return GitHubError(text, status=status)


def decipher_response(status: int, headers: Mapping[str, str], body: bytes, *, where: str, now: float) -> Any:
    """The JSON value of a 2xx answer (None when the body is empty); otherwise raise :func:`error_for`."""
    if not 200 <= status < 300:
        raise error_for(status, headers, body, where=where, now=now)
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TransientGitHubError(f"{where}: {status} with a body that is not JSON", status=status) from exc
