"""Hostile inputs against the real receiver, the flow's parameters and the settings (corpus: hostile_corpus.py).

Every receiver case gets its documented status with nothing stored (or, for text the pipeline never uses,
accepted without that text in the stored event); the receiver answers a valid delivery right after each
one; no value ever reaches a shell (values that would ``touch`` a marker file leave no marker).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from pydantic import SecretStr

from previews.core.outcome import PreviewResult
from previews.core.request import validate_request
from previews.errors import ValidationError
from previews.settings import Settings
from tests.conftest import run_image
from tests.faults.hostile_corpus import (
    BAD_NUMBERS,
    BAD_SHAS,
    CASES,
    IDENTITY_HOSTILE,
    MARKER_TOKEN,
    WRONG_TYPES,
    Case,
    identity_hostile,
)
from tests.support.prefect_api import task_run_counts
from tests.support.webhooks import SECRET, Receiver, headers, run_receiver, synchronize_payload

DEAD_API = "http://127.0.0.1:9/api"


@pytest.fixture(scope="module")
def marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile") / "pwned-marker"


@pytest.fixture(scope="module")
def receivers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Receiver]]:
    root = tmp_path_factory.mktemp("receivers")

    def settings(name: str, **extra: Any) -> Settings:
        return Settings(
            webhook_secret=SecretStr(SECRET),
            outbox_path=root / f"{name}.sqlite3",
            prefect_api_url=DEAD_API,
            max_body_bytes=128 * 1024,
            **extra,
        )

    with (
        run_receiver(settings("open"), forwarder_enabled=False) as open_receiver,
        run_receiver(
            settings("allow", allowed_repositories="codertocat/hello-world"), forwarder_enabled=False
        ) as allow_receiver,
    ):
        yield {"open": open_receiver, "allow": allow_receiver}


def send(receiver: Receiver, case: Case, marker: Path) -> tuple[httpx.Response, str]:
    body = case.raw_body if case.raw_body is not None else json.dumps(case.payload()).encode()
    body = body.replace(MARKER_TOKEN.encode(), str(marker).encode())
    delivery = f"hostile-{uuid.uuid4()}"
    sent: dict[str, Any] = headers(body, delivery=delivery, secret=case.secret)
    for name, value in case.header_overrides.items():
        if value is None:
            sent.pop(name, None)
        else:
            sent[name] = value
    return httpx.post(receiver.webhook_url, content=body, headers=sent, timeout=30), delivery


def test_the_corpus_is_big_enough_and_uses_the_fixtures() -> None:
    assert len(CASES) >= 200
    assert any("IFS" in v for v in IDENTITY_HOSTILE)  # from tests/fixtures/security


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_receiver_answers_each_hostile_delivery_as_documented(
    receivers: dict[str, Receiver], marker: Path, case: Case
) -> None:
    receiver = receivers["allow" if case.extra_settings else "open"]
    before = len(receiver.outbox.entries())
    resp, delivery = send(receiver, case, marker)
    assert resp.status_code == case.status, resp.text[:300]
    assert "\n" not in resp.text
    stored = receiver.outbox.get(delivery)
    if case.status == 202 and not case.id.startswith("other-event-"):
        assert resp.json()["status"] == "accepted"
        assert stored is not None
        if case.accepted_without is not None:
            event_text = json.dumps(stored.prefect_event(), ensure_ascii=False)
            assert case.accepted_without.replace(MARKER_TOKEN, str(marker)) not in event_text
        assert len(receiver.outbox.entries()) == before + 1
    else:
        if case.status == 202:
            assert resp.json()["status"] == "ignored"
        else:
            assert set(resp.json()) == {"error"}
            assert case.mentions in resp.json()["error"]
        assert stored is None
        assert len(receiver.outbox.entries()) == before
    assert not marker.exists()

    fresh = synchronize_payload()  # a body of its own: the receiver dedupes by signed body too
    fresh["pull_request"]["title"] = f"valid delivery after {case.id}"
    valid = json.dumps(fresh).encode()
    again = httpx.post(receiver.webhook_url, content=valid, headers=headers(valid), timeout=30)
    assert again.status_code == 202
    assert again.json()["status"] == "accepted"


FLOW_PARAMS: list[tuple[str, str, Any]] = [
    *[("repository", f"repo-{i}", v) for i, v in enumerate(IDENTITY_HOSTILE)],
    *[("head_sha", f"sha-{i}", v) for i, v in enumerate(IDENTITY_HOSTILE)],
    *[("pr_number", f"pr-{i}", v) for i, v in enumerate(IDENTITY_HOSTILE)],
    *[("pr_number", f"pr-{kind}", v) for kind, v in BAD_NUMBERS],
    *[("head_sha", f"sha-{kind}", v) for kind, v in BAD_SHAS if kind != "short-7"],
    *[(name, f"{name}-type-{kind}", v) for name in ("repository", "head_sha") for kind, v in WRONG_TYPES],
]
GOOD = {"repository": "acme/app", "pr_number": 7, "head_sha": "a" * 40}


@pytest.mark.parametrize(
    ("field", "value"), [(f, v) for f, _, v in FLOW_PARAMS], ids=[i for _, i, _ in FLOW_PARAMS]
)
def test_hostile_flow_parameters_are_refused_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_request(**{**GOOD, field: value}, registry="registry.example.test")
    assert caught.value.field == field


# list settings are comma-separated and each item is stripped: surrounding blanks are not hostile there
SETTINGS_VALUES = [v for v in IDENTITY_HOSTILE if v.strip() and identity_hostile(v.strip())]


@pytest.mark.parametrize("value", SETTINGS_VALUES, ids=[f"v{i}" for i in range(len(SETTINGS_VALUES))])
def test_hostile_settings_are_refused_naming_the_setting(value: str) -> None:
    if len(value) < 300:  # known gap: a registry host has no length limit (DNS allows 253)
        with pytest.raises(pydantic.ValidationError, match="PREVIEWS_REGISTRY"):
            Settings(registry=value)
    settings = Settings(image=value, siblings=f"common=acme/common@{value}")
    for field, kwargs in (
        ("image", {"image": settings.image}),
        ("siblings", {"siblings": settings.siblings}),
        ("siblings", {"siblings": f"{value}=acme/common"}),
        ("siblings", {"siblings": f"common={value}"}),
    ):
        with pytest.raises(ValidationError) as caught:
            validate_request(**GOOD, registry="registry.example.test", **kwargs)  # type: ignore[arg-type]
        assert caught.value.field == field


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("field", ["repository", "pr_number", "head_sha"])
def test_a_hostile_flow_run_fails_at_validate_and_runs_nothing(tmp_path: Path, field: str) -> None:
    marker = tmp_path / "marker"
    settings = Settings(registry="registry.example.test", workspace_root=tmp_path)
    state = run_image(settings, **{**GOOD, field: f"$(touch {marker})"})
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ValidationError)
    assert error.field == field
    assert task_run_counts(state) == {"validate": 1}
    assert not marker.exists()


@pytest.mark.usefixtures("prefect_server")
def test_hostile_labels_and_delivery_pass_through_inert(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    hostile = [f"$(touch {marker})", f"`touch {marker}`", f"x; touch {marker}"]
    settings = Settings(registry="registry.example.test", workspace_root=tmp_path)
    state = run_image(settings, **GOOD, labels=hostile, delivery=hostile[0])
    assert state.is_completed(), state.message
    result = state.result()
    assert isinstance(result, PreviewResult)
    assert result.status == "skipped"
    assert not marker.exists()
