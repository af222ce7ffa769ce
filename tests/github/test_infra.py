"""notify-infra: dispatch payloads and limits, the stale-SHA guard, teardown, and the signed webhook target."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from previews.core.outcome import NotifyResult
from previews.errors import (
    AuthError,
    GitHubNotFoundError,
    InfraNotifyError,
    SignatureError,
    TransientGitHubError,
    TransientInfraNotifyError,
    ValidationError,
)
from previews.github import infra
from previews.github.client import GitHubClient, validate_dispatch
from previews.settings import Settings
from previews.signature import verify_signature
from tests.support.fake_github import FakeGitHub, InfraWebhookReceiver

REPO = "Acme/App"
INFRA = "acme/infra"
OLD = "1" * 40
NEW = "2" * 40
DIGEST = "sha256:" + "ab" * 32
IMAGE = "ghcr.io/acme/app"
DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"


@pytest.fixture
def github(gh: FakeGitHub) -> Iterator[GitHubClient]:
    gh.add_repo(INFRA)
    with GitHubClient(base_url=gh.url, token=SecretStr(gh.token)) as client:
        yield client


@pytest.fixture
def receiver() -> Iterator[InfraWebhookReceiver]:
    with InfraWebhookReceiver() as r:
        yield r


def create(
    target: infra.InfraTarget | infra.NoTarget | None, client: GitHubClient | None, sha: str = NEW
) -> NotifyResult:
    return infra.notify_create(
        target,
        client=client,
        repository=REPO,
        pr_number=7,
        sha=sha,
        image=f"{IMAGE}:pr-7-{sha}",
        digest=DIGEST,
        tag=f"pr-7-{sha}",
        delivery=DELIVERY,
    )


def test_preview_create_is_dispatched_pinned_by_digest(gh: FakeGitHub, github: GitHubClient) -> None:
    gh.add_pull(REPO, 7, head_sha=NEW)
    result = create(infra.GitHubDispatchTarget(github, INFRA), github)
    assert result.sent is True
    assert result.target == f"repository_dispatch to {INFRA}"
    assert result.reason == f"sent preview-create for {IMAGE}@{DIGEST} via repository_dispatch to {INFRA}"
    (body,) = gh.dispatches_to(INFRA)
    assert body == {
        "event_type": "preview-create",
        "client_payload": {
            "image": f"{IMAGE}@{DIGEST}",
            "digest": DIGEST,
            "tag": f"pr-7-{NEW}",
            "repository": REPO,
            "pr": 7,
            "sha": NEW,
            "delivery": DELIVERY,
        },
    }
    # the head check came first, then exactly one dispatch
    assert [(r.method, r.path) for r in gh.requests] == [
        ("GET", f"/repos/{REPO}/pulls/7"),
        ("POST", f"/repos/{INFRA}/dispatches"),
    ]
    assert gh.requests[-1].headers["content-type"] == "application/json"


def test_a_late_run_for_an_older_sha_does_not_roll_the_preview_back(
    gh: FakeGitHub, github: GitHubClient
) -> None:
    gh.add_pull(REPO, 7, head_sha=OLD)
    target = infra.GitHubDispatchTarget(github, INFRA)
    assert create(target, github, sha=OLD).sent is True
    gh.set_head(REPO, 7, NEW)  # a newer push lands
    assert create(target, github, sha=NEW).sent is True
    late = create(target, github, sha=OLD)  # the older run finishes last
    assert late.sent is False
    assert late.reason == f"skipped: {OLD[:12]} is no longer the PR head (head is {NEW[:12]})"
    assert [d["client_payload"]["sha"] for d in gh.dispatches_to(INFRA)] == [OLD, NEW]


def test_a_closed_pr_gets_no_preview(gh: FakeGitHub, github: GitHubClient) -> None:
    gh.add_pull(REPO, 7, head_sha=NEW, state="closed", merged=True)
    result = create(infra.GitHubDispatchTarget(github, INFRA), github)
    assert (result.sent, result.reason) == (False, "skipped: PR #7 is merged; no preview created")
    assert gh.dispatches == []


def test_no_target_is_a_soft_skip(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    result = create(infra.target_from_settings(Settings(), None), None)
    assert (result.sent, result.target) == (False, None)
    assert result.reason == "no infra target configured; nobody was notified"
    assert result.reason in caplog.text


def test_infra_repository_without_github_credentials_says_so() -> None:
    target = infra.target_from_settings(Settings(infra_repository=INFRA), None)
    assert isinstance(target, infra.NoTarget)
    result = create(target, None)
    assert result.sent is False
    assert "no GitHub credentials" in result.reason


def test_dispatch_refused_for_good_raises_auth_error(gh: FakeGitHub, github: GitHubClient) -> None:
    gh.add_pull(REPO, 7, head_sha=NEW)
    gh.fail(
        "POST",
        f"/repos/{INFRA}/dispatches",
        status=403,
        body={"message": "Resource not accessible by integration"},
    )
    with pytest.raises(AuthError, match="403 Resource not accessible"):
        create(infra.GitHubDispatchTarget(github, INFRA), github)


def test_dispatch_to_an_unknown_infra_repository_is_not_found(gh: FakeGitHub, github: GitHubClient) -> None:
    gh.add_pull(REPO, 7, head_sha=NEW)
    with pytest.raises(GitHubNotFoundError, match="404 Not Found"):
        create(infra.GitHubDispatchTarget(github, "acme/missing"), github)


def test_dispatch_survives_a_transient_server_error(gh: FakeGitHub, github: GitHubClient) -> None:
    """One attempt raises the transient error for the task's retry; the retry sends the dispatch once."""
    gh.add_pull(REPO, 7, head_sha=NEW)
    gh.fail_server_error("POST", f"/repos/{INFRA}/dispatches", times=1)
    with pytest.raises(TransientGitHubError):
        create(infra.GitHubDispatchTarget(github, INFRA), github)
    assert create(infra.GitHubDispatchTarget(github, INFRA), github).sent is True
    assert len(gh.dispatches) == 1


