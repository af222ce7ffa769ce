"""The fake GitHub answers with the shapes of GitHub's own OpenAPI description (tests/fixtures excerpts)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.support.fake_github import FakeGitHub
from tests.support.fixtures import FIXTURES

EXCERPTS = FIXTURES / "github/api/openapi-excerpts"
REPO = "Acme/App"
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable: true`` becomes a JSON Schema null alternative."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {k: _openapi_to_jsonschema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


def validator(excerpt: str, schema: str) -> Draft202012Validator:
    document = _openapi_to_jsonschema(json.loads((EXCERPTS / excerpt).read_text()))
    uri = f"urn:excerpt:{excerpt}"
    registry = Registry().with_resource(
        uri, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    return Draft202012Validator({"$ref": f"{uri}#/components/schemas/{schema}"}, registry=registry)


def schema_errors(excerpt: str, schema: str, body: Any) -> list[str]:
    errors = sorted(validator(excerpt, schema).iter_errors(body), key=lambda e: [str(p) for p in e.path])
    return [f"{list(e.path)}: {e.message[:120]}" for e in errors]


def assert_valid(excerpt: str, schema: str, body: Any) -> None:
    assert schema_errors(excerpt, schema, body) == []


@pytest.fixture
def http(gh: FakeGitHub) -> httpx.Client:
    return httpx.Client(base_url=gh.url, headers={"Authorization": f"Bearer {gh.token}"})


@pytest.mark.parametrize("head_repo", ["", "someone/App", None])
def test_pull_request_matches_the_openapi_schema(
    gh: FakeGitHub, http: httpx.Client, head_repo: str | None
) -> None:
    gh.add_pull(REPO, 7, head_sha=SHA, head_repo=head_repo, labels=["bug"], draft=True)
    response = http.get(f"/repos/{REPO}/pulls/7")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.headers["x-ratelimit-resource"] == "core"
    errors = schema_errors("pulls__get.json", "pull-request", response.json())
    # the OpenAPI schema says head.repo is never null; real deliveries for deleted forks carry null
    assert errors == ([] if head_repo is not None else ["['head', 'repo']: None is not of type 'object'"])


def test_status_and_combined_status_match_the_openapi_schema(gh: FakeGitHub, http: httpx.Client) -> None:
    created = http.post(
        f"/repos/{REPO}/statuses/{SHA}",
        json={"state": "pending", "context": "previews/image", "description": "x"},
    )
    assert created.status_code == 201
    assert created.headers["location"].endswith(f"/repos/{REPO}/statuses/{SHA}")
    assert_valid("repos__create-commit-status.json", "status", created.json())
    combined = http.get(f"/repos/{REPO}/commits/{SHA}/status")
    assert combined.status_code == 200
    assert_valid("repos__get-combined-status-for-ref.json", "combined-commit-status", combined.json())
    assert combined.json()["state"] == "pending"


def test_errors_match_the_openapi_schemas(gh: FakeGitHub, http: httpx.Client) -> None:
    missing = http.get(f"/repos/{REPO}/pulls/1")
    assert missing.status_code == 404
    assert_valid("pulls__get.json", "basic-error", missing.json())
    gh.add_repo("acme/infra")
    too_many = http.post(
        "/repos/acme/infra/dispatches",
        json={"event_type": "e", "client_payload": dict.fromkeys("abcdefghijk", 1)},
    )
    assert too_many.status_code == 422
    assert_valid("repos__create-dispatch-event.json", "validation-error", too_many.json())
    bad_state = http.post(f"/repos/{REPO}/statuses/{SHA}", json={"state": "done"})
    assert bad_state.status_code == 422
    assert_valid("repos__create-dispatch-event.json", "validation-error", bad_state.json())


def test_dispatch_answers_204_without_a_body(gh: FakeGitHub, http: httpx.Client) -> None:
    gh.add_repo("acme/infra")
    response = http.post(
        "/repos/acme/infra/dispatches", json={"event_type": "preview-create", "client_payload": {}}
    )
    assert (response.status_code, response.content) == (204, b"")


def test_authorization_is_required(gh: FakeGitHub) -> None:
    gh.add_pull(REPO, 7, head_sha=SHA)
    assert httpx.get(f"{gh.url}/repos/{REPO}/pulls/7").status_code == 401
    wrong = httpx.get(f"{gh.url}/repos/{REPO}/pulls/7", headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.json()["message"]) == (401, "Bad credentials")
