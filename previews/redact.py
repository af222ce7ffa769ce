"""The one redactor: text that leaves a module (logs, errors, artifacts, statuses) carries no secret.

:class:`Redactor` masks the secrets it was given (longest first, so a secret that contains another is
masked whole), the value of any ``Authorization:`` header and the user-info of any URL in the text.
:func:`redact_url` shows a URL as ``scheme://host[:port]/path``: no user-info, query or fragment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from pydantic import SecretStr

REDACTED = "***"
_AUTHORIZATION_RE = re.compile(r"(?i)(authorization:\s*\w+\s+)\S+")
_USERINFO_RE = re.compile(r"(?<=//)[^/@\s]*@")


class Redactor:
    """A callable that masks ``secrets`` (and any ``Authorization`` value or URL user-info) in text."""

    def __init__(self, secrets: Iterable[str | SecretStr | None] = ()) -> None:
        values = {s.get_secret_value() if isinstance(s, SecretStr) else s for s in secrets}
        self._secrets = tuple(sorted((v for v in values if v), key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        text = _AUTHORIZATION_RE.sub(rf"\g<1>{REDACTED}", text)
        return _USERINFO_RE.sub(f"{REDACTED}@", text)

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secret(s))"


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path`` of ``url``, for messages: without user-info, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