def test_teardown_is_dispatched(gh: FakeGitHub, github: GitHubClient) -> None:
    result = infra.notify_teardown(
        infra.GitHubDispatchTarget(github, INFRA), repository=REPO, pr_number=7, delivery=DELIVERY
    )
    assert result.sent is True
    assert gh.dispatches_to(INFRA) == [
        {
            "event_type": "preview-teardown",
            "client_payload": {"repository": REPO, "pr": 7, "delivery": DELIVERY},
        }
    ]
    assert [r.path for r in gh.requests] == [f"/repos/{INFRA}/dispatches"]  # no PR lookup for teardown


def test_teardown_without_target() -> None:
    result = infra.notify_teardown(None, repository=REPO, pr_number=7)
    assert result.sent is False


# --- limits -----------------------------------------------------------------------------------------------


def test_payload_keys_and_size_stay_within_githubs_limits() -> None:
    payload = infra.build_create_payload(
        image=f"{IMAGE}:pr-7-{NEW}", digest=DIGEST, tag=f"pr-7-{NEW}", repository=REPO, pr_number=7, sha=NEW
    )
    assert len(payload) <= 10
    assert len(json.dumps(payload, separators=(",", ":"))) < 64 * 1024
    assert payload["image"] == f"{IMAGE}@{DIGEST}"


def test_image_on_a_registry_with_a_port_is_pinned_correctly() -> None:
    payload = infra.build_create_payload(
        image="127.0.0.1:5000/acme/app", digest=DIGEST, tag="pr-7-x", repository=REPO, pr_number=7, sha=NEW
    )
    assert payload["image"] == f"127.0.0.1:5000/acme/app@{DIGEST}"


