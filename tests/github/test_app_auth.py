"""GitHub App authentication: JWT -> installation token against the fake, cached until near expiry."""

from __future__ import annotations

import logging
import time

import jwt
import pytest
from pydantic import SecretStr

from previews.errors import AuthError, GitHubNotFoundError, TransientGitHubError, ValidationError
from previews.github.app_auth import AppCredentials, InstallationToken, InstallationTokenCache, app_jwt
from previews.github.client import GitHubClient
from previews.settings import Settings
from tests.support.fake_github import FakeGitHub, generate_app_key

REPO = "acme/app"
HEAD = "a" * 40
TOKENS = "/app/installations/67890/access_tokens"


def app_client(gh: FakeGitHub, key: str, **kwargs: object) -> GitHubClient:
    creds = AppCredentials(app_id=12345, private_key=SecretStr(key), installation_id=67890)
    return GitHubClient(base_url=gh.url, app=creds, **kwargs)  # type: ignore[arg-type]


def test_jwt_claims_follow_githubs_rules() -> None:
    private, public = generate_app_key()
    creds = AppCredentials(app_id=12345, private_key=SecretStr(private), installation_id=1)
    now = 1_700_000_000
    token = app_jwt(creds, now=now)
    claims = jwt.decode(
        token, public, algorithms=["RS256"], options={"verify_exp": False, "verify_iat": False}
    )
    assert claims == {"iat": now - 60, "exp": now + 540, "iss": "12345"}
    assert claims["exp"] - claims["iat"] <= 600
    assert jwt.get_unverified_header(token)["alg"] == "RS256"


def test_jwt_lifetime_is_bounded() -> None:
    private, _ = generate_app_key()
    creds = AppCredentials(app_id=1, private_key=SecretStr(private), installation_id=1)
    with pytest.raises(ValidationError):
        app_jwt(creds, lifetime=600)


def test_a_pem_with_escaped_newlines_from_an_env_var_still_signs() -> None:
    private, public = generate_app_key()
    creds = AppCredentials(app_id=7, private_key=SecretStr(private.replace("\n", "\\n")), installation_id=1)
    assert jwt.decode(app_jwt(creds), public, algorithms=["RS256"])["iss"] == "7"


def test_a_broken_key_is_an_auth_error_that_does_not_echo_the_key() -> None:
    broken = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    creds = AppCredentials(app_id=1, private_key=SecretStr(broken), installation_id=1)
    with pytest.raises(AuthError) as info:
        app_jwt(creds)
    assert "bm90IGEga2V5" not in str(info.value)
    assert "bm90IGEga2V5" not in repr(creds)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (
            {"app_id": 0, "installation_id": 1, "private_key": SecretStr("-----BEGIN RSA PRIVATE KEY-----")},
            "APP_ID",
        ),
        (
            {"app_id": 1, "installation_id": -1, "private_key": SecretStr("-----BEGIN RSA PRIVATE KEY-----")},
            "INSTALL",
        ),
        ({"app_id": 1, "installation_id": 1, "private_key": SecretStr("ghp_not_a_key")}, "PRIVATE_KEY"),
    ],
)
def test_app_credentials_are_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        AppCredentials(**kwargs)  # type: ignore[arg-type]
    assert field in info.value.field


def test_installation_token_is_minted_with_a_verified_jwt_and_reused(gh: FakeGitHub) -> None:
    key = gh.enable_app()
    gh.add_pull(REPO, 1, head_sha=HEAD)
    with app_client(gh, key) as c:
        for _ in range(3):
            c.get_pull(REPO, 1)
        c.create_status(REPO, HEAD, state="pending", context="previews/image")
    (mint,) = gh.requests_to("POST", TOKENS)
    assert mint.status == 201
    assert mint.headers["authorization"].startswith(
        "Bearer ey"
    )  # a JWT, checked by the fake with the public key
    (token,) = gh.issued_tokens
    api_calls = [r for r in gh.requests if r.path != TOKENS]
    assert len(api_calls) == 4
    assert {r.headers["authorization"] for r in api_calls} == {f"Bearer {token}"}


