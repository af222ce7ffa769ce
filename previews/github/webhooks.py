"""GitHub webhook deliveries, sans I/O: verify the signature on the raw body, then parse it.

Follows GitHub's "Validating webhook deliveries": ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw
body>``, checked by the one verifier of :mod:`previews.signature` (constant time, fail closed) before the
body is parsed. Modelled on gidgethub's ``sansio.validate_event``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson

from previews.core.events import parse_delivery_id
from previews.errors import ValidationError
from previews.http import header as _header
from previews.signature import sign, verify_signature

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "Delivery",
    "decode_body",
    "parse_delivery",
    "parse_delivery_id",
    "parse_event_name",
    "sign",
    "verify_signature",
]

SIGNATURE_HEADER = "X-Hub-Signature-256"
EVENT_HEADER = "X-GitHub-Event"
DELIVERY_HEADER = "X-GitHub-Delivery"
_EVENT_RE = re.compile(r"[a-z_]{1,64}", re.ASCII)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One parsed webhook delivery: its event type, delivery id and JSON payload."""

    event: str
    delivery: str
    payload: dict[str, Any]


def parse_event_name(headers: Mapping[str, str]) -> str:
    """The ``X-GitHub-Event`` header, validated (``pull_request``, ``ping``, ...)."""
    value = _header(headers, EVENT_HEADER)
    if value is None or not value:
        raise ValidationError(EVENT_HEADER, "missing header")
    if _EVENT_RE.fullmatch(value) is None:
        raise ValidationError(EVENT_HEADER, f"{value[:40]!r} is not a GitHub event name")
    return value


def decode_body(content_type: str | None, body: bytes) -> dict[str, Any]:
    """Decode a JSON or ``application/x-www-form-urlencoded`` (``payload=<json>``) body into a JSON object."""
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError as exc:
            raise ValidationError("body", "form body is not UTF-8") from exc
        values = form.get("payload")
        if not values:
            raise ValidationError("payload", "form body has no payload= field")
        text: str | bytes = values[0]
    elif media == "application/json" or media.endswith("+json"):
        text = body
    else:
        raise ValidationError("Content-Type", f"{media[:60]!r} is not application/json or form-urlencoded")
    try:
        data = orjson.loads(text)  # 3x json.loads on GitHub's 25-30 KB payloads; strict RFC 8259
    except (ValueError, RecursionError) as exc:
        raise ValidationError("body", "is not valid JSON") from exc
    if not isinstance(data, dict):
        raise ValidationError("body", f"must be a JSON object, got {type(data).__name__}")
    return data


def parse_delivery(headers: Mapping[str, str], body: bytes) -> Delivery:
    """Read event type, delivery id and payload from a delivery whose signature was already verified."""
    event = parse_event_name(headers)
    delivery = parse_delivery_id(_header(headers, DELIVERY_HEADER), field=DELIVERY_HEADER)
    payload = decode_body(_header(headers, "Content-Type"), body)
    return Delivery(event=event, delivery=delivery, payload=payload)
