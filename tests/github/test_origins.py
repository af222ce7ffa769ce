"""GitHub REST and GHCR Packages clients against a hostile API: the token never follows a Link or a redirect
to another origin, and page chains end.

Two real HTTP servers (tests/support/hostile_http.py): the API the client is configured for, whose answers
point at a second origin, and that second origin, which records every Authorization header reaching it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from pydantic import SecretStr

from previews.errors import CrossOriginError, GitHubError
from previews.github.client import GitHubClient
from previews.github.packages import GhcrPackage
from previews.registry.oci import OciRegistry
from tests.support.hostile_http import Reply, ScriptedServer, assert_refused

TOKEN = "ghp_token_marker_0123456789"
VERSIONS = "/orgs/acme/packages/container/app/versions"


@pytest.fixture
def foreign() -> Iterator[ScriptedServer]:
    with ScriptedServer(
        lambda method, path, headers: Reply(body=[{"id": 1, "name": "sha256:" + "1" * 64}])
    ) as s:
        yield s


def page_of(path: str) -> int:
    found = re.search(r"[?&]page=(\d+)", path)
    return int(found.group(1)) if found else 1


def api(routes: Callable[[str, str], Reply | None]) -> ScriptedServer:
    """A GitHub API that wants the token and answers with ``routes(method, path)``."""

    def respond(method: str, path: str, headers: dict[str, str]) -> Reply:
        if headers.get("authorization") != f"Bearer {TOKEN}":
            return Reply(401, body={"message": "Bad credentials"})
        reply = routes(method, path)
        return reply if reply is not None else Reply(404, body={"message": "Not Found"})

    return ScriptedServer(respond)


def test_a_pagination_link_to_another_origin_is_refused(foreign: ScriptedServer) -> None:
    def routes(method: str, path: str) -> Reply | None:
        return Reply(headers={"Link": f'<{foreign.url}/repos/acme/app/pulls?page=2>; rel="next"'}, body=[])

    with (
        api(routes) as hostile,
        GitHubClient(base_url=hostile.url, token=SecretStr(TOKEN)) as github,
        pytest.raises(CrossOriginError) as info,
    ):
        list(github.paginate("/repos/acme/app/pulls"))
    assert_refused(info, foreign, TOKEN)


def test_a_redirect_to_another_origin_is_refused(foreign: ScriptedServer) -> None:
    def routes(method: str, path: str) -> Reply | None:
        return Reply(301, {"Location": f"{foreign.url}/repositories/1"})

    with (
        api(routes) as hostile,
        GitHubClient(base_url=hostile.url, token=SecretStr(TOKEN)) as github,
        pytest.raises(CrossOriginError) as info,
    ):
        github.request_json("GET", "/repos/acme/app")
    assert_refused(info, foreign, TOKEN)


def test_a_same_origin_redirect_is_followed_with_the_token() -> None:
    """GitHub answers 301 for a renamed repository; its Location stays on api.github.com."""

    def routes(method: str, path: str) -> Reply | None:
        if path == "/repos/acme/old-name":
            return Reply(301, {"Location": "/repositories/1"})
        return Reply(body={"id": 1, "full_name": "acme/new-name"}) if path == "/repositories/1" else None

    with api(routes) as hostile, GitHubClient(base_url=hostile.url, token=SecretStr(TOKEN)) as github:
        assert github.request_json("GET", "/repos/acme/old-name")["full_name"] == "acme/new-name"
    assert [s.path for s in hostile.seen] == ["/repos/acme/old-name", "/repositories/1"]


def test_a_repeated_link_ends_the_chain_and_a_long_one_is_capped() -> None:
    def routes(method: str, path: str) -> Reply | None:
        page = page_of(path)
        following = 1 if path.startswith("/loop") and page == 2 else page + 1
        base = path.split("?")[0]
        return Reply(headers={"Link": f'<{base}?page={following}>; rel="next"'}, body=[page])

    with api(routes) as hostile, GitHubClient(base_url=hostile.url, token=SecretStr(TOKEN)) as github:
        assert list(github.paginate("/loop?page=1")) == [1, 2]
        assert list(github.paginate("/endless", max_pages=4)) == [1, 2, 3, 4]
        with pytest.raises(GitHubError, match="more than 4 pages"):
            list(github.paginate("/endless", max_pages=4, require_all=True))


def ghcr(api_url: str, manifests_url: str, **kwargs: object) -> GhcrPackage:
    manifests = OciRegistry(manifests_url, username="acme", password=SecretStr(TOKEN))
    return GhcrPackage(
        owner="acme", package="app", token=SecretStr(TOKEN), api_url=api_url, manifests=manifests, **kwargs
    )  # type: ignore[arg-type]


def test_ghcr_version_pages_never_take_the_token_elsewhere(foreign: ScriptedServer) -> None:
    def routes(method: str, path: str) -> Reply | None:
        link = f'<{foreign.url}/organizations/1/packages/container/app/versions?page=2>; rel="next"'
        return Reply(headers={"Link": link}, body=[]) if path.startswith(VERSIONS) else None

    with (
        api(routes) as hostile,
        ghcr(hostile.url, hostile.url) as target,
        pytest.raises(CrossOriginError) as info,
    ):
        target.list_versions()
    assert_refused(info, foreign, TOKEN)


def test_an_endless_ghcr_listing_is_refused_rather_than_cut_short() -> None:
    """A cleanup that saw only part of the versions could take a kept index's children for unreferenced."""

    def routes(method: str, path: str) -> Reply | None:
        page = page_of(path)
        return Reply(headers={"Link": f'<{VERSIONS}?page={page + 1}>; rel="next"'}, body=[])

    with (
        api(routes) as hostile,
        ghcr(hostile.url, hostile.url, max_pages=3) as target,
        pytest.raises(GitHubError, match="more than 3 pages"),
    ):
        target.list_versions()
    assert len(hostile.seen) == 3
