"""A small synchronous GitHub REST client: pull requests, commit statuses, repository dispatch.

Every call goes through :meth:`GitHubClient.request`, the one seam that adds authentication (a token, or a
GitHub App installation token minted and cached by :mod:`previews.github.app_auth`), retries transient
failures a bounded number of times, and maps answers onto the exception tree:

- 401, 403 -> :class:`AuthError`, except rate limits;
- 403/429 with ``retry-after``, ``x-ratelimit-remaining: 0`` or a "secondary rate limit" message, 5xx,
  timeouts and connection errors -> :class:`TransientGitHubError` (``retry_after`` in seconds when known);
- 404 -> :class:`GitHubNotFoundError`, 422 -> :class:`GitHubUnprocessableError`, other 4xx -> :class:`GitHubError`.

Tokens travel only in the ``Authorization`` header; they never appear in URLs, logs or error messages.
https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, Self

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
    GitHubUnprocessableError,
    TransientGitHubError,
    ValidationError,
)
from previews.github.app_auth import AppCredentials, InstallationToken, InstallationTokenCache, app_jwt

log = logging.getLogger("previews.github")

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
USER_AGENT = "previews/0.1 (python-httpx)"
MAX_EVENT_TYPE_CHARS = 100
MAX_CLIENT_PAYLOAD_KEYS = 10
MAX_CLIENT_PAYLOAD_BYTES = 64 * 1024
SECONDARY_LIMIT_DEFAULT_WAIT = 60.0


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


class CombinedStatus(BaseModel):
    """``GET /repos/{repo}/commits/{ref}/status``: the combined state and the latest status per context."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    state: Literal["error", "failure", "pending", "success"]
    sha: str
    total_count: int
    statuses: tuple[CommitStatus, ...]


def _parse_retry_after(value: str, now: float) -> float | None:
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - now)


def _error_details(response: httpx.Response) -> tuple[str, list[dict[str, Any]]]:
    """GitHub's ``message`` (or a short text snippet) and the 422 ``errors`` list."""
    try:
        body = response.json()
    except ValueError:
        snippet = " ".join(response.text.split())[:120]
        return (snippet or response.reason_phrase or "no body"), []
    if not isinstance(body, dict):
        return str(body)[:200], []
    message = str(body.get("message") or response.reason_phrase or "")[:300]
    errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
    return message, errors


