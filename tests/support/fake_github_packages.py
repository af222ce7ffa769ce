"""A small real HTTP server speaking the GitHub Packages REST API for container packages.

Shapes follow GitHub's REST API description (``@octokit/openapi``): version objects as in the
``package-version-org`` example (``metadata.container.tags``), pagination ``Link`` headers that switch to
``/organizations/{id}/...`` as recorded in github.com/orgs/community/discussions/124413, and the error bodies
reported in actions/delete-package-versions#231 and #101 and SmartsquareGmbH/delete-old-packages#33 (400 for the
last tagged version, 404 "Package not found.", a non-integer version id).
Rate-limit answers can be queued with :meth:`FakeGitHubPackages.inject`.

The same server also plays ghcr.io, the registry the versions' manifests are read from, with ghcr.io's token
flow: ``/v2/...`` answers 401 with ``WWW-Authenticate: Bearer realm="<this server>/token",service="ghcr.io"``,
the realm swaps ``Basic <any user>:<PAT>`` for a registry token. A version serves ``FakeVersion.manifest``
(an image manifest without children when None); :meth:`FakeGitHubPackages.fail_manifest` makes reads of one
manifest fail (400, 404, 5xx), as a kept index whose read fails.

Endpoints::

    GET    /orgs/{org}/packages/container/{name}/versions          (+ /organizations/{id}/..., /users/{u}/...)
    DELETE /orgs/{org}/packages/container/{name}/versions/{id}     (+ /users/{u}/...)
    GET    /token?service=ghcr.io&scope=repository:{owner}/{name}:pull
    GET    /v2/{owner}/{name}/manifests/{digest or tag}            (HEAD too)
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tests.support.http_server import BackgroundHTTPServer

DOCS = "https://docs.github.com/rest/packages/packages"
_LIST = re.compile(r"/(orgs|users|organizations)/([^/]+)/packages/container/([^/]+)/versions")
_ONE = re.compile(r"/(orgs|users)/([^/]+)/packages/container/([^/]+)/versions/([^/]+)")
_MANIFEST = re.compile(r"/v2/([^/]+)/(.+)/manifests/([^/]+)")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@dataclass
class FakeVersion:
    """One package version: ``name`` is the manifest digest."""

    id: int
    name: str
    tags: list[str]
    created_at: datetime
    updated_at: datetime | None = None
    manifest: dict[str, object] | None = None


def image_manifest(marker: str) -> dict[str, object]:
    """A layer-less image manifest; ``marker`` makes its digest unique."""
    config = "sha256:" + hashlib.sha256(marker.encode()).hexdigest()
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [],
    }


def image_index(children: list[str], marker: str = "") -> dict[str, object]:
    """A multi-arch index over ``children`` (digests); ``marker`` goes in an annotation."""
    return {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": 1} for child in children],
        "annotations": {"marker": marker},
    }


def manifest_digest(manifest: dict[str, object]) -> str:
    """The digest the fake registry serves ``manifest`` under (the sha256 of its JSON)."""
    return "sha256:" + hashlib.sha256(json.dumps(manifest).encode()).hexdigest()


@dataclass
class _Fault:
    method: str
    status: int
    headers: dict[str, str]
    body: dict[str, object]


@dataclass
class _Package:
    kind: str
    owner: str
    name: str
    versions: dict[int, FakeVersion] = field(default_factory=dict)


class FakeGitHubPackages(BackgroundHTTPServer):
    """The fake server. ``requests`` records ``(method, path, monotonic time)`` of every request."""

    def __init__(
        self, *, token: str = "ghp_fake_packages_token", org_ids: dict[str, int] | None = None
    ) -> None:
        self.token = token
        self.org_ids = dict(org_ids or {})
        self.packages: dict[tuple[str, str, str], _Package] = {}
        self.requests: list[tuple[str, str, float]] = []
        self.registry_requests: list[tuple[str, str]] = []
        self.deleted: list[int] = []
        self.registry_token = "ghcr-registry-token-" + hashlib.sha256(token.encode()).hexdigest()[:12]
        self._faults: deque[_Fault] = deque()
        self._manifest_faults: dict[str, tuple[int, int]] = {}
        self._lock = threading.RLock()
        self.rate_remaining = 5000
        super().__init__(self._handler())

    def add_package(self, kind: str, owner: str, name: str, versions: list[FakeVersion]) -> None:
        """Create a package (``kind`` is ``org`` or ``user``) holding ``versions``."""
        if kind == "org":
            self.org_ids.setdefault(owner, 122929872 + len(self.org_ids))
        self.packages[(kind, owner.lower(), name)] = _Package(kind, owner, name, {v.id: v for v in versions})

    def add_version(self, kind: str, owner: str, name: str, version: FakeVersion) -> None:
        """Push one more version to a package (say, a tag promoted after a cleanup listed it)."""
        with self._lock:
            self.packages[(kind, owner.lower(), name)].versions[version.id] = version

    def versions(self, kind: str, owner: str, name: str) -> list[FakeVersion]:
        """The versions a package holds now."""
        return list(self.packages[(kind, owner.lower(), name)].versions.values())

    def inject(
        self, method: str, status: int, *, headers: dict[str, str] | None = None, message: str = ""
    ) -> None:
        """Answer the next ``method`` request with ``status`` (e.g. a 403 secondary rate limit)."""
        self._faults.append(
            _Fault(method, status, dict(headers or {}), {"message": message, "documentation_url": DOCS})
        )

    def fail_manifest(self, digest: str, status: int, *, times: int = 1000) -> None:
        """Answer reads of manifest ``digest`` with ``status`` the next ``times`` times."""
        with self._lock:
            self._manifest_faults[digest] = (status, times)

    def _find_manifest(self, repository: str, reference: str) -> FakeVersion | None:
        owner, _, name = repository.partition("/")
        for (_kind, owner_key, package_name), package in self.packages.items():
            if owner_key != owner.lower() or package_name != name:
                continue
            for version in package.versions.values():
                if version.name == reference or reference in version.tags:
                    return version
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def _reply(self, status: int, body: object | None, headers: dict[str, str] | None = None) -> None:
                raw = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("X-GitHub-Media-Type", "github.v3; format=json")
                self.send_header("X-GitHub-Api-Version-Selected", "2022-11-28")
                with fake._lock:
                    fake.rate_remaining = max(0, fake.rate_remaining - 1)
                    remaining = fake.rate_remaining
                merged = {
                    "X-RateLimit-Limit": "5000",
                    "X-RateLimit-Remaining": str(remaining),
                    "X-RateLimit-Used": str(5000 - remaining),
                    "X-RateLimit-Reset": str(int(time.time()) + 3600),
                    "X-RateLimit-Resource": "core",
                }
                for key, value in (headers or {}).items():
                    merged = {k: v for k, v in merged.items() if k.lower() != key.lower()}
                    merged[key] = value
                for key, value in merged.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _registry_reply(
                self,
                status: int,
                body: dict[str, object],
                headers: dict[str, str] | None = None,
                *,
                head: bool = False,
            ) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                merged = {"Content-Type": "application/json", **(headers or {})}
                for key, value in merged.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                if not head:
                    self.wfile.write(raw)

            def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
                self._reply(status, {"message": message, "documentation_url": DOCS}, headers)

            def _common(self, method: str) -> bool:
                path = urlsplit(self.path).path
                with fake._lock:
                    fake.requests.append((method, path, time.monotonic()))
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    self._error(401, "Bad credentials")
                    return False
                with fake._lock:
                    fault = fake._faults[0] if fake._faults and fake._faults[0].method == method else None
                    if fault is not None:
                        fake._faults.popleft()
                if fault is not None:
                    self._reply(fault.status, fault.body, fault.headers)
                    return False
                return True

            def _package(self, scope: str, owner: str, name: str) -> _Package | None:
                name = unquote(name)
                if scope == "organizations":
                    owners = [o for o, i in fake.org_ids.items() if str(i) == owner]
                    if not owners:
                        return None
                    scope, owner = "orgs", owners[0]
                kind = "org" if scope == "orgs" else "user"
                return fake.packages.get((kind, unquote(owner).lower(), name))

            def _registry(self, method: str) -> None:
                """ghcr.io's side: the token realm and manifest reads."""
                parts = urlsplit(self.path)
                with fake._lock:
                    fake.registry_requests.append((method, parts.path))
                if parts.path == "/token":
                    pair = base64.b64decode(self.headers.get("Authorization", "Basic ")[6:] or b"").decode()
                    if pair.partition(":")[2] != fake.token:
                        self._registry_reply(
                            401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}
                        )
                        return
                    self._registry_reply(200, {"token": fake.registry_token, "expires_in": 300})
                    return
                match = _MANIFEST.fullmatch(parts.path)
                if self.headers.get("Authorization") != f"Bearer {fake.registry_token}":
                    scope = f',scope="repository:{match.group(1)}/{match.group(2)}:pull"' if match else ""
                    challenge = f'Bearer realm="{fake.url}/token",service="ghcr.io"{scope}'
                    self._registry_reply(
                        401,
                        {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                        {"WWW-Authenticate": challenge},
                    )
                    return
                if match is None:
                    self._registry_reply(200, {})
                    return
                repository, reference = f"{match.group(1)}/{match.group(2)}", match.group(3)
                with fake._lock:
                    version = fake._find_manifest(repository, reference)
                    fault = fake._manifest_faults.get(version.name) if version else None
                    if version is not None and fault is not None and fault[1] > 0:
                        fake._manifest_faults[version.name] = (fault[0], fault[1] - 1)
                    else:
                        fault = None
                if fault is not None:
                    code = {400: "MANIFEST_INVALID", 404: "MANIFEST_UNKNOWN"}.get(fault[0], "UNKNOWN")
                    self._registry_reply(
                        fault[0], {"errors": [{"code": code, "message": "injected failure"}]}
                    )
                    return
                if version is None:
                    self._registry_reply(
                        404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
                    )
                    return
                manifest = version.manifest or image_manifest(version.name)
                self._registry_reply(
                    200,
                    manifest,
                    {"Content-Type": str(manifest["mediaType"]), "Docker-Content-Digest": version.name},
                    head=method == "HEAD",
                )

            def do_HEAD(self) -> None:
                self._registry("HEAD")

            def do_GET(self) -> None:
                if self.path.startswith(("/v2/", "/token")):
                    self._registry("GET")
                    return
                if not self._common("GET"):
                    return
                parts = urlsplit(self.path)
                match = _LIST.fullmatch(parts.path)
                package = self._package(*match.groups()) if match else None
                if package is None:
                    self._error(404, "Package not found.")
                    return
                query = parse_qs(parts.query)
                try:
                    per_page = min(100, max(1, int(query.get("per_page", ["30"])[0])))
                    page = max(1, int(query.get("page", ["1"])[0]))
                except ValueError:
                    self._error(400, "Invalid page parameter")
                    return
                ordered = sorted(package.versions.values(), key=lambda v: v.id, reverse=True)
                last = max(1, -(-len(ordered) // per_page))
                chunk = ordered[(page - 1) * per_page : page * per_page]
                headers = {}
                if package.kind == "org":
                    base = f"{fake.url}/organizations/{fake.org_ids[package.owner]}/packages/container/{quote(package.name, safe='')}/versions"
                else:
                    base = f"{fake.url}/users/{package.owner}/packages/container/{quote(package.name, safe='')}/versions"
                state = query.get("state", ["active"])[0]
                links = []
                if page < last:
                    links.append(f'<{base}?state={state}&per_page={per_page}&page={page + 1}>; rel="next"')
                    links.append(f'<{base}?state={state}&per_page={per_page}&page={last}>; rel="last"')
                if page > 1:
                    links.append(f'<{base}?state={state}&per_page={per_page}&page={page - 1}>; rel="prev"')
                    links.append(f'<{base}?state={state}&per_page={per_page}&page=1>; rel="first"')
                if links:
                    headers["Link"] = ", ".join(links)
                self._reply(200, [self._shape(package, v) for v in chunk], headers)

            def _shape(self, package: _Package, version: FakeVersion) -> dict[str, object]:
                owners = "orgs" if package.kind == "org" else "users"
                stamp = version.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                updated = (
                    (version.updated_at or version.created_at).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                )
                return {
                    "id": version.id,
                    "name": version.name,
                    "url": f"https://api.github.com/{owners}/{package.owner}/packages/container/{package.name}/versions/{version.id}",
                    "package_html_url": f"https://github.com/{owners}/{package.owner}/packages/container/package/{package.name}",
                    "created_at": stamp,
                    "updated_at": updated,
                    "html_url": f"https://github.com/{owners}/{package.owner}/packages/container/{package.name}/{version.id}",
                    "metadata": {"package_type": "container", "container": {"tags": list(version.tags)}},
                }

            def do_DELETE(self) -> None:
                if not self._common("DELETE"):
                    return
                match = _ONE.fullmatch(urlsplit(self.path).path)
                if match is None:
                    self._error(404, "Not Found")
                    return
                scope, owner, name, raw_id = match.groups()
                package = self._package(scope, owner, name)
                if package is None:
                    self._error(404, "Package not found.")
                    return
                if not raw_id.isdigit():
                    self._error(400, "The version_id parameter must be an integer.")
                    return
                with fake._lock:
                    version = package.versions.get(int(raw_id))
                    if version is None:
                        self._error(404, "Package not found.")
                        return
                    if len(package.versions) == 1:
                        self._error(
                            400,
                            "You cannot delete the last version of a package. You must delete the package instead.",
                        )
                        return
                    tagged = [v for v in package.versions.values() if v.tags]
                    if version.tags and len(tagged) == 1:
                        self._error(
                            400,
                            "You cannot delete the last tagged version of a package. You must delete the package instead.",
                        )
                        return
                    del package.versions[version.id]
                    fake.deleted.append(version.id)
                self._reply(204, None)

        return Handler
