"""GitHubClient against the fake GitHub API: requests sent, answers parsed, errors mapped, one attempt per call."""

from __future__ import annotations

import logging
import time

import httpx
import pytest
from pydantic import SecretStr

from previews.errors import (
    AuthError,
    CrossOriginError,
    GitHubError,
    GitHubNotFoundError,
    GitHubUnprocessableError,
    PermanentError,
    TransientGitHubError,
    ValidationError,
)
from previews.github.client import GitHubClient, PullRequestInfo
from previews.github.sansio import error_for
from previews.settings import Settings
from tests.support.fake_github import FakeGitHub
from tests.support.fixtures import FIXTURES
from tests.support.services import free_port

REPO = "Acme/App"
HEAD = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
BASE = "e5bd3914e2e596debea16f433f57875b5b90bcd6"
PULL = "/repos/Acme/App/pulls/7"


def client(gh: FakeGitHub, **kwargs: object) -> GitHubClient:
    options: dict[str, object] = {"base_url": gh.url, "token": SecretStr(gh.token)}
    options.update(kwargs)
    return GitHubClient(**options)  # type: ignore[arg-type]


def test_get_pull_reads_the_recorded_shape(gh: FakeGitHub) -> None:
    gh.add_pull(
        REPO, 7, head_sha=HEAD, base_sha=BASE, head_repo="someone/App", labels=["bug", "safe-to-preview"]
    )
    with client(gh) as c:
        pr = c.get_pull(REPO, 7)
    assert pr == PullRequestInfo(
        number=7,
        state="open",
        merged=False,
        draft=False,
        head_sha=HEAD,
        head_ref="feature",
        head_repository="someone/App",
        base_sha=BASE,
        base_ref="main",
        base_repository=REPO,
        labels=("bug", "safe-to-preview"),
        html_url="https://github.com/Acme/App/pull/7",
        is_fork=True,
    )
    with pytest.raises(Exception, match="frozen"):
        pr.number = 8  # type: ignore[misc]


def test_get_pull_of_a_deleted_fork_and_of_a_same_repo_pr(gh: FakeGitHub) -> None:
    gh.add_pull(REPO, 1, head_sha=HEAD, head_repo=None)
    gh.add_pull(REPO, 2, head_sha=HEAD, head_repo="")
    with client(gh) as c:
        gone, same = c.get_pull(REPO, 1), c.get_pull(REPO, 2)
    assert (gone.head_repository, gone.is_fork) == (None, True)
    assert (same.head_repository, same.is_fork) == (REPO, False)


def test_requests_carry_the_documented_headers_and_the_token_only_in_authorization(gh: FakeGitHub) -> None:
    gh.add_pull(REPO, 7, head_sha=HEAD)
    with client(gh) as c:
        c.get_pull(REPO, 7)
    (request,) = gh.requests
    assert request.method == "GET"
    assert request.path == PULL
    assert request.query == ""
    assert request.headers["accept"] == "application/vnd.github+json"
    assert request.headers["x-github-api-version"] == "2022-11-28"
    assert request.headers["user-agent"].startswith("previews/")
    assert request.headers["authorization"] == f"Bearer {gh.token}"


def test_a_real_recorded_pull_request_body_parses() -> None:
    """gidgethub's recorded GET /repos/python/cpython/pulls/1 (a merged PR)."""
    import json

    body = json.loads((FIXTURES / "github/api/real/gidgethub/pr_single.body.json").read_text())
    pr = PullRequestInfo.from_api(body)
    assert (pr.number, pr.state, pr.merged, pr.base_repository) == (1, "closed", True, "python/cpython")
    assert len(pr.head_sha) == 40


