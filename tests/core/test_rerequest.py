"""The "Re-run" button's deliveries: which start a run (for which PR, SHA and rebuild), which start nothing."""

from __future__ import annotations

from typing import Any

import pytest

from previews.core.events import event_id
from previews.core.rerequest import Ignored, RerequestEvent, parse_rerequest, rerequest_prefect_event
from previews.errors import ValidationError
from tests.support.rerequests import CHECK_RUN, CHECK_SUITE, rerequested
from tests.support.webhooks import load_payload

REPO = "Acme/App"
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
OTHER = "1" * 40
APP = 12345
GUID = "72d3162e-cc78-11e3-81ab-4c9367dc0958"


def parse(kind: str, payload: dict[str, Any], app_id: int | None = APP) -> RerequestEvent | Ignored:
    return parse_rerequest(kind, payload, delivery=GUID, check_name="preview-image", app_id=app_id)


@pytest.mark.parametrize("kind", ["check_run", "check_suite"])
def test_a_rerequest_of_our_check_names_the_pr_sha_and_delivery(kind: str) -> None:
    event = parse(kind, rerequested(kind, repository=REPO, head_sha=SHA, app_id=APP, numbers=(7,)))
    assert isinstance(event, RerequestEvent)
    assert (event.repository, event.number, event.head_sha) == (REPO, 7, SHA)
    assert event.event_name == f"github.{kind}.rerequested"
    assert event.resource_id == "github.pull-request.acme/app#7"
    prefect = rerequest_prefect_event(event)
    assert prefect["id"] == str(event_id(GUID))
    assert prefect["payload"]["delivery"] == f"rerequest:{GUID}"
    assert prefect["payload"]["number"] == 7
    assert prefect["payload"]["force_rebuild"] is True
    assert prefect["resource"]["github.pull-request.number"] == "7"


@pytest.mark.parametrize(
    ("conclusion", "force"),
    [
        ("failure", True),
        ("cancelled", True),
        ("timed_out", True),
        (None, True),
        ("stale", True),
        ("success", False),
        ("neutral", False),
        ("skipped", False),
        ("bogus", True),
    ],
)
def test_a_check_that_did_not_pass_is_rebuilt(conclusion: str | None, force: bool) -> None:
    payload = rerequested("check_run", repository=REPO, head_sha=SHA, app_id=APP, conclusion=conclusion)
    event = parse("check_run", payload)
    assert isinstance(event, RerequestEvent)
    assert event.force_rebuild is force


def test_the_pr_whose_head_is_the_sha_is_chosen() -> None:
    payload = rerequested("check_suite", repository=REPO, head_sha=SHA, app_id=APP, numbers=(3, 9))
    payload["check_suite"]["pull_requests"][0]["head"]["sha"] = OTHER
    event = parse("check_suite", payload)
    assert isinstance(event, RerequestEvent)
    assert event.number == 9


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda p: p["check_run"].update(pull_requests=[]), "pull_requests is empty"),
        (lambda p: p.update(action="completed"), "starts nothing"),
        (lambda p: p["check_run"]["app"].update(id=99), "another GitHub App"),
        (lambda p: p["check_run"].update(name="lint"), "PREVIEWS_CHECK_NAME"),
    ],
)
def test_what_is_not_a_rerun_of_our_check_starts_nothing_and_says_why(change: Any, reason: str) -> None:
    payload = rerequested("check_run", repository=REPO, head_sha=SHA, app_id=APP)
    change(payload)
    answer = parse("check_run", payload)
    assert isinstance(answer, Ignored)
    assert reason in answer.reason


def test_the_recorded_examples_start_nothing() -> None:
    """The octokit check_run example has no pull request; neither belongs to a configured App."""
    run = parse("check_run", load_payload(CHECK_RUN), app_id=2)
    assert isinstance(run, Ignored)
    assert "PREVIEWS_CHECK_NAME" in run.reason
    suite = parse("check_suite", load_payload(CHECK_SUITE), app_id=None)
    assert isinstance(suite, Ignored)
    assert "PREVIEWS_GITHUB_APP_ID" in suite.reason
    suite = parse("check_suite", load_payload(CHECK_SUITE), app_id=29310)
    assert isinstance(suite, RerequestEvent)
    assert (suite.repository, suite.number, suite.conclusion) == ("Codertocat/Hello-World", 2, "success")
    assert suite.force_rebuild is False


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda p: p["check_run"].update(head_sha="abc"), "check_run.head_sha"),
        (lambda p: p["check_run"]["pull_requests"][0].update(number=0), "check_run.pull_requests[].number"),
        (lambda p: p["check_run"].update(pull_requests="x"), "check_run.pull_requests"),
        (lambda p: p["repository"].update(full_name="a b"), "repository.full_name"),
    ],
)
def test_a_malformed_rerequest_names_the_field(change: Any, field: str) -> None:
    payload = rerequested("check_run", repository=REPO, head_sha=SHA, app_id=APP)
    change(payload)
    with pytest.raises(ValidationError) as info:
        parse("check_run", payload)
    assert info.value.field == field
