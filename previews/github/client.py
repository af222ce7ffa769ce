"""A small synchronous GitHub REST client: pull requests, commit statuses, repository dispatch, pages.

Every call goes through :meth:`GitHubClient.request`, the one seam that adds authentication (a token, or a
GitHub App installation token minted and cached by :mod:`previews.github.app_auth`), keeps credentials on
the configured origin and turns answers into values or errors with :mod:`previews.github.sansio`.

- One attempt per call: a transient failure (5xx, rate limit, timeout, connection error) raises
  :class:`TransientGitHubError`, with ``retry_after`` when GitHub said how long to wait; retrying is the
  caller's one retry layer (Prefect task retries). The only second request is a fresh installation token
  after GitHub refused the cached one (401).
- Credentials go only to the origin of ``base_url``: a pagination ``Link`` or a redirect to another origin
  raises :class:`CrossOriginError` naming it; same-origin redirects are followed (at most 5).

Tokens travel only in the ``Authorization`` header; they never appear in URLs, logs or error messages.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr
from pydantic import ValidationError as PydanticValidationError

from previews.core.forks import is_fork
from previews.core.names import parse_pr_number, parse_repository, parse_sha
from previews.core.status import STATUS_STATES, StatusState, truncate
from previews.errors import (
    AuthError,
    GitHubError,
    GitHubNotFoundError,
    TransientGitHubError,
    ValidationError,
)
from previews.github.app_auth import AppCredentials, InstallationToken, InstallationTokenCache, app_jwt
from previews.github.sansio import decipher_response, error_for
from previews.http import MAX_REDIRECTS, PageChain, check_origin, origin, redirect_location

log = logging.getLogger("previews.github")

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
USER_AGENT = "previews/0.1 (python-httpx)"
MAX_EVENT_TYPE_CHARS = 100
MAX_CLIENT_PAYLOAD_KEYS = 10
MAX_CLIENT_PAYLOAD_BYTES = 64 * 1024


def validate_dispatch(event_type: object, client_payload: object) -> bytes:
    """Check GitHub's repository_dispatch limits before sending; return the payload's compact JSON.

    ``event_type``: 1-100 characters. ``client_payload``: a JSON object with at most 10 top-level keys whose
    JSON is under 64 KB.
    """
    if not isinstance(event_type, str) or not 1 <= len(event_type) <= MAX_EVENT_TYPE_CHARS:
        raise ValidationError("event_type", f"must be a string of 1-{MAX_EVENT_TYPE_CHARS} characters")
    if not isinstance(client_payload, Mapping):
        raise ValidationError("client_payload", "must be a JSON object")
    if len(client_payload) > MAX_CLIENT_PAYLOAD_KEYS:
        raise ValidationError(
            "client_payload",
            f"has {len(client_payload)} top-level keys; GitHub allows at most {MAX_CLIENT_PAYLOAD_KEYS}",
        )
    try:
        encoded = json.dumps(client_payload, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ValidationError("client_payload", f"is not JSON-serialisable: {exc}") from exc
    if len(encoded) >= MAX_CLIENT_PAYLOAD_BYTES:
        raise ValidationError(
            "client_payload",
            f"is {len(encoded)} bytes of JSON; GitHub requires less than {MAX_CLIENT_PAYLOAD_BYTES}",
        )
    return encoded


class PullRequestInfo(BaseModel):
    """The facts about a pull request the pipeline acts on, read from ``GET /repos/{repo}/pulls/{n}``."""

    model_config = ConfigDict(frozen=True)

    number: int
    state: Literal["open", "closed"]
    merged: bool
    draft: bool
    head_sha: str
    head_ref: str
    head_repository: str | None
    base_sha: str
    base_ref: str
    base_repository: str
    labels: tuple[str, ...]
    html_url: str
    is_fork: bool

    @classmethod
    def from_api(cls, body: object) -> PullRequestInfo:
        """Build from GitHub's pull-request JSON; a missing or mistyped field is a :class:`GitHubError`."""
        try:
            if not isinstance(body, dict):
                raise TypeError("not a JSON object")
            head, base = body["head"], body["base"]
            head_repo = head.get("repo")
            head_repository = head_repo["full_name"] if isinstance(head_repo, dict) else None
            base_repository = base["repo"]["full_name"]
            merged = body.get("merged")
            return cls(
                number=body["number"],
                state=body["state"],
                merged=bool(merged) if merged is not None else body.get("merged_at") is not None,
                draft=bool(body.get("draft", False)),
                head_sha=parse_sha(head["sha"], field="head.sha", full=True),
                head_ref=head["ref"],
                head_repository=head_repository,
                base_sha=parse_sha(base["sha"], field="base.sha", full=True),
                base_ref=base["ref"],
                base_repository=base_repository,
                labels=tuple(label["name"] for label in body.get("labels") or []),
                html_url=body["html_url"],
                is_fork=is_fork(head_repository, base_repository),
            )
        except (KeyError, TypeError, PydanticValidationError, ValidationError) as exc:
            raise GitHubError(f"unexpected pull request shape from GitHub: {str(exc)[:200]}") from exc