def test_a_malformed_pull_request_shape_is_a_github_error() -> None:
    with pytest.raises(GitHubError, match="unexpected pull request shape"):
        PullRequestInfo.from_api({"number": 1, "state": "open"})
    with pytest.raises(GitHubError, match="unexpected pull request shape"):
        PullRequestInfo.from_api(["not", "an", "object"])


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "fragment"),
    [
        (401, {"message": "Bad credentials"}, {}, AuthError, "401 Bad credentials"),
        (403, {"message": "Resource not accessible by integration"}, {}, AuthError, "not accessible"),
        (404, {"message": "Not Found"}, {}, GitHubNotFoundError, "404 Not Found"),
        (409, {"message": "Conflict"}, {}, GitHubError, "409 Conflict"),
        (410, {"message": "Gone"}, {}, GitHubError, "410 Gone"),
        (
            422,
            {
                "message": "Validation Failed",
                "errors": [{"resource": "Label", "code": "invalid", "field": "color"}],
                "documentation_url": "https://docs.github.com/rest/reference/issues#create-a-label",
            },
            {},
            GitHubUnprocessableError,
            "Validation Failed (Label.color invalid)",
        ),
    ],
)
def test_permanent_errors_are_mapped_and_not_retried(
    gh: FakeGitHub,
    status: int,
    body: dict[str, object],
    headers: dict[str, str],
    error: type[Exception],
    fragment: str,
) -> None:
    gh.add_pull(REPO, 7, head_sha=HEAD)
    gh.fail("GET", PULL, status=status, body=body, headers=headers, times=5)
    with client(gh) as c, pytest.raises(error) as info:
        c.get_pull(REPO, 7)
    assert isinstance(info.value, PermanentError)
    assert fragment in str(info.value)
    assert f"GET {PULL}" in str(info.value)
    assert getattr(info.value, "status", None) == status
    assert len(gh.requests_to("GET", PULL)) == 1


def test_422_keeps_githubs_error_details(gh: FakeGitHub) -> None:
    """The fake answers an invalid state with the documented validation-error shape."""
    with client(gh) as c:
        response = c._http.post(  # bypass the client's own validation to see GitHub's answer
            f"repos/{REPO}/statuses/{HEAD}",
            json={"state": "done", "context": "x"},
            headers={"Authorization": f"Bearer {gh.token}"},
        )
        error = error_for(
            response.status_code, response.headers, response.content, where="GitHub POST /x", now=time.time()
        )
    assert isinstance(error, GitHubUnprocessableError)
    assert error.errors == [
        {
            "resource": "Status",
            "code": "custom",
            "field": "state",
            "message": "state is not included in the list",
        }
    ]
    assert "Status.state state is not included in the list" in str(error)


def test_real_recorded_404_body_from_the_fake(gh: FakeGitHub) -> None:
    with client(gh) as c, pytest.raises(GitHubNotFoundError) as info:
        c.get_pull(REPO, 99)
    assert str(info.value) == f"GitHub GET /repos/{REPO}/pulls/99: 404 Not Found"
    assert info.value.status == 404


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_server_error_is_one_transient_attempt_and_the_next_call_succeeds(
    gh: FakeGitHub, status: int
) -> None:
    """Retrying is the caller's (Prefect task retries): the client sends one request per call."""
    gh.add_pull(REPO, 7, head_sha=HEAD)
    gh.fail_server_error("GET", PULL, times=1, status=status)
    with client(gh) as c:
        with pytest.raises(TransientGitHubError) as info:
            c.get_pull(REPO, 7)
        assert info.value.status == status
        assert str(status) in str(info.value)
        assert len(gh.requests_to("GET", PULL)) == 1
        assert c.get_pull(REPO, 7).head_sha == HEAD
    assert len(gh.requests_to("GET", PULL)) == 2


def test_reading_one_pull_request_makes_one_request_whatever_fails(gh: FakeGitHub) -> None:
    gh.add_pull(REPO, 7, head_sha=HEAD)
    gh.fail_server_error("GET", PULL, times=10, status=503)
    with client(gh) as c, pytest.raises(TransientGitHubError):
        c.get_pull(REPO, 7)
    assert len(gh.requests_to("GET", PULL)) == 1


