"""What every HTTP client of `previews` shares, sans I/O: origins, pages, redirects and how long to wait.

Nothing here sends a request (gidgethub's ``sansio`` is the model): a status, headers and URLs go in, a
decision comes out. The clients (:mod:`previews.github.client`, :mod:`previews.registry.oci`, the infra
webhook) do the I/O and ask this module at every point where a remote could steer them:

- credentials go only to the origin a client was configured for: each ``Link``, ``Location`` and redirect
  is checked with :func:`check_origin` before anything is sent to it, and a foreign one raises
  :class:`~previews.errors.CrossOriginError` naming that origin;
- a ``rel="next"`` chain (:class:`PageChain`) stays on that origin, ends at a link it has already read, and
  stops after ``max_pages`` (saying so, so a listing that must be complete can refuse to go on);
- :func:`retry_after` is the one reader of "how long the remote asked us to wait": ``Retry-After`` (seconds
  or an HTTP date), else GitHub's ``x-ratelimit-remaining: 0`` with ``x-ratelimit-reset``.

https://www.rfc-editor.org/rfc/rfc9110#name-retry-after, https://www.rfc-editor.org/rfc/rfc8288 (Link),
https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping
from urllib.parse import urljoin, urlsplit

from previews.errors import CrossOriginError

DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
_LINK_RE = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]*)*)")
_REL_RE = re.compile(r"""\brel\s*=\s*(?:"([^"]*)"|([^\s;,]+))""", re.IGNORECASE)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name`` whatever its case in ``headers`` (a dict or ``httpx.Headers``)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((item for key, item in headers.items() if key.lower() == lowered), None)


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url``, lower-cased, with the scheme's default port filled in.

    A URL without a host, or with a port that is not a number, gives ``scheme://?`` (never equal to a
    configured origin).
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = parts.hostname
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        port = None
    if not host or port is None:
        return f"{scheme or '?'}://?"
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def is_https(url: str) -> bool:
    """True for an ``https://`` URL."""
    return urlsplit(url.strip()).scheme.lower() == "https"


def check_origin(url: str, allowed: str, *, what: str) -> str:
    """``url`` if it is on the origin ``allowed`` (from :func:`origin`); else raise ``CrossOriginError``."""
    found = origin(url)
    if found != allowed:
        raise CrossOriginError(
            f"{what}: refused to follow the remote to {found}; credentials go only to {allowed}",
            origin=found,
            allowed=allowed,
        )
    return url


def redirect_location(status: int, headers: Mapping[str, str], url: str) -> str | None:
    """The absolute URL a 3xx answer to ``url`` points at, or None when the answer is not a redirect."""
    if status not in REDIRECT_STATUSES:
        return None
    location = header(headers, "location")
    return urljoin(url, location.strip()) if location and location.strip() else None


def next_link(headers: Mapping[str, str]) -> str | None:
    """The target of ``Link: <...>; rel="next"`` exactly as given (it may be relative), or None."""
    value = header(headers, "link")
    if not value:
        return None
    for match in _LINK_RE.finditer(value):
        rel = _REL_RE.search(match.group(2))
        if rel is not None and "next" in (rel.group(1) or rel.group(2) or "").lower().split():
            return match.group(1).strip()
    return None


class PageChain:
    """The ``rel="next"`` chain of one listing: on one origin, without loops, at most ``max_pages`` pages.

    Call :meth:`follow` after each page with the URL that was read and its headers; it returns the next
    page's absolute URL, or None when the chain ends: no next link, a link read before (a loop), or the cap.
    ``truncated`` tells the cap apart, for listings that must be complete (a cleanup that missed a page
    could take a kept tag's manifest for unreferenced).
    """

    def __init__(self, *, allowed: str, what: str, max_pages: int) -> None:
        if max_pages < 1:
            raise ValueError("max_pages must be at least 1")
        self.allowed = allowed
        self.what = what
        self.max_pages = max_pages
        self.pages = 0
        self.truncated = False
        self._seen: set[str] = set()

    def follow(self, url: str, headers: Mapping[str, str]) -> str | None:
        """Count the page read from ``url``; the next page's URL, or None at the end of the chain."""
        self.pages += 1
        self._seen.add(url)
        link = next_link(headers)
        if link is None:
            return None
        target = check_origin(urljoin(url, link), self.allowed, what=self.what)
        if target in self._seen:
            return None
        if self.pages >= self.max_pages:
            self.truncated = True
            return None
        return target


def _delay(value: str, now: float) -> float | None:
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - now)


def retry_after(headers: Mapping[str, str], *, now: float) -> float | None:
    """Seconds the remote asked us to wait, or None when it did not say.

    ``Retry-After`` (delta-seconds or an HTTP date) wins; else ``x-ratelimit-remaining: 0`` waits until
    ``x-ratelimit-reset`` (epoch seconds, GitHub's primary limit). ``now`` is the wall clock (epoch seconds).
    """
    value = header(headers, "retry-after")
    if value:
        delay = _delay(value, now)
        if delay is not None:
            return delay
    if (header(headers, "x-ratelimit-remaining") or "").strip() == "0":
        try:
            reset = float(header(headers, "x-ratelimit-reset") or "")
        except ValueError:
            return None
        return max(0.0, reset - now) if math.isfinite(reset) else None
    return None


def is_transient(status: int) -> bool:
    """True for answers worth a later retry: 408, 429 and every 5xx."""
    return status in (408, 429) or status >= 500