def _describe_errors(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        where = ".".join(str(error[k]) for k in ("resource", "field") if error.get(k))
        what = error.get("message") or error.get("code") or "invalid"
        parts.append(f"{where} {what}".strip())
    return "; ".join(parts)


class GitHubClient:
    """GitHub REST over httpx (sync). Authenticate with a token or an App installation; or neither (public reads).

    ``max_retries`` transient failures are retried inside the client, each after ``retry_after`` when GitHub
    said how long to wait (at most ``max_retry_wait`` seconds; a longer wait is raised to the caller instead),
    else after ``backoff * 2**attempt`` seconds.
    """

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_API_URL,
        token: SecretStr | None = None,
        app: AppCredentials | None = None,
        timeout: float = 10.0,
        max_retries: int = 2,
        backoff: float = 1.0,
        max_retry_wait: float = 30.0,
        token_refresh_margin: float = 300.0,
        user_agent: str = USER_AGENT,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if token is not None and app is not None:
            raise ValidationError("github credentials", "configure either a token or a GitHub App, not both")
        if not base_url.startswith(("https://", "http://")):
            raise ValidationError("PREVIEWS_GITHUB_API_URL", "must be an http(s) URL")
        if not 0 <= max_retries <= 10:
            raise ValidationError("max_retries", "must be 0-10")
        self.base_url = base_url.rstrip("/")
        self._token = token if token is not None and token.get_secret_value() else None
        self._app = app
        self._tokens = InstallationTokenCache(refresh_margin=token_refresh_margin, clock=clock)
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_retry_wait = max_retry_wait
        self._sleep = sleep
        self._clock = clock
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
        """Send one API request with auth, bounded retries of transient failures and error mapping.

        ``path`` is relative to the API base URL (``/repos/o/r/pulls/1``), or an absolute URL on the same
        origin (a pagination ``next`` link). Returns the 2xx response.
        """
        where = f"GitHub {method} {_path_only(path)}"

        def once() -> httpx.Response:
            return self._send_once(where, method, path, json_body=json_body, params=params)

        try:
            return self._with_retries(where, once)
        except AuthError as exc:
            # A cached installation token GitHub no longer accepts (revoked, expired early): mint one, once.
            if self._app is None or exc.status != 401 or self._tokens.current() is None:
                raise
            self._tokens.invalidate()
            log.warning("%s: GitHub refused the cached installation token (401); minting a new one", where)
            return self._with_retries(where, once)

    def _with_retries(self, where: str, call: Callable[[], httpx.Response]) -> httpx.Response:
        attempt = 0
        while True:
            try:
                return call()
            except TransientGitHubError as exc:
                wait = exc.retry_after if exc.retry_after is not None else self.backoff * 2**attempt
                if attempt >= self.max_retries or wait > self.max_retry_wait:
                    raise
                attempt += 1
                log.warning("%s; retry %d/%d in %.1fs", exc, attempt, self.max_retries, wait)
                self._sleep(wait)

    def _send_once(
        self,
        where: str,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
        authorization: str | None = None,
    ) -> httpx.Response:
        url = self._resolve(path)
        headers: dict[str, str] = {}
        if authorization is not None:
            headers["Authorization"] = authorization
        elif self._token is not None or self._app is not None:
            headers["Authorization"] = self._authorization()
        try:
            response = self._http.request(
                method, url, json=json_body, params=dict(params) if params else None, headers=headers
            )
        except httpx.TimeoutException as exc:
            raise TransientGitHubError(f"{where}: timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise TransientGitHubError(f"{where}: connection failed ({type(exc).__name__})") from exc
        if response.is_success:
            return response
        raise self._map_error(where, response)

    def _resolve(self, path: str) -> str:
        if path.startswith(("https://", "http://")):
            if not (path == self.base_url or path.startswith(self.base_url + "/")):
                raise GitHubError(f"refusing to send credentials to a URL outside {self.base_url}")
            return path
        return path.lstrip("/")

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
            app = self._app
            response = self._with_retries(
                where, lambda: self._send_once(where, "POST", path, authorization=f"Bearer {app_jwt(app)}")
            )
            token = InstallationToken.from_api(self._json(response, where))
            self._tokens.store(token)
            log.info("minted a GitHub App installation token (installation %d)", app.installation_id)
            return token.token

    def _map_error(self, where: str, response: httpx.Response) -> Exception:
        status = response.status_code
        message, errors = _error_details(response)
        text = f"{where}: {status} {message}".rstrip()
        if status in (403, 429):
            retry_after = self._rate_limit_wait(response, message)
            if retry_after is not None or status == 429:
                return TransientGitHubError(f"{text} (rate limited)", status=status, retry_after=retry_after)
        if status in (401, 403):
            return AuthError(text, status=status)
        if status == 404:
            return GitHubNotFoundError(text, status=status)
        if status == 422:
            detail = _describe_errors(errors)
            return GitHubUnprocessableError(
                f"{text} ({detail})" if detail else text, status=status, errors=errors
            )
        if status >= 500:
            retry_after_header = response.headers.get("retry-after")
            wait = _parse_retry_after(retry_after_header, self._clock()) if retry_after_header else None
            return TransientGitHubError(text, status=status, retry_after=wait)
        return GitHubError(text, status=status)

    def _rate_limit_wait(self, response: httpx.Response, message: str) -> float | None:
        """Seconds to wait when a 403/429 is a rate limit, else None."""
        now = self._clock()
        header = response.headers.get("retry-after")
        if header is not None:
            parsed = _parse_retry_after(header, now)
            if parsed is not None:
                return parsed
        if response.headers.get("x-ratelimit-remaining") == "0":
            reset = response.headers.get("x-ratelimit-reset")
            try:
                return (
                    max(0.0, float(reset) - now) + 1.0 if reset is not None else SECONDARY_LIMIT_DEFAULT_WAIT
                )
            except ValueError:
                return SECONDARY_LIMIT_DEFAULT_WAIT
        if "rate limit" in message.lower():
            return SECONDARY_LIMIT_DEFAULT_WAIT
        return None

    @staticmethod
    def _json(response: httpx.Response, where: str) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise TransientGitHubError(
                f"{where}: {response.status_code} with a body that is not JSON", status=response.status_code
            ) from exc

    def request_json(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
    ) -> Any:
        """:meth:`request`, then the decoded JSON body. A 2xx with a body that is not JSON is retried as transient."""
        attempt = 0
        while True:
            response = self.request(method, path, json_body=json_body, params=params)
            try:
                return self._json(response, f"GitHub {method} {_path_only(path)}")
            except TransientGitHubError:
                if attempt >= self.max_retries:
                    raise
                wait = self.backoff * 2**attempt
                attempt += 1
                log.warning(
                    "GitHub %s %s: body is not JSON; retry %d in %.1fs",
                    method,
                    _path_only(path),
                    attempt,
                    wait,
                )
                self._sleep(wait)

    def paginate(
        self, path: str, *, params: Mapping[str, str | int] | None = None, max_pages: int = 50
    ) -> Iterator[Any]:
        """Yield the items of a list endpoint, following ``Link: <...>; rel="next"`` for up to ``max_pages``."""
        next_url: str | None = path
        query: Mapping[str, str | int] | None = params
        pages = 0
        while next_url is not None and pages < max_pages:
            response = self.request("GET", next_url, params=query)
            body = self._json(response, f"GitHub GET {_path_only(path)}")
            if not isinstance(body, list):
                raise GitHubError(f"GitHub GET {_path_only(path)}: expected a JSON list")
            yield from body
            pages += 1
            next_url = response.links.get("next", {}).get("url")
            query = None  # the next link carries the query

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