@pytest.mark.parametrize("status", [403, 429])
def test_rate_limits_are_transient_with_retry_after(gh: FakeGitHub, status: int) -> None:
    gh.add_pull(REPO, 7, head_sha=HEAD)
    gh.secondary_rate_limit("GET", PULL, retry_after=7, status=status, times=10)
    with client(gh) as c, pytest.raises(TransientGitHubError) as info:
        c.get_pull(REPO, 7)
    assert info.value.retry_after == 7.0
    assert info.value.status == status
    assert "rate limited" in str(info.value)
    assert len(gh.requests_to("GET", PULL)) == 1


def test_a_long_retry_after_is_handed_to_the_caller(gh: FakeGitHub) -> None:
    gh.add_pull(REPO, 7, head_sha=HEAD)
    gh.secondary_rate_limit("GET", PULL, retry_after=120)
    with client(gh) as c, pytest.raises(TransientGitHubError) as info:
        c.get_pull(REPO, 7)
    assert info.value.retry_after == 120.0
    assert len(gh.requests_to("GET", PULL)) == 1


def test_secondary_limit_without_retry_after_waits_a_minute(gh: FakeGitHub) -> None:
    gh.add_pull(REPO, 7, head_sha=HEAD)
    gh.secondary_rate_limit("GET", PULL, retry_after=None)
    with client(gh) as c, pytest.raises(TransientGitHubError) as info:
        c.get_pull(REPO, 7)
    assert info.value.retry_after == 60.0


def test_primary_rate_limit_waits_until_reset(gh: FakeGitHub) -> None:
    gh.add_pull(REPO, 7, head_sha=HEAD)
    now = time.time()
    gh.primary_rate_limit("GET", PULL, reset_in=20)
    with client(gh, clock=lambda: now) as c, pytest.raises(TransientGitHubError) as info:
        c.get_pull(REPO, 7)
    assert info.value.retry_after is not None
    assert 19 <= info.value.retry_after <= 21  # until x-ratelimit-reset (whole seconds)
    assert info.value.status == 403


def test_429_without_headers_waits_the_documented_minute(gh: FakeGitHub) -> None:
    gh.add_pull(REPO, 7, head_sha=HEAD)
    gh.fail("GET", PULL, status=429, body={"message": "Too Many Requests"})
    with client(gh) as c, pytest.raises(TransientGitHubError) as info:
        c.get_pull(REPO, 7)
    assert (info.value.status, info.value.retry_after) == (429, 60.0)


def test_malformed_json_on_success_is_transient_and_reported_clearly(gh: FakeGitHub) -> None:
    gh.add_pull(REPO, 7, head_sha=HEAD)
    gh.malformed_json("GET", PULL, times=1)
    with client(gh) as c:
        with pytest.raises(TransientGitHubError, match="not JSON"):
            c.get_pull(REPO, 7)
        assert c.get_pull(REPO, 7).number == 7


def test_malformed_json_on_an_error_status_still_maps_the_status(gh: FakeGitHub) -> None:
    gh.add_pull(REPO, 7, head_sha=HEAD)
    gh.fail("GET", PULL, status=502, raw=b"<html><body><h1>502 Bad Gateway</h1></body></html>", times=10)
    with client(gh) as c, pytest.raises(TransientGitHubError, match="502 <html>"):
        c.get_pull(REPO, 7)


def test_connection_refused_is_transient() -> None:
    with (
        GitHubClient(base_url=f"http://127.0.0.1:{free_port()}", token=SecretStr("t")) as c,
        pytest.raises(TransientGitHubError, match="connection failed"),
    ):
        c.get_pull(REPO, 7)


def test_timeout_is_transient() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    with (
        GitHubClient(token=SecretStr("t"), transport=httpx.MockTransport(slow)) as c,
        pytest.raises(TransientGitHubError, match="timed out"),
    ):
        c.get_pull(REPO, 7)