class CommitStatus(BaseModel):
    """One commit status as GitHub stores it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: int
    state: StatusState
    context: str
    description: str | None = None
    target_url: str | None = None
    updated_at: datetime | None = None


class CombinedStatus(BaseModel):
    """``GET /repos/{repo}/commits/{ref}/status``: the combined state and the latest status per context."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    state: Literal["error", "failure", "pending", "success"]
    sha: str
    total_count: int
    statuses: tuple[CommitStatus, ...]


class GitHubClient:
    """GitHub REST over httpx (sync). Authenticate with a token or an App installation; or neither (public reads).

    One attempt per call (see the module docstring); ``clock`` is the wall clock that rate-limit resets are
    measured against.
    """

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_API_URL,
        token: SecretStr | None = None,
        app: AppCredentials | None = None,
        timeout: float = 10.0,
        token_refresh_margin: float = 300.0,
        user_agent: str = USER_AGENT,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if token is not None and app is not None:
            raise ValidationError("github credentials", "configure either a token or a GitHub App, not both")
        if not base_url.startswith(("https://", "http://")):
            raise ValidationError("PREVIEWS_GITHUB_API_URL", "must be an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.origin = origin(self.base_url)
        self._token = token if token is not None and token.get_secret_value() else None
        self._app = app
        self._tokens = InstallationTokenCache(refresh_margin=token_refresh_margin, clock=clock)
        self._clock = clock
        self.requests_sent = 0  # every HTTP request sent, redirects and token minting included
        self.rate_remaining: int | None = None  # x-ratelimit-remaining of the latest answer
        self._http = httpx.Client(
            base_url=self.base_url + "/",
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            headers={
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": user_agent,
            },
        )

    def __repr__(self) -> str:
        auth = "app" if self._app else "token" if self._token else "anonymous"
        return f"GitHubClient(base_url={self.base_url!r}, auth={auth})"

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the seam -------------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
    ) -> httpx.Response:
        """Send one API request with auth and error mapping; returns the 2xx response.

        ``path`` is relative to the API base URL (``/repos/o/r/pulls/1``), or an absolute URL on the same
        origin (a pagination ``next`` link).
        """
        where = f"GitHub {method} {_path_only(path)}"
        try:
            return self._send(where, method, path, json_body=json_body, params=params)
        except AuthError as exc:
            # A cached installation token GitHub no longer accepts (revoked, expired early): mint one, once.
            if self._app is None or exc.status != 401 or self._tokens.current() is None:
                raise
            self._tokens.invalidate()
            log.warning("%s: GitHub refused the cached installation token (401); minting a new one", where)
            return self._send(where, method, path, json_body=json_body, params=params)

    def _send(
        self,
        where: str,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
        authorization: str | None = None,
    ) -> httpx.Response:
        url = self._absolute(path, where)
        headers: dict[str, str] = {}
        if authorization is not None:
            headers["Authorization"] = authorization
        elif self._token is not None or self._app is not None:
            headers["Authorization"] = self._authorization()
        query = dict(params) if params else None
        for _hop in range(MAX_REDIRECTS + 1):
            self.requests_sent += 1
            try:
                response = self._http.request(method, url, json=json_body, params=query, headers=headers)
            except httpx.TimeoutException as exc:
                raise TransientGitHubError(f"{where}: timed out ({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                raise TransientGitHubError(f"{where}: connection failed ({type(exc).__name__})") from exc
            self._note_rate(response.headers)
            target = redirect_location(response.status_code, response.headers, str(response.url))
            if target is None:
                break
            url, query = check_origin(target, self.origin, what=where), None
            if response.status_code == 303:
                method, json_body = "GET", None
        if response.is_success:
            return response
        raise error_for(
            response.status_code, response.headers, response.content, where=where, now=self._clock()
        )

    def _note_rate(self, headers: httpx.Headers) -> None:
        remaining = headers.get("x-ratelimit-remaining", "").strip()
        if remaining.isdigit():
            self.rate_remaining = int(remaining)

    def _absolute(self, path: str, where: str) -> str:
        if path.startswith(("https://", "http://")):
            return check_origin(path, self.origin, what=where)
        return f"{self.base_url}/{path.lstrip('/')}"

    def _authorization(self) -> str:
        if self._token is not None:
            return f"Bearer {self._token.get_secret_value()}"
        assert self._app is not None
        return f"Bearer {self._installation_token().get_secret_value()}"

    def _installation_token(self) -> SecretStr:
        assert self._app is not None
        with self._tokens.lock:
            cached = self._tokens.current()
            if cached is not None:
                return cached
            path = f"/app/installations/{self._app.installation_id}/access_tokens"
            where = f"GitHub POST {path}"
            response = self._send(where, "POST", path, authorization=f"Bearer {app_jwt(self._app)}")
            token = InstallationToken.from_api(self._decode(response, where))
            self._tokens.store(token)
            log.info("minted a GitHub App installation token (installation %d)", self._app.installation_id)
            return token.token

    def _decode(self, response: httpx.Response, where: str) -> Any:
        return decipher_response(
            response.status_code, response.headers, response.content, where=where, now=self._clock()
        )

    def request_json(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
    ) -> Any:
        """:meth:`request`, then the decoded JSON body (a 2xx body that is not JSON is transient)."""
        response = self.request(method, path, json_body=json_body, params=params)
        return self._decode(response, f"GitHub {method} {_path_only(path)}")

    def paginate(
        self,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        max_pages: int = 50,
        require_all: bool = False,
    ) -> Iterator[Any]:
        """Yield the items of a list endpoint page by page, following ``Link: <...>; rel="next"``.

        The chain stays on GitHub's origin (else :class:`CrossOriginError`), ends at a link already read,
        and stops after ``max_pages`` pages; with ``require_all`` a listing longer than that raises
        :class:`GitHubError` instead of ending short.
        """
        where = f"GitHub GET {_path_only(path)}"
        chain = PageChain(allowed=self.origin, what=where, max_pages=max_pages)
        url: str | None = path
        query: Mapping[str, str | int] | None = params
        while url is not None:
            response = self.request("GET", url, params=query)
            body = self._decode(response, where)
            if not isinstance(body, list):
                raise GitHubError(f"{where}: expected a JSON list")
            yield from body
            url, query = chain.follow(str(response.url), response.headers), None
        if require_all and chain.truncated:
            raise GitHubError(f"{where}: more than {max_pages} pages; refusing to act on part of the list")

    # --- endpoints -------------------------------------------------------------------------------------------

    def get_pull(self, repository: str, number: int) -> PullRequestInfo:
        """``GET /repos/{repository}/pulls/{number}``."""
        repo = parse_repository(repository)
        pr = parse_pr_number(number)
        return PullRequestInfo.from_api(self.request_json("GET", f"/repos/{repo}/pulls/{pr}"))

    def list_pulls(
        self,
        repository: str,
        *,
        state: Literal["open", "closed", "all"] = "open",
        per_page: int = 100,
        max_pages: int = 50,
    ) -> list[PullRequestInfo]:
        """``GET /repos/{repository}/pulls`` across pages (``merged`` comes from ``merged_at`` here)."""
        repo = parse_repository(repository)
        if state not in ("open", "closed", "all"):
            raise ValidationError("state", "must be open, closed or all")
        if not 1 <= per_page <= 100:
            raise ValidationError("per_page", "must be 1-100")
        items = self.paginate(
            f"/repos/{repo}/pulls", params={"state": state, "per_page": per_page}, max_pages=max_pages
        )
        return [PullRequestInfo.from_api(item) for item in items]

    def remove_label(self, repository: str, number: int, name: str) -> bool:
        """``DELETE /repos/{repository}/issues/{number}/labels/{name}``; False when the label was not on it."""
        repo = parse_repository(repository)
        pr = parse_pr_number(number)
        if not name or len(name) > 50:
            raise ValidationError("label", "must be 1-50 characters")
        try:
            self.request_json("DELETE", f"/repos/{repo}/issues/{pr}/labels/{quote(name, safe='')}")
        except GitHubNotFoundError:
            return False
        return True

    def create_status(
        self,
        repository: str,
        sha: str,
        *,
        state: StatusState | str,
        context: str,
        description: str | None = None,
        target_url: str | None = None,
    ) -> CommitStatus:
        """``POST /repos/{repository}/statuses/{sha}``; ``description`` is cut to 140 characters."""
        repo = parse_repository(repository)
        commit = parse_sha(sha, field="sha", full=True)
        if state not in STATUS_STATES:
            raise ValidationError("state", f"must be one of {', '.join(STATUS_STATES)}")
        if not context or len(context) > 255:
            raise ValidationError("context", "must be 1-255 characters")
        if target_url is not None and not target_url.startswith(("https://", "http://")):
            raise ValidationError("target_url", "must be an http(s) URL")
        body: dict[str, str] = {"state": state, "context": context}
        if description is not None:
            body["description"] = truncate(description)
        if target_url is not None:
            body["target_url"] = target_url
        answer = self.request_json("POST", f"/repos/{repo}/statuses/{commit}", json_body=body)
        try:
            return CommitStatus.model_validate(answer)
        except PydanticValidationError as exc:
            raise GitHubError(f"unexpected commit status shape from GitHub: {str(exc)[:200]}") from exc

    def combined_status(self, repository: str, ref: str) -> CombinedStatus:
        """``GET /repos/{repository}/commits/{ref}/status`` (``ref`` is a SHA here)."""
        repo = parse_repository(repository)
        commit = parse_sha(ref, field="ref")
        answer = self.request_json("GET", f"/repos/{repo}/commits/{commit}/status", params={"per_page": 100})
        try:
            return CombinedStatus.model_validate(answer)
        except PydanticValidationError as exc:
            raise GitHubError(f"unexpected combined status shape from GitHub: {str(exc)[:200]}") from exc

    def dispatch(self, repository: str, event_type: str, client_payload: Mapping[str, Any]) -> None:
        """``POST /repos/{repository}/dispatches`` (204); limits are checked before anything is sent."""
        repo = parse_repository(repository, field="infra_repository")
        validate_dispatch(event_type, client_payload)
        body = {"event_type": event_type, "client_payload": dict(client_payload)}
        self.request("POST", f"/repos/{repo}/dispatches", json_body=body)


def _path_only(path: str) -> str:
    """The path of a relative or absolute URL without its query (for messages)."""
    if path.startswith(("https://", "http://")):
        return httpx.URL(path).path
    return path.split("?", 1)[0]
