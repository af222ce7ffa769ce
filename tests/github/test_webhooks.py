"""Signature verification and delivery parsing against GitHub's recorded test vectors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import SecretStr

from previews.errors import SignatureError, ValidationError
from previews.github.webhooks import decode_body, parse_delivery, sign, verify_signature
from tests.support.webhooks import FIXTURES, WEBHOOKS

SIGNATURES = WEBHOOKS / "signature"
VECTORS = json.loads((SIGNATURES / "test-vectors.json").read_text())
SHA256_VECTORS = [v for v in VECTORS["vectors"] if v["algorithm"] == "sha256"]
TASKCLUSTER = json.loads((SIGNATURES / "taskcluster-derived-raw" / "index.json").read_text())["vectors"]


@pytest.mark.parametrize("vector", SHA256_VECTORS, ids=lambda v: v["id"])
def test_recorded_vectors_verify(vector: dict[str, Any]) -> None:
    body = vector["payload"].encode("utf-8")
    verify_signature(body, vector["expected_header_value"], vector["secret"])
    verify_signature(body, vector["expected_header_value"], SecretStr(vector["secret"]))
    assert sign(body, vector["secret"]) == vector["expected_header_value"]


@pytest.mark.parametrize("vector", VECTORS["negative_vectors"], ids=lambda v: v["id"])
def test_recorded_negative_vectors_fail(vector: dict[str, Any]) -> None:
    with pytest.raises(SignatureError):
        verify_signature(vector["payload"].encode("utf-8"), vector["header_value"], vector["secret"])


@pytest.mark.parametrize("vector", TASKCLUSTER, ids=lambda v: v["body_file"])
def test_taskcluster_deliveries_verify_as_recorded(vector: dict[str, Any]) -> None:
    body = (SIGNATURES / "taskcluster-derived-raw" / vector["body_file"]).read_bytes()
    header = vector["headers"].get("X-Hub-Signature-256")
    if vector["x_hub_signature_256_matches"] is None:
        assert header is None
        with pytest.raises(SignatureError, match="missing"):
            verify_signature(body, header, vector["secret"])
    elif vector["x_hub_signature_256_matches"]:
        verify_signature(body, header, vector["secret"])
    else:
        with pytest.raises(SignatureError):
            verify_signature(body, header, vector["secret"])


def test_sha1_header_alone_is_not_enough() -> None:
    vector = next(v for v in VECTORS["vectors"] if v["algorithm"] == "sha1")
    with pytest.raises(SignatureError, match="malformed"):
        verify_signature(vector["payload"].encode(), vector["expected_header_value"], vector["secret"])


def test_reserialised_body_does_not_verify() -> None:
    vector = next(v for v in VECTORS["vectors"] if "uppercase" in v["id"])
    reserialised = json.dumps(json.loads(vector["payload"]), separators=(",", ":"), ensure_ascii=False)
    assert reserialised.encode() != vector["payload"].encode()
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(reserialised.encode(), vector["expected_header_value"], vector["secret"])


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_header_fails_closed_when_a_secret_is_set(header: str | None) -> None:
    with pytest.raises(SignatureError, match="missing"):
        verify_signature(b"{}", header, "s3cret")


@pytest.mark.parametrize("secret", [None, "", SecretStr("")])
@pytest.mark.parametrize("header", [None, "sha256=" + "0" * 64])
def test_the_verifier_fails_closed_without_a_secret(
    secret: SecretStr | str | None, header: str | None
) -> None:
    """One verifier, one contract: nothing verifies without a secret (whether a receiver may run without
    one is the receiver's decision, made where it starts)."""
    with pytest.raises(SignatureError, match="no secret"):
        verify_signature(b"{}", header, secret)


def test_signature_error_never_shows_the_secret_or_digest() -> None:
    secret = "very-secret-value"
    good = sign(b"body", secret)
    with pytest.raises(SignatureError) as info:
        verify_signature(b"other body", good, secret)
    assert secret not in str(info.value)
    assert good[7:] not in str(info.value)


def test_uppercase_hex_signature_is_accepted() -> None:
    header = sign(b"x", "k")
    verify_signature(b"x", "sha256=" + header[7:].upper(), "k")


def test_form_encoded_ping_from_gidgethub_parses() -> None:
    real = FIXTURES / "github" / "api" / "real" / "gidgethub"
    headers = json.loads((real / "ping_urlencoded.request-headers.json").read_text())
    body = (real / "ping_urlencoded.request-body.txt").read_bytes().strip()
    delivery = parse_delivery(headers, body)
    assert delivery.event == "ping"
    assert delivery.delivery == "44840d80-36a8-11e7-89d0-954e94e187c2"
    assert delivery.payload["zen"] == "Keep it logically awesome."
    assert delivery.payload["hook"]["config"]["content_type"] == "form"


@pytest.mark.parametrize(
    ("content_type", "body", "field"),
    [
        ("application/json", b"{not json", "body"),
        ("application/json", b"[1, 2]", "body"),
        ("application/json", b"\xff\xfe", "body"),
        ("application/x-www-form-urlencoded", b"other=1", "payload"),
        ("application/x-www-form-urlencoded", b"payload=%7Bnope", "body"),
        ("text/plain", b"{}", "Content-Type"),
    ],
)
def test_bad_bodies_name_the_field(content_type: str, body: bytes, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        decode_body(content_type, body)
    assert info.value.field == field


def test_json_content_type_with_charset() -> None:
    assert decode_body("application/json; charset=utf-8", b'{"a": 1}') == {"a": 1}


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"X-GitHub-Delivery": "abc"}, "X-GitHub-Event"),
        ({"X-GitHub-Event": "pull_request"}, "X-GitHub-Delivery"),
        ({"X-GitHub-Event": "pull_request\n", "X-GitHub-Delivery": "abc"}, "X-GitHub-Event"),
        ({"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": "../../etc/passwd"}, "X-GitHub-Delivery"),
        ({"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": "a" * 101}, "X-GitHub-Delivery"),
    ],
)
def test_bad_headers_name_the_header(headers: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_delivery(headers, b"{}")
    assert info.value.field == field


def test_header_names_are_case_insensitive() -> None:
    delivery = parse_delivery(
        {"x-github-event": "ping", "x-github-delivery": "d-1", "content-type": "application/json"}, b"{}"
    )
    assert (delivery.event, delivery.delivery) == ("ping", "d-1")