def test_token_never_appears_in_errors_or_logs(gh: FakeGitHub, caplog: pytest.LogCaptureFixture) -> None:
    secret = "ghp_" + "s3cr3t" * 6
    gh.add_pull(REPO, 7, head_sha=HEAD)
    gh.fail_server_error("GET", PULL, times=1)
    caplog.set_level(logging.DEBUG)
    with client(gh, token=SecretStr(secret)) as c:
        with pytest.raises(TransientGitHubError) as first:
            c.get_pull(REPO, 7)  # the 5xx, with the token sent
        with pytest.raises(AuthError) as info:
            c.get_pull(REPO, 7)  # the fake does not know this token: 401
        text = f"{first.value!r} {first.value} {info.value!r} {info.value} {c!r}"
    assert secret not in text
    assert secret not in caplog.text
    assert all(secret not in r.path + r.query for r in gh.requests)


def test_pagination_follows_link_headers(gh: FakeGitHub) -> None:
    for number in range(1, 8):
        gh.add_pull(REPO, number, head_sha=HEAD)
    gh.add_pull(REPO, 8, head_sha=HEAD, state="closed")
    with client(gh) as c:
        open_prs = c.list_pulls(REPO, per_page=3)
        all_prs = c.list_pulls(REPO, state="all", per_page=3)
        first_two_pages = list(c.paginate(f"/repos/{REPO}/pulls", params={"per_page": 3}, max_pages=2))
    assert [p.number for p in open_prs] == [7, 6, 5, 4, 3, 2, 1]
    assert len(all_prs) == 8
    assert len(first_two_pages) == 6
    pages = gh.requests_to("GET", f"/repos/{REPO}/pulls")
    assert [r.query for r in pages[:3]] == [
        "state=open&per_page=3",
        "state=open&per_page=3&page=2",
        "state=open&per_page=3&page=3",
    ]


def test_pagination_refuses_to_follow_a_link_to_another_host(gh: FakeGitHub) -> None:
    with client(gh) as c, pytest.raises(CrossOriginError, match=r"evil\.example") as info:
        c.request("GET", "https://evil.example/repos/x/y/pulls?page=2")
    assert info.value.origin == "https://evil.example:443"
    assert gh.requests == []


def test_enterprise_base_url_with_a_path_prefix() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(204)

    with GitHubClient(
        base_url="https://ghe.example.com/api/v3/",
        token=SecretStr("t"),
        transport=httpx.MockTransport(handler),
    ) as c:
        c.dispatch("acme/infra", "preview-create", {"pr": 1})
    assert seen == ["https://ghe.example.com/api/v3/repos/acme/infra/dispatches"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"repository": "not a repo", "number": 1}, "repository"),
        ({"repository": REPO, "number": 0}, "pr_number"),
        ({"repository": REPO, "number": "7; rm -rf /"}, "pr_number"),
    ],
)
def test_inputs_are_validated_before_any_request(
    gh: FakeGitHub, kwargs: dict[str, object], field: str
) -> None:
    with client(gh) as c, pytest.raises(ValidationError) as info:
        c.get_pull(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert gh.requests == []


def test_from_settings_picks_the_credentials() -> None:
    assert GitHubClient.from_settings(Settings()) is None
    with GitHubClient.from_settings(Settings(github_token=SecretStr("t"))) as c:  # type: ignore[union-attr]
        assert repr(c) == "GitHubClient(base_url='https://api.github.com', auth=token)"
    with pytest.raises(ValidationError, match="together"):
        GitHubClient.from_settings(Settings(github_app_id=1))


def test_token_and_app_together_are_refused() -> None:
    from previews.github.app_auth import AppCredentials

    app = AppCredentials(1, SecretStr("-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----"), 2)
    with pytest.raises(ValidationError, match="either"):
        GitHubClient(token=SecretStr("t"), app=app)
