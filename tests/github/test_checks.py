"""Check runs against the fake GitHub: request bodies and answers in the recorded ``check-run`` shapes, and the
lifecycle a run's :class:`CheckReporter` drives (queued -> in_progress -> completed with a conclusion)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from pydantic import SecretStr

from previews.core import checks, status
from previews.core.checks import CheckOutput, FailedStep, RunDetail
from previews.core.outcome import PreviewResult
from previews.errors import BuildError, ValidationError
from previews.github.app_auth import AppCredentials
from previews.github.checks import CheckReporter, create_check_run, update_check_run
from previews.github.client import GitHubClient
from previews.redact import Redactor
from tests.support.fake_github import FakeGitHub
from tests.support.fixtures import FIXTURES

REPO = "acme/app"
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
OLD_SHA = "1111111111111111111111111111111111111111"
RUN_URL = "http://127.0.0.1:4200/runs/flow-run/0b8c2f6e-1c1f-4d1c-9f4e-3c6f1f7c2b11"
RUN_ID = "0b8c2f6e-1c1f-4d1c-9f4e-3c6f1f7c2b11"
API = FIXTURES / "github/api"
SECRET = "s3cr3t-registry-token-value"


def _nullable(schema: Any) -> Any:
    """OpenAPI 3.0 ``nullable: true`` as JSON Schema (``type: [t, "null"]``), recursively."""
    if isinstance(schema, list):
        return [_nullable(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _nullable(v) for k, v in schema.items() if k != "nullable"}
    if schema.get("nullable") is True:
        if "type" in out:
            out["type"] = [out["type"], "null"]
        elif "enum" not in out:
            out = {"anyOf": [out, {"type": "null"}]}
    if isinstance(out.get("enum"), list) and schema.get("nullable") is True:
        out["enum"] = [*out["enum"], None]
    return out


def _excerpt(name: str) -> dict[str, Any]:
    excerpt: dict[str, Any] = json.loads((API / f"openapi-excerpts/{name}.json").read_text())
    return excerpt


def validator(name: str, pointer: list[str]) -> jsonschema.Draft7Validator:
    """A validator for the schema at ``pointer`` inside the OpenAPI excerpt ``name`` ($refs resolved)."""
    doc = _nullable(_excerpt(name))
    schema: Any = doc
    for key in pointer:
        schema = schema[key]
    return jsonschema.Draft7Validator({**schema, "components": doc["components"]})


def request_schema(name: str, path: str, method: str) -> jsonschema.Draft7Validator:
    return validator(name, ["paths", path, method, "requestBody", "content", "application/json", "schema"])


CREATE = request_schema("checks__create", "/repos/{owner}/{repo}/check-runs", "post")
UPDATE = request_schema("checks__update", "/repos/{owner}/{repo}/check-runs/{check_run_id}", "patch")
CHECK_RUN = validator("checks__create", ["components", "schemas", "check-run"])


@pytest.fixture
def app(gh: FakeGitHub) -> Iterator[GitHubClient]:
    key = gh.enable_app()
    creds = AppCredentials(app_id=12345, private_key=SecretStr(key), installation_id=67890)
    with GitHubClient(base_url=gh.url, app=creds) as client:
        yield client


def reporter(client: GitHubClient, *, details_url: str | None = RUN_URL) -> CheckReporter:
    r = CheckReporter(
        client,
        REPO,
        "preview-image",
        details_url,
        RUN_ID,
        logging.getLogger("test.checks"),
        Redactor([SecretStr(SECRET)]),
    )
    r.use_sha(SHA)
    return r


def sent(gh: FakeGitHub) -> list[tuple[str, dict[str, Any]]]:
    return [(method, body) for method, _, body in gh.check_run_requests]


def test_the_recorded_examples_fit_the_recorded_schemas() -> None:
    """The fixtures agree with each other (and so the fake, built from them, speaks the schema)."""
    for name in ("check-run-example-of-in-progress-conclusion", "check-run-example-of-completed-conclusion"):
        CHECK_RUN.validate(json.loads((API / f"examples/{name}.json").read_text()))
    CREATE.validate(
        json.loads(
            (API / "examples/checks-create.example-of-in-progress-conclusion.request-body.json").read_text()
        )
    )
    UPDATE.validate(json.loads((API / "examples/checks-update.request-body.json").read_text()))


def test_a_pushed_run_goes_queued_in_progress_then_success(gh: FakeGitHub, app: GitHubClient) -> None:
    r = reporter(app)
    r.post(status.pending())
    r.post(status.pending())  # a second pending does not queue a second check run
    r.started()
    image = f"ghcr.io/acme/app:pr-7-{SHA}"
    result = PreviewResult(
        status="pushed",
        reason=f"pushed {image}",
        head_sha=SHA,
        image=image,
        digest="sha256:" + "a" * 64,
        cached_steps=3,
        steps=5,
        durations_s={"checkout": 0.52, "build": 12.25, "push": 1.5},
    )
    r.post(status.pushed(image), RunDetail(result=result))

    requests = sent(gh)
    assert [(m, b["status"]) for m, b in requests] == [
        ("POST", "queued"),
        ("PATCH", "in_progress"),
        ("PATCH", "completed"),
    ]
    CREATE.validate(requests[0][1])
    for _, body in requests[1:]:
        UPDATE.validate(body)
    assert requests[0][1]["details_url"] == RUN_URL
    assert requests[0][1]["external_id"] == RUN_ID
    (run,) = gh.check_runs(REPO, SHA)
    CHECK_RUN.validate(run)
    assert (run["name"], run["status"], run["conclusion"]) == ("preview-image", "completed", "success")
    summary = run["output"]["summary"]
    assert run["output"]["title"] == f"pushed {image}"
    for expected in (image, "sha256:" + "a" * 64, "3 of 5 steps cached", "| build | 12.25 |", RUN_URL):
        assert expected in summary


@pytest.mark.parametrize(
    ("update", "conclusion"),
    [
        (status.skipped_docs_only(), "skipped"),
        (status.skipped_no_push_credentials(), "neutral"),
        (status.skipped_fork("fork PRs need the safe-to-preview label"), "neutral"),
        (status.superseded("b" * 40), "cancelled"),
        (status.failed("the Dockerfile failed"), "failure"),
        (status.failed("AuthError: registry refused", state="error"), "failure"),
    ],
)
def test_each_outcome_completes_with_its_conclusion(
    gh: FakeGitHub, app: GitHubClient, update: status.StatusUpdate, conclusion: str
) -> None:
    r = reporter(app)
    r.post(status.pending())
    r.post(update)
    (run,) = gh.check_runs(REPO, SHA)
    CHECK_RUN.validate(run)
    assert (run["status"], run["conclusion"]) == ("completed", conclusion)
    assert run["output"]["title"] == update.description


def test_a_failure_names_the_step_and_shows_a_bounded_redacted_log_tail(
    gh: FakeGitHub, app: GitHubClient
) -> None:
    log = [f"#{i} RUN step {i}" for i in range(100)] + [f"#101 curl -u ci:{SECRET} https://x", "exit code: 2"]
    exc = BuildError("the Dockerfile failed: exit code 2", log_tail=log)
    r = reporter(app)
    r.post(status.pending())
    r.started()
    detail = RunDetail(failure=checks.failed_step("build", exc), durations_s={"checkout": 0.4, "build": 3.0})
    r.post(status.failed(exc.reason), detail)

    (run,) = gh.check_runs(REPO, SHA)
    summary = run["output"]["summary"]
    assert run["conclusion"] == "failure"
    assert "Failed in step `build`." in summary
    assert SECRET not in summary
    assert "curl -u ci:*** https://x" in summary
    assert "exit code: 2" in summary
    assert "#59 RUN step 59" not in summary  # bounded: the last 40 lines only
    assert f"Last {checks.TAIL_LINES} log lines:" in summary
    UPDATE.validate(sent(gh)[-1][1])


def test_a_superseding_run_completes_the_open_check_of_the_older_sha(
    gh: FakeGitHub, app: GitHubClient
) -> None:
    old = reporter(app)
    old.use_sha(OLD_SHA)
    old.post(status.pending())
    old.started()
    new = reporter(app)
    new.post_elsewhere(REPO, OLD_SHA, status.superseded(SHA))
    (run,) = gh.check_runs(REPO, OLD_SHA)
    assert (run["status"], run["conclusion"]) == ("completed", "cancelled")
    assert SHA[:12] in run["output"]["title"]
    assert gh.check_runs(REPO, SHA) == []


@pytest.mark.parametrize("url", ["ephemeral:///runs/1", "http:///runs/1", "/runs/flow-run/1"])
def test_a_run_url_that_is_not_http_is_left_out(gh: FakeGitHub, app: GitHubClient, url: str) -> None:
    r = reporter(app, details_url=url)
    r.post(status.pending())
    r.post(status.skipped_docs_only())
    (_, body), (_, final) = sent(gh)
    assert "details_url" not in body
    assert url not in json.dumps(body) + json.dumps(final)
    (run,) = gh.check_runs(REPO, SHA)
    assert run["details_url"] is None


def test_a_token_cannot_create_check_runs_and_the_reporter_only_logs_it(
    gh: FakeGitHub, caplog: pytest.LogCaptureFixture
) -> None:
    with GitHubClient(base_url=gh.url, token=SecretStr(gh.token)) as client:
        r = reporter(client)
        with caplog.at_level(logging.WARNING, "test.checks"):
            r.post(status.pending())
            r.post(status.pushed("ghcr.io/acme/app:pr-7"))
    assert gh.check_runs(REPO) == []
    assert "could not report the check run" in caplog.text
    assert "GitHub App" in caplog.text


def test_the_adapter_refuses_bad_input_before_sending(gh: FakeGitHub, app: GitHubClient) -> None:
    output = CheckOutput("t", "s")
    with pytest.raises(ValidationError, match="conclusion"):
        create_check_run(app, REPO, name="x", head_sha=SHA, status="completed", output=output)
    with pytest.raises(ValidationError, match="head_sha"):
        create_check_run(app, REPO, name="x", head_sha="abc", status="queued")
    with pytest.raises(ValidationError, match="check_run_id"):
        update_check_run(app, REPO, 0, status="in_progress")
    assert gh.check_run_requests == []


def test_failed_step_falls_back_to_the_error_message() -> None:
    failure = checks.failed_step(None, RuntimeError("registry down\nsecond line"))
    assert failure == FailedStep(None, ("RuntimeError: registry down", "second line"))
    markdown = checks.final_output(status.failed("x"), RunDetail(failure=failure), None).summary
    assert "Failed before the first step." in markdown
    assert "Flow run" not in markdown