@pytest.mark.parametrize(
    ("event_type", "payload", "field"),
    [
        ("", {}, "event_type"),
        ("x" * 101, {}, "event_type"),
        ("preview-create", {f"k{i}": i for i in range(11)}, "client_payload"),
        ("preview-create", {"blob": "x" * (64 * 1024)}, "client_payload"),
        ("preview-create", {"nan": float("nan")}, "client_payload"),
        ("preview-create", ["not", "an", "object"], "client_payload"),
    ],
)
def test_dispatch_limits_are_checked_before_sending(
    gh: FakeGitHub, github: GitHubClient, event_type: str, payload: object, field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        github.dispatch(INFRA, event_type, payload)  # type: ignore[arg-type]
    assert info.value.field == field
    assert gh.requests == []


def test_limits_at_the_edges() -> None:
    validate_dispatch("x" * 100, {f"k{i}": i for i in range(10)})
    overhead = len(json.dumps({"b": ""}, separators=(",", ":")))
    validate_dispatch("e", {"b": "x" * (64 * 1024 - 1 - overhead)})  # 65535 bytes: accepted
    with pytest.raises(ValidationError):
        validate_dispatch("e", {"b": "x" * (64 * 1024 - overhead)})  # 65536 bytes: refused


def test_the_fake_refuses_what_github_refuses(gh: FakeGitHub) -> None:
    """The same limits, enforced by the fake server, so a client without the checks would be caught."""
    gh.add_repo(INFRA)
    with GitHubClient(base_url=gh.url, token=SecretStr(gh.token)) as c:
        response = c._http.post(
            f"repos/{INFRA}/dispatches",
            json={"event_type": "x", "client_payload": {f"k{i}": i for i in range(11)}},
            headers={"Authorization": f"Bearer {gh.token}"},
        )
    assert response.status_code == 422
    assert "No more than 10 properties are allowed; 11 were supplied." in response.json()["message"]


# --- the signed webhook target ---------------------------------------------------------------------------


def test_webhook_target_signs_the_raw_body(receiver: InfraWebhookReceiver) -> None:
    secret = SecretStr("infra-shared-secret")
    target = infra.WebhookTarget(receiver.url, secret)
    result = create(target, None)
    assert result.sent is True
    assert result.reason.endswith("(head SHA not checked: no GitHub credentials)")
    assert "team=web" not in (result.target or "")  # the query string is not shown
    (hook,) = receiver.received
    assert hook.headers["content-type"] == "application/json"
    assert hook.headers["x-previews-event"] == "preview-create"
    signature = hook.headers["x-previews-signature-256"]
    verify_signature(hook.body, signature, secret, header_name=infra.SIGNATURE_HEADER)
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(hook.body, signature, SecretStr("wrong"))
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(hook.body + b" ", signature, secret)
    with pytest.raises(SignatureError, match="missing"):
        verify_signature(hook.body, None, secret)
    assert hook.json["event_type"] == "preview-create"
    assert hook.json["client_payload"]["image"] == f"{IMAGE}@{DIGEST}"
    assert "infra-shared-secret" not in hook.body.decode() + json.dumps(hook.headers)


def test_webhook_signature_matches_an_independent_hmac(receiver: InfraWebhookReceiver) -> None:
    import hashlib
    import hmac

    target = infra.WebhookTarget(receiver.url, SecretStr("k"))
    infra.notify_teardown(target, repository=REPO, pr_number=7)
    (hook,) = receiver.received
    expected = "sha256=" + hmac.new(b"k", hook.body, hashlib.sha256).hexdigest()
    assert hook.headers["x-previews-signature-256"] == expected


def test_webhook_target_with_github_checks_the_head(
    gh: FakeGitHub, github: GitHubClient, receiver: InfraWebhookReceiver
) -> None:
    gh.add_pull(REPO, 7, head_sha=NEW)
    target = infra.WebhookTarget(receiver.url, SecretStr("k"))
    assert create(target, github, sha=OLD).sent is False
    assert receiver.received == []
    assert create(target, github, sha=NEW).sent is True


@pytest.mark.parametrize(
    ("status", "error"), [(503, TransientInfraNotifyError), (429, TransientInfraNotifyError)]
)
def test_webhook_target_transient_failures(
    receiver: InfraWebhookReceiver, status: int, error: type[Exception]
) -> None:
    receiver.fail_next(status)
    with pytest.raises(error) as info:
        infra.notify_teardown(infra.WebhookTarget(receiver.url, SecretStr("k")), repository=REPO, pr_number=7)
    assert str(status) in str(info.value)


def test_webhook_target_refusal_is_permanent(receiver: InfraWebhookReceiver) -> None:
    receiver.fail_next(401)
    with pytest.raises(InfraNotifyError, match="401"):
        infra.notify_teardown(infra.WebhookTarget(receiver.url, SecretStr("k")), repository=REPO, pr_number=7)


def test_webhook_target_unreachable_is_transient() -> None:
    from tests.support.services import free_port

    target = infra.WebhookTarget(f"http://127.0.0.1:{free_port()}/hook", SecretStr("k"), timeout=2)
    with pytest.raises(TransientInfraNotifyError):
        infra.notify_teardown(target, repository=REPO, pr_number=7)


@pytest.mark.parametrize(
    ("url", "secret", "field"),
    [
        ("ftp://infra.example/hook", "k", "URL"),
        ("https://user:pw@infra.example/hook", "k", "URL"),
        ("https://infra.example/hook", "", "SECRET"),
    ],
)
def test_webhook_target_settings_are_validated(url: str, secret: str, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        infra.WebhookTarget(url, SecretStr(secret))
    assert field in info.value.field


def test_target_from_settings_prefers_the_infra_repository(github: GitHubClient) -> None:
    both = Settings(
        infra_repository=INFRA,
        infra_webhook_url="https://infra.example/hook",
        infra_webhook_secret=SecretStr("k"),
    )
    assert isinstance(infra.target_from_settings(both, github), infra.GitHubDispatchTarget)
    hook_only = Settings(infra_webhook_url="https://infra.example/hook", infra_webhook_secret=SecretStr("k"))
    target = infra.target_from_settings(hook_only, None)
    assert isinstance(target, infra.WebhookTarget)
    assert repr(target) == "WebhookTarget('https://infra.example/hook')"
    no_secret = infra.target_from_settings(Settings(infra_webhook_url="https://infra.example/hook"), None)
    assert isinstance(no_secret, infra.NoTarget)
    assert "SECRET" in no_secret.reason


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"digest": "sha256:abc"}, "digest"),
        ({"image": f"{IMAGE}@{DIGEST}"}, "image"),
        ({"repository": "../etc"}, "repository"),
        ({"pr_number": 0}, "pr_number"),
        ({"sha": "main"}, "sha"),
    ],
)
def test_create_payload_inputs_are_validated(kwargs: dict[str, object], field: str) -> None:
    base: dict[str, object] = {
        "image": IMAGE,
        "digest": DIGEST,
        "tag": "pr-7-x",
        "repository": REPO,
        "pr_number": 7,
        "sha": NEW,
    }
    with pytest.raises(ValidationError) as info:
        infra.build_create_payload(**{**base, **kwargs})  # type: ignore[arg-type]
    assert info.value.field == field
