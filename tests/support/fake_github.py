"""A fake GitHub REST API: a small Starlette app served by uvicorn on 127.0.0.1 in a background thread.

It implements exactly the endpoints `previews` uses, with the shapes, status codes and headers recorded in
``tests/fixtures/github/api/`` (bodies are built from the recorded examples):

- ``GET  /repos/{o}/{r}/pulls/{n}``                  200 pull request | 404
- ``GET  /repos/{o}/{r}/pulls``                      200 list, paginated with ``Link`` (``per_page``, ``page``)
- ``POST /repos/{o}/{r}/statuses/{sha}``             201 status + ``Location`` | 422
- ``GET  /repos/{o}/{r}/commits/{ref}/status``       200 combined status
- ``POST /repos/{o}/{r}/dispatches``                 204 | 422 | 404 (unknown repository)
- ``POST /app/installations/{id}/access_tokens``     201 token (the App JWT is verified with the public key)
- ``POST /repos/{o}/{r}/check-runs``                 201 check run | 403 for a non-App token | 422
- ``PATCH /repos/{o}/{r}/check-runs/{id}``           200 check run | 404 | 422
- ``GET  /repos/{o}/{r}/commits/{ref}/check-runs``   200 ``{"total_count", "check_runs"}`` (``check_name``, ``status``)

Check runs are built from the recorded ``check-run`` examples and validated against the request schemas of
``checks/create`` and ``checks/update`` (required fields, enums, ``conclusion`` with ``completed``, output
limits).

Every request needs ``Authorization`` (401 otherwise) and is recorded. Faults can be injected per path.

Usage::

    with FakeGitHub() as gh:
        gh.add_pull("acme/app", 7, head_sha=..., base_sha=..., head_repo="someone/app", labels=["x"])
        client = GitHubClient(base_url=gh.url, token=SecretStr(gh.token))
        ...
        gh.statuses("acme/app", sha)   # every status posted, in order
        gh.dispatches                  # every accepted dispatch body, in order
        gh.requests                    # every request (method, path, headers, json)
"""

from __future__ import annotations

import copy
import datetime as dt
import fnmatch
import functools
import itertools
import json
import re
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support import fixtures
from tests.support.services import free_port

FIXTURES = fixtures.FIXTURES / "github/api"
CHECK_CONCLUSIONS = (
    "action_required",
    "cancelled",
    "failure",
    "neutral",
    "success",
    "skipped",
    "stale",
    "timed_out",
)
DOCS = "https://docs.github.com/rest"
SECONDARY_LIMIT_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. "
    "If you reach out to GitHub Support for help, please include the request ID 0684:7169:2CA0D67:54BEA6C."
)


def _fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def generate_app_key() -> tuple[str, str]:
    """A fresh RSA key pair for a fake GitHub App: (private PEM, public PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@functools.cache
def _shared_app_key() -> tuple[str, str]:
    return generate_app_key()


@dataclass
class RecordedRequest:
    """One request the fake received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    json: Any
    status: int = 0


@dataclass
class Fault:
    """An injected answer for requests matching ``method`` and the ``path`` glob, ``times`` times."""

    method: str
    path: str
    status: int
    body: bytes
    headers: dict[str, str]
    times: int
    used: int = 0


@dataclass
class _App:
    app_id: int
    public_key: str
    installations: set[int]
    token_ttl: float = 3600.0
    issued: list[str] = field(default_factory=list)


