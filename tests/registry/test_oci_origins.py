"""The OCI client against a hostile registry: credentials never follow a Link, Location, redirect or realm to
another origin, and tag pages end.

Two real HTTP servers (tests/support/hostile_http.py): the registry the client is configured for, which wants
Basic credentials and then answers with pointers to a second origin, and that second origin, which records
every Authorization header that reaches it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator

import pytest
from pydantic import SecretStr

from previews.errors import CrossOriginError, RegistryError
from previews.registry.oci import OCI_MANIFEST, OciRegistry
from tests.support.hostile_http import Reply, ScriptedServer, assert_refused

USER, PASSWORD = "robot", "registry-password-marker"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
CONFIG = json.dumps({"created": "2026-11-28T10:00:00Z", "config": {"Labels": {"m": "x"}}}).encode()
CONFIG_DIGEST = "sha256:" + hashlib.sha256(CONFIG).hexdigest()
MANIFEST = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"digest": CONFIG_DIGEST}, "layers": []}


@pytest.fixture
def foreign() -> Iterator[ScriptedServer]:
    """The other origin: it would serve anything asked of it, and remembers who asked with what."""

    def respond(method: str, path: str, headers: dict[str, str]) -> Reply:
        if path.startswith("/token"):
            return Reply(body={"token": "foreign-token"})
        if "/tags/list" in path:
            return Reply(body={"name": "acme/app", "tags": ["from-elsewhere"]})
        if "/manifests/" in path:
            return Reply(headers={"Content-Type": OCI_MANIFEST}, body=MANIFEST)
        if path.startswith("/blob"):
            return Reply(body=CONFIG if path == "/blob/good" else b'{"tampered": true}')
        return Reply(201 if method in ("PUT", "POST") else 200, body={})

    with ScriptedServer(respond) as server:
        yield server


def registry(routes: Callable[[str, str], Reply | None]) -> ScriptedServer:
    """A registry that asks for Basic credentials first, then answers with ``routes(method, path)``."""

    def respond(method: str, path: str, headers: dict[str, str]) -> Reply:
        if headers.get("authorization") != BASIC:
            challenge = {"WWW-Authenticate": 'Basic realm="registry"'}
            return Reply(401, challenge, {"errors": [{"code": "UNAUTHORIZED", "message": "login"}]})
        reply = routes(method, path)
        return reply if reply is not None else Reply(404, body={"errors": [{"code": "NAME_UNKNOWN"}]})

    return ScriptedServer(respond)


def client(server: ScriptedServer, **kwargs: object) -> OciRegistry:
    return OciRegistry(server.url, username=USER, password=SecretStr(PASSWORD), **kwargs)  # type: ignore[arg-type]


def test_a_tags_link_to_another_origin_is_refused(foreign: ScriptedServer) -> None:
    def routes(method: str, path: str) -> Reply | None:
        link = f'<{foreign.url}/v2/acme/app/tags/list?n=1&last=a>; rel="next"'
        return Reply(headers={"Link": link}, body={"name": "acme/app", "tags": ["a"]})

    with registry(routes) as hostile, client(hostile) as oci, pytest.raises(CrossOriginError) as info:
        oci.tags("acme/app")
    assert_refused(info, foreign, PASSWORD)
    assert BASIC in hostile.authorizations()  # the configured origin did get the credentials


def test_a_blob_upload_location_on_another_origin_is_refused(foreign: ScriptedServer) -> None:
    def routes(method: str, path: str) -> Reply | None:
        if method == "POST" and path == "/v2/acme/app/blobs/uploads/":
            return Reply(202, {"Location": f"{foreign.url}/upload/42?_state=abc"})
        return None  # HEAD of the blob: 404, not there yet

    with registry(routes) as hostile, client(hostile) as oci, pytest.raises(CrossOriginError) as info:
        oci.ensure_blob("acme/app", CONFIG)
    assert_refused(info, foreign, PASSWORD)
    assert [s.method for s in hostile.seen if s.authorization] == ["HEAD", "POST"]


def test_a_token_realm_on_another_plain_http_origin_gets_no_password(foreign: ScriptedServer) -> None:
    def respond(method: str, path: str, headers: dict[str, str]) -> Reply:
        challenge = f'Bearer realm="{foreign.url}/token",service="registry",scope="repository:acme/app:pull"'
        return Reply(401, {"WWW-Authenticate": challenge}, {"errors": [{"code": "UNAUTHORIZED"}]})

    with ScriptedServer(respond) as hostile, client(hostile) as oci, pytest.raises(CrossOriginError) as info:
        oci.tags("acme/app")
    assert_refused(info, foreign, PASSWORD)
    assert "realm" in str(info.value)


def test_a_token_realm_on_the_registrys_own_origin_is_used() -> None:
    def respond(method: str, path: str, headers: dict[str, str]) -> Reply:
        if path.startswith("/token"):
            ok = headers.get("authorization") == BASIC
            return Reply(200 if ok else 401, body={"token": "registry-token"} if ok else {})
        if headers.get("authorization") == "Bearer registry-token":
            return Reply(body={"name": "acme/app", "tags": ["pr-1-abcdef0"]})
        return Reply(401, {"WWW-Authenticate": 'Bearer realm="/token",service="registry"'}, {})

    with ScriptedServer(respond) as own, client(own) as oci:
        assert oci.tags("acme/app") == ["pr-1-abcdef0"]


def test_a_manifest_redirect_to_another_origin_is_refused(foreign: ScriptedServer) -> None:
    def routes(method: str, path: str) -> Reply | None:
        return Reply(307, {"Location": f"{foreign.url}/v2/acme/app/manifests/latest"})

    with registry(routes) as hostile, client(hostile) as oci, pytest.raises(CrossOriginError) as info:
        oci.manifest("acme/app", "latest")
    assert_refused(info, foreign, PASSWORD)


def test_a_same_origin_redirect_is_followed_with_the_credentials() -> None:
    def routes(method: str, path: str) -> Reply | None:
        if path.endswith("/manifests/latest"):
            return Reply(307, {"Location": "/v2/acme/app/manifests/moved"})
        if path.endswith("/manifests/moved"):
            return Reply(headers={"Content-Type": OCI_MANIFEST}, body=MANIFEST)
        return None

    with registry(routes) as hostile, client(hostile) as oci:
        assert oci.manifest("acme/app", "latest").config_digest == CONFIG_DIGEST
    assert [s.path for s in hostile.seen if s.authorization == BASIC] == [
        "/v2/acme/app/manifests/latest",
        "/v2/acme/app/manifests/moved",
    ]


@pytest.mark.parametrize("stored", ["good", "tampered"])
def test_a_blob_read_may_go_to_storage_elsewhere_without_credentials(
    foreign: ScriptedServer, stored: str
) -> None:
    """Registries redirect blob reads to a storage host: followed anonymously, and the bytes must match."""

    def routes(method: str, path: str) -> Reply | None:
        if path == f"/v2/acme/app/blobs/{CONFIG_DIGEST}":
            return Reply(307, {"Location": f"{foreign.url}/blob/{stored}"})
        return None

    with registry(routes) as hostile, client(hostile) as oci:
        if stored == "good":
            assert oci.blob_json("acme/app", CONFIG_DIGEST)["config"] == {"Labels": {"m": "x"}}
        else:
            with pytest.raises(RegistryError, match="does not match its digest"):
                oci.blob_json("acme/app", CONFIG_DIGEST)
    assert [(s.path, s.authorization) for s in foreign.seen] == [(f"/blob/{stored}", None)]


def test_an_endless_chain_of_tag_pages_is_capped() -> None:
    def routes(method: str, path: str) -> Reply | None:
        page = int(path.rsplit("page=", 1)[1]) if "page=" in path else 0
        link = f'</v2/acme/app/tags/list?n=1&page={page + 1}>; rel="next"'
        return Reply(headers={"Link": link}, body={"name": "acme/app", "tags": [f"t{page}"]})

    with (
        registry(routes) as hostile,
        client(hostile, max_pages=5) as oci,
        pytest.raises(RegistryError, match="more than 5 pages"),
    ):
        oci.tags("acme/app")
    assert len([s for s in hostile.seen if s.authorization]) == 5


def test_a_repeated_tags_link_ends_the_chain() -> None:
    def routes(method: str, path: str) -> Reply | None:
        second = "page=2" in path
        link = (
            '</v2/acme/app/tags/list?n=1000>; rel="next"'
            if second
            else '</v2/acme/app/tags/list?page=2>; rel="next"'
        )
        return Reply(headers={"Link": link}, body={"name": "acme/app", "tags": ["b" if second else "a"]})

    with registry(routes) as hostile, client(hostile) as oci:
        assert oci.tags("acme/app") == ["a", "b"]
    assert len([s for s in hostile.seen if s.authorization]) == 2