def test_a_token_near_expiry_is_refreshed(gh: FakeGitHub) -> None:
    """GitHub's tokens live an hour; one that expires within the refresh margin is replaced before use."""
    key = gh.enable_app(token_ttl=3600)
    gh.add_pull(REPO, 1, head_sha=HEAD)
    now = [time.time()]
    with app_client(gh, key, clock=lambda: now[0]) as c:
        c.get_pull(REPO, 1)
        now[0] += 3600 - 301  # 5 min + 1 s before expiry: still fresh
        c.get_pull(REPO, 1)
        assert len(gh.issued_tokens) == 1
        now[0] += 2  # inside the 5-minute margin
        c.get_pull(REPO, 1)
    assert len(gh.issued_tokens) == 2
    first, second = gh.issued_tokens
    calls = [r.headers["authorization"] for r in gh.requests if r.path != TOKENS]
    assert calls == [f"Bearer {first}", f"Bearer {first}", f"Bearer {second}"]


def test_short_lived_tokens_are_not_cached(gh: FakeGitHub) -> None:
    key = gh.enable_app(token_ttl=200)  # already within the 300 s margin when minted
    gh.add_pull(REPO, 1, head_sha=HEAD)
    with app_client(gh, key) as c:
        c.get_pull(REPO, 1)
        c.get_pull(REPO, 1)
    assert len(gh.issued_tokens) == 2


def test_a_revoked_token_is_replaced_once(gh: FakeGitHub, caplog: pytest.LogCaptureFixture) -> None:
    key = gh.enable_app()
    gh.add_pull(REPO, 1, head_sha=HEAD)
    caplog.set_level(logging.DEBUG)
    with app_client(gh, key) as c:
        c.get_pull(REPO, 1)
        gh.revoke_tokens()
        assert c.get_pull(REPO, 1).number == 1
    assert len(gh.issued_tokens) == 2
    for token in gh.issued_tokens:
        assert token not in caplog.text
    assert "minting a new one" in caplog.text


def test_a_wrong_key_is_refused_by_github(gh: FakeGitHub) -> None:
    gh.enable_app()
    other, _ = generate_app_key()
    gh.add_pull(REPO, 1, head_sha=HEAD)
    with app_client(gh, other) as c, pytest.raises(AuthError, match="JSON web token could not be decoded"):
        c.get_pull(REPO, 1)
    assert gh.issued_tokens == []
    assert gh.requests_to("GET", "/repos/*") == []


def test_an_unknown_installation_is_not_found(gh: FakeGitHub) -> None:
    key = gh.enable_app(installation_id=1)
    with app_client(gh, key) as c, pytest.raises(GitHubNotFoundError, match="access_tokens: 404"):
        c.get_pull(REPO, 1)


def test_token_minting_survives_a_server_error(gh: FakeGitHub) -> None:
    """A 5xx while minting is one transient attempt; the caller's next call mints and reads."""
    key = gh.enable_app()
    gh.add_pull(REPO, 1, head_sha=HEAD)
    gh.fail_server_error("POST", TOKENS, times=1)
    with app_client(gh, key) as c:
        with pytest.raises(TransientGitHubError):
            c.get_pull(REPO, 1)
        assert c.get_pull(REPO, 1).number == 1
    assert [r.status for r in gh.requests_to("POST", TOKENS)] == [502, 201]


def test_from_settings_builds_an_app_client(gh: FakeGitHub) -> None:
    key = gh.enable_app()
    gh.add_pull(REPO, 1, head_sha=HEAD)
    settings = Settings(
        github_api_url=gh.url,
        github_app_id=12345,
        github_app_private_key=SecretStr(key),
        github_app_installation_id=67890,
        github_token=SecretStr("ignored-when-an-app-is-configured"),
    )
    client = GitHubClient.from_settings(settings)
    assert client is not None
    with client:
        assert repr(client).endswith("auth=app)")
        client.get_pull(REPO, 1)
    assert len(gh.issued_tokens) == 1


def test_installation_token_parsing() -> None:
    token = InstallationToken.from_api({"token": "ghs_x", "expires_at": "2016-07-11T22:14:10Z"})
    assert token.expires_at == 1468275250.0
    assert "ghs_x" not in repr(token)
    with pytest.raises(Exception, match="expires_at"):
        InstallationToken.from_api({"token": "ghs_x"})
    with pytest.raises(Exception, match="not a timestamp"):
        InstallationToken.from_api({"token": "ghs_x", "expires_at": "soon"})


def test_cache_hands_out_a_token_until_the_margin() -> None:
    now = [1000.0]
    cache = InstallationTokenCache(refresh_margin=300, clock=lambda: now[0])
    assert cache.current() is None
    cache.store(InstallationToken(token=SecretStr("t"), expires_at=4600.0))
    assert cache.current() is not None
    now[0] = 4299.0
    assert cache.current() is not None
    now[0] = 4300.0
    assert cache.current() is None
    now[0] = 1000.0
    cache.invalidate()
    assert cache.current() is None