class FakeGitHub:
    """The fake GitHub API. ``token`` is a valid personal access token; ``enable_app`` adds a GitHub App."""

    def __init__(self, *, token: str = "ghp_fake_personal_access_token_0001") -> None:
        self.token = token
        self.requests: list[RecordedRequest] = []
        self.dispatches: list[dict[str, Any]] = []
        self._dispatches_by_repo: list[tuple[str, dict[str, Any]]] = []
        self._pulls: dict[tuple[str, int], dict[str, Any]] = {}
        self._statuses: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._check_runs: dict[int, tuple[str, dict[str, Any]]] = {}
        self.check_run_requests: list[tuple[str, int | None, dict[str, Any]]] = []
        self._repos: set[str] = set()
        self._faults: list[Fault] = []
        self._tokens: dict[str, float] = {token: float("inf")}
        self._app: _App | None = None
        self._ids = itertools.count(18402522094)
        self._lock = threading.Lock()
        self._remaining = 5000
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- lifecycle -----------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The API base URL (pass as ``base_url`` / ``PREVIEWS_GITHUB_API_URL``)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeGitHub:
        """Serve on a free port; returns once the server accepts connections."""
        self.port = free_port()
        app = Starlette(
            routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "PATCH", "DELETE"])]
        )
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            ws="none",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-github", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake GitHub did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop the server thread."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- state ---------------------------------------------------------------------------------------------

    def add_repo(self, repository: str) -> None:
        """Make a repository exist (for dispatches); ``add_pull`` does this for its base repository."""
        self._repos.add(repository.lower())

    def add_pull(
        self,
        repository: str,
        number: int,
        *,
        head_sha: str,
        base_sha: str = "f" * 40,
        head_repo: str | None = "",
        labels: list[str] | tuple[str, ...] = (),
        state: str = "open",
        merged: bool = False,
        draft: bool = False,
        head_ref: str = "feature",
        base_ref: str = "main",
    ) -> dict[str, Any]:
        """Add (or replace) a pull request built from the recorded example. ``head_repo=""`` means the base
        repository (not a fork); ``None`` means the head repository was deleted."""
        owner, name = repository.split("/")
        body = copy.deepcopy(_fixture("examples/pull-request.json"))
        api = self.url
        body.update(
            number=number,
            state=state,
            merged=merged,
            merged_at="2026-01-01T00:00:00Z" if merged else None,
            draft=draft,
            url=f"{api}/repos/{repository}/pulls/{number}",
            html_url=f"https://github.com/{repository}/pull/{number}",
            labels=[
                {
                    "id": 208045946 + i,
                    "node_id": f"MDU6TGFiZWwy{i:012d}",
                    "url": f"{api}/repos/{repository}/labels/{n}",
                    "name": n,
                    "description": None,
                    "color": "f29513",
                    "default": False,
                }
                for i, n in enumerate(labels)
            ],
            requested_teams=[],
        )
        body["head"].update(sha=head_sha, ref=head_ref, label=f"{owner}:{head_ref}")
        body["base"].update(sha=base_sha, ref=base_ref, label=f"{owner}:{base_ref}")
        body["base"]["repo"].update(full_name=repository, name=name, fork=False)
        body["base"]["repo"]["owner"]["login"] = owner
        if head_repo is None:
            body["head"]["repo"] = None
        else:
            full = head_repo or repository
            body["head"]["repo"].update(full_name=full, name=full.split("/")[1], fork=full != repository)
            body["head"]["repo"]["owner"]["login"] = full.split("/")[0]
        with self._lock:
            self._pulls[(repository.lower(), number)] = body
            self._repos.add(repository.lower())
        return body

    def set_head(self, repository: str, number: int, head_sha: str) -> None:
        """A new push to the PR: its head SHA moves."""
        with self._lock:
            self._pulls[(repository.lower(), number)]["head"]["sha"] = head_sha

    def close_pull(self, repository: str, number: int, *, merged: bool = False) -> None:
        """The PR closes (``merged`` or not)."""
        with self._lock:
            pull = self._pulls[(repository.lower(), number)]
            pull.update(state="closed", merged=merged, closed_at="2026-01-02T00:00:00Z")
            pull["merged_at"] = "2026-01-02T00:00:00Z" if merged else None

    def add_status(
        self, repository: str, sha: str, *, state: str, context: str, updated_at: dt.datetime
    ) -> None:
        """A status posted earlier (at ``updated_at``), as if by a run that is gone now."""
        status = copy.deepcopy(_fixture("examples/status.json"))
        stamp = updated_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status.update(id=next(self._ids), state=state, context=context, created_at=stamp, updated_at=stamp)
        with self._lock:
            self._statuses.setdefault((repository.lower(), sha), []).append(status)

    def statuses(self, repository: str, sha: str) -> list[dict[str, Any]]:
        """Every status posted for ``sha``, oldest first."""
        with self._lock:
            return list(self._statuses.get((repository.lower(), sha), []))

    def check_runs(self, repository: str, sha: str | None = None) -> list[dict[str, Any]]:
        """Check runs of ``repository`` (on ``sha``), oldest first, as GitHub would answer them now."""
        with self._lock:
            return [
                copy.deepcopy(run)
                for repo, run in self._check_runs.values()
                if repo == repository.lower() and (sha is None or run["head_sha"] == sha)
            ]

    def dispatches_to(self, repository: str) -> list[dict[str, Any]]:
        """Dispatch bodies accepted for one repository, oldest first."""
        with self._lock:
            return [body for repo, body in self._dispatches_by_repo if repo == repository.lower()]

    def requests_to(self, method: str, path_glob: str) -> list[RecordedRequest]:
        """Recorded requests matching a method and a path glob."""
        with self._lock:
            return [r for r in self.requests if r.method == method and fnmatch.fnmatchcase(r.path, path_glob)]

    # --- GitHub App ----------------------------------------------------------------------------------------

    def enable_app(
        self, *, app_id: int = 12345, installation_id: int = 67890, token_ttl: float = 3600.0
    ) -> str:
        """Register a GitHub App; returns its private key (PEM). Tokens it mints live ``token_ttl`` seconds."""
        private, public = _shared_app_key()
        self._app = _App(
            app_id=app_id, public_key=public, installations={installation_id}, token_ttl=token_ttl
        )
        return private

    @property
    def issued_tokens(self) -> list[str]:
        """Installation tokens minted so far."""
        return list(self._app.issued) if self._app else []

    def revoke_tokens(self) -> None:
        """Revoke every installation token (the next use answers 401)."""
        with self._lock:
            for issued in self.issued_tokens:
                self._tokens.pop(issued, None)

    # --- faults --------------------------------------------------------------------------------------------

    def fail(
        self,
        method: str,
        path: str,
        *,
        status: int,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> Fault:
        """Answer the next ``times`` matching requests with ``status`` (``body`` as JSON, or ``raw`` bytes)."""
        data = (
            raw
            if raw is not None
            else json.dumps(body if body is not None else {"message": "fault"}).encode()
        )
        fault = Fault(method.upper(), path, status, data, dict(headers or {}), times)
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail_server_error(self, method: str, path: str, *, times: int = 1, status: int = 502) -> Fault:
        """5xx answers, shaped like GitHub's (``internal_error`` / ``service_unavailable``)."""
        return self.fail(method, path, status=status, body={"message": "Server Error"}, times=times)

    def secondary_rate_limit(
        self, method: str, path: str, *, retry_after: int | None = 1, status: int = 403, times: int = 1
    ) -> Fault:
        """A secondary rate limit: 403 (or 429) with the documented message and ``retry-after``."""
        headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
        body = {
            "message": SECONDARY_LIMIT_MESSAGE,
            "documentation_url": "https://docs.github.com/free-pro-team@latest/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
        }
        return self.fail(method, path, status=status, body=body, headers=headers, times=times)

    def primary_rate_limit(self, method: str, path: str, *, reset_in: float = 1, times: int = 1) -> Fault:
        """The primary limit: 403 with ``x-ratelimit-remaining: 0`` and ``x-ratelimit-reset``."""
        headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(time.time() + reset_in))}
        body = {
            "message": "API rate limit exceeded for user ID 1.",
            "documentation_url": f"{DOCS}/rate-limit",
        }
        return self.fail(method, path, status=403, body=body, headers=headers, times=times)

    def malformed_json(self, method: str, path: str, *, status: int = 200, times: int = 1) -> Fault:
        """A truncated JSON body with a JSON content type."""
        return self.fail(method, path, status=status, raw=b'{"url": "https://api.github.com/re', times=times)

    # --- the ASGI handler ----------------------------------------------------------------------------------

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        with self._lock:
            self._remaining = max(0, self._remaining - 1)
            remaining = self._remaining
        headers = {
            "content-type": "application/json; charset=utf-8",
            "x-github-media-type": "github.v3; format=json",
            "x-github-api-version-selected": "2022-11-28",
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": str(remaining),
            "x-ratelimit-reset": str(int(time.time()) + 3600),
            "x-ratelimit-used": str(5000 - remaining),
            "x-ratelimit-resource": "core",
            "x-github-request-id": f"FAKE:{secrets.token_hex(4).upper()}",
        }
        headers.update(extra or {})
        return headers

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
        return Response(json.dumps(body).encode(), status_code=status, headers=self._headers(headers))

    def _error(self, status: int, message: str, **extra: Any) -> Response:
        body = {"message": message, "documentation_url": DOCS, **extra}
        if status == 404:
            body = _fixture("real/gidgethub/pr_not_found.body.json")
        return self._json(status, body)

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        path = request.url.path
        record = RecordedRequest(
            method=request.method,
            path=path,
            query=request.url.query,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=raw,
            json=parsed,
        )
        with self._lock:
            self.requests.append(record)
        response = self._respond(request.method, path, record, raw)
        record.status = response.status_code
        return response

    def _respond(self, method: str, path: str, record: RecordedRequest, raw: bytes) -> Response:
        with self._lock:
            fault = next(
                (
                    f
                    for f in self._faults
                    if f.method == method and fnmatch.fnmatchcase(path, f.path) and f.used < f.times
                ),
                None,
            )
            if fault is not None:
                fault.used += 1
        if fault is not None:
            return Response(fault.body, status_code=fault.status, headers=self._headers(fault.headers))

        auth = record.headers.get("authorization", "")
        match = re.fullmatch(r"/app/installations/(\d+)/access_tokens", path)
        if match and method == "POST":
            return self._access_token(int(match.group(1)), auth)
        if not auth:
            return self._error(401, "Requires authentication")
        scheme, _, credential = auth.partition(" ")
        with self._lock:
            expires = self._tokens.get(credential)
        if scheme.lower() not in ("bearer", "token") or expires is None or expires < time.time():
            return self._error(401, "Bad credentials")

        if method == "GET" and (m := re.fullmatch(r"/repos/([^/]+/[^/]+)/pulls/(\d+)", path)):
            with self._lock:
                pull = self._pulls.get((m.group(1).lower(), int(m.group(2))))
            return self._json(200, pull) if pull else self._error(404, "Not Found")
        if method == "GET" and (m := re.fullmatch(r"/repos/([^/]+/[^/]+)/pulls", path)):
            return self._list_pulls(m.group(1), record.query)
        if method == "POST" and (m := re.fullmatch(r"/repos/([^/]+/[^/]+)/statuses/([^/]+)", path)):
            return self._create_status(m.group(1), m.group(2), record.json)
        if method == "GET" and (m := re.fullmatch(r"/repos/([^/]+/[^/]+)/commits/([^/]+)/status", path)):
            return self._combined_status(m.group(1), m.group(2))
        if method == "DELETE" and (
            m := re.fullmatch(r"/repos/([^/]+/[^/]+)/issues/(\d+)/labels/([^/]+)", path)
        ):
            return self._remove_label(m.group(1), int(m.group(2)), unquote(m.group(3)))
        if method == "POST" and (m := re.fullmatch(r"/repos/([^/]+/[^/]+)/dispatches", path)):
            return self._dispatch(m.group(1), record.json, raw)
        if m := re.fullmatch(r"/repos/([^/]+/[^/]+)/check-runs(?:/(\d+))?", path):
            if credential == self.token:
                return self._error(403, "You must authenticate via a GitHub App.")
            if method == "POST" and m.group(2) is None:
                return self._create_check_run(m.group(1), record.json)
            if method == "PATCH" and m.group(2) is not None:
                return self._update_check_run(m.group(1), int(m.group(2)), record.json)
        if method == "GET" and (m := re.fullmatch(r"/repos/([^/]+/[^/]+)/commits/([^/]+)/check-runs", path)):
            return self._list_check_runs(m.group(1), m.group(2), record.query)
        return self._error(404, "Not Found")

    def _remove_label(self, repository: str, number: int, name: str) -> Response:
        """``DELETE /repos/{o}/{r}/issues/{n}/labels/{name}``: 200 with the labels left, 404 "Label does not
        exist" when the issue does not carry it (GitHub's documented answers)."""
        with self._lock:
            pull = self._pulls.get((repository.lower(), number))
            labels = pull["labels"] if pull else []
            kept = [label for label in labels if label["name"].lower() != name.lower()]
            if pull is None or len(kept) == len(labels):
                found = None
            else:
                pull["labels"] = kept
                found = kept
        return self._error(404, "Label does not exist") if found is None else self._json(200, found)

    def labels(self, repository: str, number: int) -> list[str]:
        """The names of the labels on a pull request now."""
        with self._lock:
            return [label["name"] for label in self._pulls[(repository.lower(), number)]["labels"]]

    def _access_token(self, installation: int, auth: str) -> Response:
        app = self._app
        if app is None or installation not in app.installations:
            return self._error(404, "Not Found")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return self._error(401, "A JSON web token could not be decoded")
        try:
            claims = jwt.decode(
                token, app.public_key, algorithms=["RS256"], options={"require": ["iat", "exp", "iss"]}
            )
        except jwt.PyJWTError as exc:
            return self._error(401, f"A JSON web token could not be decoded ({type(exc).__name__})")
        if str(claims["iss"]) != str(app.app_id):
            return self._error(401, "Integration not found")
        if claims["exp"] - claims["iat"] > 660 or claims["exp"] > time.time() + 600:
            return self._error(401, "'Expiration time' claim ('exp') is too far in the future")
        new = "ghs_" + secrets.token_hex(18)
        expires = time.time() + app.token_ttl
        with self._lock:
            self._tokens[new] = expires
            app.issued.append(new)
        stamp = dt.datetime.fromtimestamp(expires, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "token": new,
            "expires_at": stamp,
            "permissions": {"statuses": "write", "contents": "write", "pull_requests": "read"},
            "repository_selection": "selected",
        }
        return self._json(201, body)

    def _list_pulls(self, repository: str, query: str) -> Response:
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        state = params.get("state", "open")
        per_page = min(100, int(params.get("per_page", 30)))
        page = int(params.get("page", 1))
        with self._lock:
            pulls = [
                body
                for (repo, _), body in sorted(self._pulls.items(), key=lambda kv: -kv[0][1])
                if repo == repository.lower() and (state == "all" or body["state"] == state)
            ]
        last = max(1, -(-len(pulls) // per_page))
        chunk = pulls[(page - 1) * per_page : page * per_page]
        base = f"{self.url}/repos/{repository}/pulls?state={state}&per_page={per_page}"
        links = []
        if page < last:
            links += [f'<{base}&page={page + 1}>; rel="next"', f'<{base}&page={last}>; rel="last"']
        if page > 1:
            links += [f'<{base}&page=1>; rel="first"', f'<{base}&page={page - 1}>; rel="prev"']
        return self._json(200, chunk, {"link": ", ".join(links)} if links else None)

    def _create_status(self, repository: str, sha: str, body: Any) -> Response:
        if not isinstance(body, dict):
            return self._error(400, "Problems parsing JSON")
        if body.get("state") not in ("error", "failure", "pending", "success"):
            return self._error(
                422,
                "Validation Failed",
                errors=[
                    {
                        "resource": "Status",
                        "code": "custom",
                        "field": "state",
                        "message": "state is not included in the list",
                    }
                ],
            )
        if not re.fullmatch(r"[0-9a-f]{40}", sha):
            return self._error(422, "No commit found for SHA: " + sha[:40])
        description = body.get("description")
        if description is not None and len(description) > 140:
            return self._error(
                422,
                "Validation Failed",
                errors=[
                    {
                        "resource": "Status",
                        "code": "custom",
                        "field": "description",
                        "message": "description is too long (maximum is 140 characters)",
                    }
                ],
            )
        status = copy.deepcopy(_fixture("examples/status.json"))
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        location = f"{self.url}/repos/{repository}/statuses/{sha}"
        status.update(
            id=next(self._ids),
            url=location,
            state=body["state"],
            description=description,
            target_url=body.get("target_url"),
            context=body.get("context") or "default",
            created_at=now,
            updated_at=now,
        )
        with self._lock:
            self._statuses.setdefault((repository.lower(), sha), []).append(status)
        return self._json(201, status, {"location": location})

    def _combined_status(self, repository: str, ref: str) -> Response:
        with self._lock:
            posted = list(self._statuses.get((repository.lower(), ref), []))
        latest: dict[str, dict[str, Any]] = {}
        for status in posted:
            latest[status["context"].lower()] = {k: v for k, v in status.items() if k != "creator"}
        states = {s["state"] for s in latest.values()}
        if states & {"error", "failure"}:
            combined = "failure"
        elif not states or "pending" in states:
            combined = "pending"
        else:
            combined = "success"
        body = copy.deepcopy(_fixture("examples/combined-commit-status.json"))
        body.update(
            state=combined,
            statuses=list(reversed(list(latest.values()))),
            sha=ref,
            total_count=len(latest),
            url=f"{self.url}/repos/{repository}/commits/{ref}/status",
        )
        return self._json(200, body)

    def _check_run_invalid(self, body: Any, *, create: bool) -> str | None:
        """Why ``body`` breaks the request schema of checks/create (or checks/update), else None."""
        if not isinstance(body, dict):
            return "Problems parsing JSON"
        required = ("name", "head_sha") if create else ()
        for key in required:
            if not isinstance(body.get(key), str) or not body[key]:
                return f'Invalid request.\n\n"{key}" wasn\'t supplied.'
        if create and not re.fullmatch(r"[0-9a-f]{40}", body["head_sha"]):
            return "No commit found for SHA: " + body["head_sha"][:40]
        status, conclusion = body.get("status", "queued"), body.get("conclusion")
        if status not in ("queued", "in_progress", "completed"):
            return f"Invalid request.\n\nstatus {status!r} is not a member of the enum."
        if conclusion is not None and conclusion not in CHECK_CONCLUSIONS:
            return f"Invalid request.\n\nconclusion {conclusion!r} is not a member of the enum."
        if (status == "completed" or "completed_at" in body) and conclusion is None:
            return 'Invalid request.\n\nNo subschema in "anyOf" matched: conclusion is required'
        output = body.get("output")
        if output is not None:
            keys = ("title", "summary") if create else ("summary",)
            if not isinstance(output, dict) or any(not isinstance(output.get(k), str) for k in keys):
                return f"Invalid request.\n\noutput needs {' and '.join(keys)}."
            if any(len(output.get(k) or "") > 65535 for k in ("summary", "text")):
                return "Invalid request.\n\noutput.summary is too long (maximum is 65535 characters)"
        details = body.get("details_url")
        if details is not None and not re.fullmatch(r"https?://\S+", details):
            return "Invalid request.\n\ndetails_url must be a valid URL."
        return None

    def _apply_check_run(self, run: dict[str, Any], body: dict[str, Any]) -> None:
        for key in ("name", "details_url", "external_id", "started_at", "completed_at"):
            if key in body:
                run[key] = body[key]
        if "conclusion" in body:
            run.update(status="completed", conclusion=body["conclusion"])
        elif "status" in body:
            run["status"] = body["status"]
        if "output" in body:
            run["output"].update(
                title=body["output"].get("title", run["output"].get("title")),
                summary=body["output"]["summary"],
                text=body["output"].get("text"),
            )

    def _create_check_run(self, repository: str, body: Any) -> Response:
        problem = self._check_run_invalid(body, create=True)
        if problem is not None:
            return self._error(422, problem)
        run = copy.deepcopy(_fixture("examples/check-run-example-of-in-progress-conclusion.json"))
        run_id = next(self._ids)
        run.update(
            id=run_id,
            head_sha=body["head_sha"],
            url=f"{self.url}/repos/{repository}/check-runs/{run_id}",
            html_url=f"https://github.com/{repository}/runs/{run_id}",
            details_url=None,
            external_id="",
            status="queued",
            conclusion=None,
            started_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            completed_at=None,
            output={
                "title": None,
                "summary": None,
                "text": None,
                "annotations_count": 0,
                "annotations_url": f"{self.url}/repos/{repository}/check-runs/{run_id}/annotations",
            },
            pull_requests=[],
        )
        self._apply_check_run(run, body)
        with self._lock:
            self._check_runs[run_id] = (repository.lower(), run)
            self.check_run_requests.append(("POST", None, body))
        return self._json(201, run)

    def _update_check_run(self, repository: str, run_id: int, body: Any) -> Response:
        problem = self._check_run_invalid(body, create=False)
        with self._lock:
            found = self._check_runs.get(run_id)
        if found is None or found[0] != repository.lower():
            return self._error(404, "Not Found")
        if problem is not None:
            return self._error(422, problem)
        with self._lock:
            self._apply_check_run(found[1], body)
            self.check_run_requests.append(("PATCH", run_id, body))
            answer = copy.deepcopy(found[1])
        return self._json(200, answer)

    def _list_check_runs(self, repository: str, ref: str, query: str) -> Response:
        params = dict(urllib.parse.parse_qsl(query))
        runs = [
            run
            for run in reversed(self.check_runs(repository, ref))
            if params.get("check_name") in (None, run["name"])
            and params.get("status") in (None, run["status"])
        ]
        return self._json(200, {"total_count": len(runs), "check_runs": runs})

    def _dispatch(self, repository: str, body: Any, raw: bytes) -> Response:
        with self._lock:
            known = repository.lower() in self._repos
        if not known:
            return self._error(404, "Not Found")
        if not isinstance(body, dict):
            return self._error(400, "Problems parsing JSON")
        event_type = body.get("event_type")
        payload = body.get("client_payload", {})
        if not isinstance(event_type, str) or not 1 <= len(event_type) <= 100:
            return self._error(422, "Invalid request.\n\nFor 'properties/event_type', nil is not a string.")
        if not isinstance(payload, dict):
            return self._error(
                422, "Invalid request.\n\nFor 'properties/client_payload', it is not an object."
            )
        if len(payload) > 10:
            return self._error(
                422,
                f"Invalid request.\n\nNo more than 10 properties are allowed; {len(payload)} were supplied.",
            )
        if len(json.dumps(payload, separators=(",", ":")).encode()) >= 64 * 1024:
            return self._error(422, "client_payload is too large")
        with self._lock:
            self.dispatches.append(body)
            self._dispatches_by_repo.append((repository.lower(), body))
        return Response(
            b"", status_code=204, headers={k: v for k, v in self._headers().items() if k != "content-type"}
        )


@dataclass
class ReceivedWebhook:
    """One POST the infra webhook receiver got: raw body and lower-cased headers."""

    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class InfraWebhookReceiver:
    """A plain HTTP endpoint standing in for non-GitHub infra: records raw POSTs, answers ``status``.

    ``fail_next(status, times)`` makes the next requests fail (e.g. 503 for retries, 400 for a refusal).
    """

    def __init__(self) -> None:
        self.received: list[ReceivedWebhook] = []
        self._failures: list[int] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/previews?team=web"

    def fail_next(self, status: int, times: int = 1) -> None:
        self._failures.extend([status] * times)

    def start(self) -> InfraWebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                receiver.received.append(
                    ReceivedWebhook({k.lower(): v for k, v in self.headers.items()}, body)
                )
                status = receiver._failures.pop(0) if receiver._failures else 202
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="infra-webhook",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> InfraWebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
