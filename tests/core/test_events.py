"""The pull_request event model against every real payload, hostile values, and the Prefect event contract."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from previews.core.events import (
    EVENT_NAMESPACE,
    event_id,
    parse_pull_request_event,
    parse_received,
    prefect_event,
)
from previews.errors import ValidationError
from tests.support.webhooks import FIXTURES, PULL_REQUEST_FIXTURES, WEBHOOKS, load_payload

HOSTILE = json.loads((FIXTURES / "security" / "hostile-inputs.json").read_text())
HOSTILE_STRINGS = [item["value"] for item in HOSTILE["branch_names"] + HOSTILE["pr_titles_and_strings"]] + [
    item["value"] for item in HOSTILE["emails"]
]
OCTOKIT = WEBHOOKS / "octokit-webhooks" / "pull_request"
FORKS = {
    "webhook-pr-open.json",
    "webhook-pr-from-fork.json",
    "webhook-pr-close.json",
    "github_pr_event.json",
    "pr_synchronize.json",
    "webhook.pull_request.missing_head_repo.json",
}


def test_fixture_list_covers_every_source() -> None:
    sources = {p.parent.name for p in PULL_REQUEST_FIXTURES}
    assert {
        "pull_request",
        "real-drone-go-scm",
        "real-packit-service",
        "real-reallyfastci",
        "real-taskcluster",
    } <= sources
    assert len(PULL_REQUEST_FIXTURES) >= 25


@pytest.mark.parametrize("path", PULL_REQUEST_FIXTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_real_payload_validates(path: Path) -> None:
    raw = load_payload(path)
    event = parse_pull_request_event(raw, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    pr = raw["pull_request"]
    assert event.action == raw["action"]
    assert event.number == raw["number"] == pr["number"]
    assert event.repository == raw["repository"]["full_name"]
    assert event.head_sha == pr["head"]["sha"]
    assert event.base_sha == pr["base"]["sha"]
    assert event.head_repository == (pr["head"]["repo"] or {}).get("full_name")
    assert event.labels == tuple(label["name"] for label in pr.get("labels") or [])
    assert event.sender == raw["sender"]["login"]
    assert event.merged is bool(pr.get("merged"))
    assert event.draft is bool(pr.get("draft"))
    assert event.state == pr["state"]
    assert event.fork is (path.name in FORKS)


def test_deleted_fork_has_no_head_repository_and_counts_as_fork() -> None:
    raw = load_payload(WEBHOOKS / "real-taskcluster" / "webhook.pull_request.missing_head_repo.json")
    event = parse_pull_request_event(raw, delivery="test-missing-head-repo")
    assert (event.head_repository, event.clone_url, event.fork) == (None, None, True)
    assert event.payload()["head_repository"] is None


def test_fork_comparison_ignores_case() -> None:
    raw = load_payload(OCTOKIT / "opened.payload.json")
    raw["pull_request"]["head"]["repo"]["full_name"] = "CODERTOCAT/hello-world"
    assert parse_pull_request_event(raw, delivery="d").fork is False


def test_merged_close_from_reallyfastci() -> None:
    raw = load_payload(WEBHOOKS / "real-reallyfastci" / "webhook-pr-close.json")
    event = parse_pull_request_event(raw, delivery="d")
    assert (event.action, event.merged, event.state, event.fork) == ("closed", True, "closed", True)


def test_prefect_event_follows_the_contract() -> None:
    raw = load_payload(OCTOKIT / "synchronize.payload.json")
    delivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    event = parse_pull_request_event(raw, delivery=delivery)
    moment = datetime(2026, 11, 28, 12, 0, 1, 250000, tzinfo=UTC)
    body = prefect_event(event, occurred=moment)
    assert body["id"] == str(uuid.uuid5(EVENT_NAMESPACE, delivery))
    assert body["occurred"] == "2026-11-28T12:00:01.250000Z"
    assert body["event"] == "github.pull_request.synchronize"
    assert body["resource"] == {
        "prefect.resource.id": "github.pull-request.codertocat/hello-world#2",
        "github.repository": "Codertocat/Hello-World",
        "github.pull-request.number": "2",
        "github.sha": raw["pull_request"]["head"]["sha"],
    }
    assert all(isinstance(v, str) for v in body["resource"].values())
    payload = body["payload"]
    assert payload["number"] == 2
    assert payload["repository"] == "Codertocat/Hello-World"
    assert payload["head_sha"] == raw["pull_request"]["head"]["sha"]
    assert payload["base_sha"] == raw["pull_request"]["base"]["sha"]
    assert payload["clone_url"] == "https://github.com/Codertocat/Hello-World.git"
    assert payload["delivery"] == delivery
    assert payload["labels"] == ["bug"]
    assert payload["fork"] is False
    text = json.dumps(body)
    for dropped in (
        raw["pull_request"]["title"],
        raw["pull_request"]["head"]["ref"],
        raw["pull_request"]["url"],
    ):
        assert dropped not in text
    json.loads(text)


def test_the_payload_says_when_the_delivery_was_accepted() -> None:
    event = parse_pull_request_event(load_payload(OCTOKIT / "opened.payload.json"), delivery="d")
    body = prefect_event(event, occurred=datetime(2026, 11, 28, 12, 0, 1, tzinfo=UTC))
    assert body["payload"]["received"] == body["occurred"] == "2026-11-28T12:00:01Z"
    assert parse_received(body["payload"]["received"]) == datetime(2026, 11, 28, 12, 0, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("2026-11-28T12:00:01.250000Z", datetime(2026, 11, 28, 12, 0, 1, 250000, tzinfo=UTC)),
        ("2026-11-28T13:00:01+01:00", datetime(2026, 11, 28, 12, 0, 1, tzinfo=UTC)),
        (datetime(2026, 11, 28, 12, tzinfo=UTC), datetime(2026, 11, 28, 12, tzinfo=UTC)),
    ],
)
def test_parse_received(value: object, expected: datetime | None) -> None:
    assert parse_received(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yesterday", "'yesterday' is not an ISO-8601 timestamp"),
        ("2026-11-28T12:00:01", "has no time zone"),
        (datetime(2026, 11, 28, 12), "has no time zone"),
        (1764331201, "must be an ISO-8601 timestamp, got int"),
    ],
)
def test_parse_received_names_the_parameter(value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        parse_received(value)
    assert str(caught.value).startswith("received")


def test_occurred_defaults_to_now_and_must_be_aware() -> None:
    event = parse_pull_request_event(load_payload(OCTOKIT / "opened.payload.json"), delivery="d")
    occurred = datetime.fromisoformat(prefect_event(event)["occurred"].replace("Z", "+00:00"))
    assert abs(occurred - datetime.now(UTC)) < timedelta(seconds=5)
    other = prefect_event(event, occurred=datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))))
    assert other["occurred"] == "2026-01-01T00:00:00Z"
    with pytest.raises(ValidationError, match="occurred"):
        prefect_event(event, occurred=datetime(2026, 1, 1))


def test_event_id_is_stable_per_delivery_and_new_per_replay() -> None:
    assert event_id("abc") == event_id("abc") == uuid.uuid5(EVENT_NAMESPACE, "abc")
    assert event_id("abc") != event_id("abd")
    assert len({event_id("abc"), event_id("abc", replay=1), event_id("abc", replay=2)}) == 3


def _set(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(raw)
    target: Any = data
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    last = keys[-1]
    if value is _DELETE:
        del target[last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return data


_DELETE = object()

# (payload path, value, field named by the error)
BAD_VALUES: list[tuple[str, Any, str]] = [
    ("pull_request", None, "pull_request"),
    ("pull_request", "x", "pull_request"),
    ("action", "opened; rm -rf /", "action"),
    ("action", "Opened", "action"),
    ("action", None, "action"),
    ("number", 0, "number"),
    ("number", 100000, "number"),
    ("number", -1, "number"),
    ("number", True, "number"),
    ("number", 2.5, "number"),
    ("number", "2\n", "number"),
    ("number", _DELETE, "number"),
    ("pull_request.number", 3, "pull_request.number"),
    ("repository", None, "repository"),
    ("repository.full_name", "Codertocat", "repository.full_name"),
    ("repository.full_name", "Codertocat/Hello-World\n", "repository.full_name"),
    ("repository.full_name", "../etc/passwd", "repository.full_name"),
    ("repository.full_name", "Codertocat/..", "repository.full_name"),
    ("pull_request.base.repo.full_name", "someone/else", "pull_request.base.repo.full_name"),
    ("pull_request.head.sha", "ec26c3e", "pull_request.head.sha"),
    ("pull_request.head.sha", "EC26C3E57CA3A959CA5AAD62DE7213C562F8C821", "pull_request.head.sha"),
    ("pull_request.head.sha", "ec26c3e57ca3a959ca5aad62de7213c562f8c821\n", "pull_request.head.sha"),
    ("pull_request.head.sha", "--upload-pack=touch /tmp/x", "pull_request.head.sha"),
    ("pull_request.head.sha", None, "pull_request.head.sha"),
    ("pull_request.base.sha", "main", "pull_request.base.sha"),
    ("pull_request.head", None, "pull_request.head"),
    ("pull_request.head.repo", "x", "pull_request.head.repo"),
    ("pull_request.head.repo.full_name", "a b/c", "pull_request.head.repo.full_name"),
    (
        "pull_request.head.repo.clone_url",
        "https://user:tok@github.com/a/b.git",
        "pull_request.head.repo.clone_url",
    ),
    ("pull_request.head.repo.clone_url", "ext::sh -c touch% /tmp/pwned", "pull_request.head.repo.clone_url"),
    ("pull_request.head.repo.clone_url", "https://github.com/a b.git", "pull_request.head.repo.clone_url"),
    ("pull_request.draft", "false", "pull_request.draft"),
    ("pull_request.merged", 1, "pull_request.merged"),
    ("pull_request.state", "merged", "pull_request.state"),
    ("pull_request.labels", "bug", "pull_request.labels"),
    ("pull_request.labels", [{"name": "x"}] * 101, "pull_request.labels"),
    ("pull_request.labels.0", "bug", "pull_request.labels[0]"),
    ("pull_request.labels.0.name", "", "pull_request.labels[0].name"),
    ("pull_request.labels.0.name", "x" * 101, "pull_request.labels[0].name"),
    ("pull_request.labels.0.name", "bug\u001b[2K", "pull_request.labels[0].name"),
    ("pull_request.labels.0.name", "bu\u200bg", "pull_request.labels[0].name"),
    ("sender", None, "sender"),
    ("sender.login", "-octocat", "sender.login"),
    ("sender.login", "octo cat", "sender.login"),
]


@pytest.mark.parametrize(
    ("path", "value", "field"), BAD_VALUES, ids=[f"{p}={v!r}"[:60] for p, v, _ in BAD_VALUES]
)
def test_bad_values_name_the_field(path: str, value: Any, field: str) -> None:
    raw = _set(load_payload(OCTOKIT / "opened.payload.json"), path, value)
    with pytest.raises(ValidationError) as info:
        parse_pull_request_event(raw, delivery="d")
    assert info.value.field == field


@pytest.mark.parametrize("value", HOSTILE_STRINGS, ids=lambda v: repr(v)[:40])
@pytest.mark.parametrize(
    "path",
    [
        "repository.full_name",
        "pull_request.head.repo.full_name",
        "pull_request.head.sha",
        "sender.login",
        "action",
    ],
)
def test_hostile_strings_are_refused_in_every_validated_field(path: str, value: str) -> None:
    raw = _set(load_payload(OCTOKIT / "opened.payload.json"), path, value)
    with pytest.raises(ValidationError) as info:
        parse_pull_request_event(raw, delivery="d")
    assert info.value.field == path
    assert "\n" not in str(info.value).replace("\\n", "")


@pytest.mark.parametrize("value", HOSTILE_STRINGS, ids=lambda v: repr(v)[:40])
def test_hostile_strings_in_dropped_fields_never_reach_the_event(value: str) -> None:
    raw = load_payload(OCTOKIT / "opened.payload.json")
    raw["pull_request"]["head"]["ref"] = value
    raw["pull_request"]["title"] = value
    raw["pull_request"]["body"] = value
    text = json.dumps(prefect_event(parse_pull_request_event(raw, delivery="d")), ensure_ascii=False)
    assert value not in text


@pytest.mark.parametrize("value", [*HOSTILE_STRINGS, None, 7, "", "a" * 101], ids=lambda v: repr(v)[:40])
def test_hostile_delivery_ids_are_refused(value: Any) -> None:
    raw = load_payload(OCTOKIT / "opened.payload.json")
    with pytest.raises(ValidationError) as info:
        parse_pull_request_event(raw, delivery=value)
    assert info.value.field == "X-GitHub-Delivery"


def test_label_names_are_data_not_code() -> None:
    raw = load_payload(OCTOKIT / "opened.payload.json")
    raw["pull_request"]["labels"] = [{"name": 'zzz";echo${IFS}"hello";#'}, {"name": "safe-to-preview ✓"}]
    event = parse_pull_request_event(raw, delivery="d")
    assert event.labels == ('zzz";echo${IFS}"hello";#', "safe-to-preview ✓")


def test_bot_senders_are_logins() -> None:
    raw = load_payload(OCTOKIT / "opened.payload.json")
    raw["sender"]["login"] = "dependabot[bot]"
    assert parse_pull_request_event(raw, delivery="d").sender == "dependabot[bot]"
