"""The build plan, pure: every decision of a preview-image run, as tables."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import pytest

from previews.core import plan
from previews.core.paths import choose_filter
from previews.core.plan import BuildConfig, BuildPaths, PreviewParams, Subject
from previews.core.request import validate_request
from previews.core.retry import backoff, planned_delay, retry_wait
from previews.errors import (
    AuthError,
    BuildError,
    TagPolicyError,
    TransientError,
    TransientGitHubError,
    ValidationError,
)

SHA = "a" * 40
BASE = "b" * 40
OTHER = "c" * 40
CONFIG = BuildConfig(registry="registry.example.test", has_push_credentials=True)
GOOD: dict[str, Any] = {"repository": "Acme/App", "pr_number": 7, "head_sha": SHA}


@dataclass(frozen=True)
class Pull:
    head_sha: str = SHA
    base_sha: str = BASE
    is_fork: bool = False
    labels: tuple[str, ...] = ()


def params(**overrides: Any) -> PreviewParams:
    return plan.validate_params(CONFIG, **{**GOOD, **overrides})


# --- validate_params -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"repository": "acme/app;rm -rf /"}, "repository"),
        ({"pr_number": 0}, "pr_number"),
        ({"head_sha": "main"}, "head_sha"),
        ({"force_rebuild": "yes"}, "force_rebuild"),
        ({"force_rebuild": None}, "force_rebuild"),
        ({"delivery": 12}, "delivery"),
        ({"base_sha": "abc1234"}, "base_sha"),  # the base must be a full SHA
        ({"base_sha": "not-a-sha"}, "base_sha"),
        ({"fork": "yes"}, "fork"),
        ({"fork": 1}, "fork"),
        ({"labels": "bug"}, "labels"),
        ({"labels": ["bug", 3]}, "labels"),
        ({"labels": {"name": "bug"}}, "labels"),
        ({"received": "yesterday"}, "received"),
        ({"received": "2026-12-07T15:37:44"}, "received"),  # no time zone: not comparable
        ({"received": 1765121864}, "received"),
        # the first bad field is named, in parameter order
        ({"pr_number": 0, "fork": "yes"}, "pr_number"),
        ({"force_rebuild": 1, "labels": 2}, "force_rebuild"),
    ],
)
def test_a_bad_parameter_is_refused_naming_it(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        params(**overrides)
    assert caught.value.field == field


def test_good_parameters_are_typed() -> None:
    got = params(
        base_sha=BASE, fork=True, labels=["bug", "safe-to-preview"], delivery="d-1", force_rebuild=True
    )
    assert got.request.repository == "Acme/App"
    assert got.request.image_name == "registry.example.test/acme/app"
    assert (got.base_sha, got.fork, got.labels) == (BASE, True, ("bug", "safe-to-preview"))
    assert (got.delivery, got.force_rebuild) == ("d-1", True)
    assert got.received is None
    assert params(received="").received is None  # the trigger renders an absent ``received`` as null
    assert params(received="2026-12-07T15:37:44.5Z").received == datetime(
        2026, 12, 7, 15, 37, 44, 500000, tzinfo=UTC
    )
    assert (
        params(base_sha="", labels=None, fork=None).base_sha is None
    )  # the trigger renders a missing base as ""


# --- reconcile: GitHub wins ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "pull", "expected", "warnings"),
    [
        # without GitHub the event decides; an unknown fork flag means a same-repository PR
        ({}, None, (None, False, (), None), 0),
        ({"base_sha": BASE, "fork": True, "labels": ["x"]}, None, (BASE, True, ("x",), None), 0),
        # with GitHub, GitHub's base, fork flag and labels win, and disagreements are logged
        ({}, Pull(labels=("l",)), (BASE, False, ("l",), SHA), 0),
        ({"base_sha": OTHER}, Pull(), (BASE, False, (), SHA), 1),
        ({"fork": False}, Pull(is_fork=True), (BASE, True, (), SHA), 1),
        ({"base_sha": OTHER, "fork": True}, Pull(), (BASE, False, (), SHA), 2),
        ({"labels": ["event"]}, Pull(labels=("github",)), (BASE, False, ("github",), SHA), 0),
        # the PR moved on: the requested commit is built, and statuses are not posted on GitHub's head
        ({}, Pull(head_sha=OTHER), (BASE, False, (), None), 1),
        # a short SHA that is a prefix of the head: statuses go on the full head SHA
        ({"head_sha": SHA[:9]}, Pull(), (BASE, False, (), SHA), 0),
    ],
)
def test_reconcile(
    given: dict[str, Any], pull: Pull | None, expected: tuple[Any, ...], warnings: int
) -> None:
    subject = plan.reconcile(params(**given), pull)
    assert (subject.base_sha, subject.fork, subject.labels, subject.status_sha) == expected
    assert sum(n.level == "warning" for n in subject.notes) == warnings
    unknown_fork = pull is None and given.get("fork") is None
    assert any(n.message == plan.UNKNOWN_FORK for n in subject.notes) == unknown_fork


# --- skips -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fork", "policy", "labels", "credentials", "skipped", "state"),
    [
        (False, "skip", (), True, None, None),
        (True, "skip", (), True, "skipped: fork PR", "success"),
        (True, "label", (), True, "skipped: fork PR", "success"),
        (True, "label", ("Safe-To-Preview",), True, None, None),
        (True, "allow", (), True, None, None),
        (False, "skip", (), False, plan.NO_PUSH_CREDENTIALS, "success"),
        (True, "skip", (), False, "skipped: fork PR", "success"),  # the fork policy speaks first
    ],
)
def test_skip_before_checkout(
    fork: bool,
    policy: str,
    labels: tuple[str, ...],
    credentials: bool,
    skipped: str | None,
    state: str | None,
) -> None:
    config = replace(CONFIG, fork_policy=policy, has_push_credentials=credentials)
    skip = plan.skip_before_checkout(Subject(base_sha=BASE, fork=fork, labels=labels), config)
    if skipped is None:
        assert skip is None
    else:
        assert skip is not None
        assert skip.reason.startswith(skipped)
        assert skip.status.state == state


@pytest.mark.parametrize(
    ("changed", "skipped"),
    [
        (["docs/a.md", "README.md"], True),
        (["docs/a.md", "src/main.py"], False),
        ([], False),  # nothing to compare: build
    ],
)
def test_skip_docs_only(changed: list[str], skipped: bool) -> None:
    skip = plan.skip_docs_only(choose_filter(paths=None, paths_ignore=None).decide(changed))
    assert (skip is not None) == skipped
    if skip is not None:
        assert skip.reason.startswith("skipped: docs-only change (")
        assert skip.status.description == "skipped: docs-only change"


@pytest.mark.parametrize(
    ("fork", "allowed", "given"),
    [(False, False, {"npm": "t"}), (True, False, {}), (True, True, {"npm": "t"})],
)
def test_a_forks_build_gets_no_secrets_unless_allowed(
    fork: bool, allowed: bool, given: dict[str, str]
) -> None:
    config = replace(CONFIG, fork_build_secrets=allowed)
    assert plan.secrets_for(Subject(None, fork, ()), {"npm": "t"}, config) == given


# --- tag, labels, build spec -----------------------------------------------------------------------------------


def test_tag_is_pr_and_sha_and_the_policy_is_checked() -> None:
    request = params().request
    assert plan.tag_for(request, SHA, CONFIG) == f"pr-7-{SHA}"
    assert plan.tag_for(request, SHA, replace(CONFIG, tag_sha_length=12)) == f"pr-7-{SHA[:12]}"
    with pytest.raises(ValidationError):
        plan.tag_for(request, SHA[:9], CONFIG)  # a full SHA is needed for the tag
    with pytest.raises(TagPolicyError):
        plan.tag_for(request, SHA, replace(CONFIG, protected_tags=("pr-*",)))


def test_the_fingerprint_follows_the_settings_and_the_siblings() -> None:
    config = replace(CONFIG, siblings="common=acme/common@main")
    request = validate_request(**GOOD, registry=config.registry, siblings=config.siblings)
    one = plan.fingerprint_of(config, request, {"common": BASE})
    assert one == plan.fingerprint_of(config, request, {"common": BASE})
    assert one != plan.fingerprint_of(config, request, {"common": OTHER})
    assert one != plan.fingerprint_of(replace(config, build_args={"A": "1"}), request, {"common": BASE})
    assert one != plan.fingerprint_of(replace(config, dockerfile="ops/Dockerfile"), request, {"common": BASE})


def test_labels_carry_the_revision_the_pr_and_the_fingerprint() -> None:
    created = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    labels = plan.image_labels(
        CONFIG, params().request, head_sha=SHA, tag="pr-7-x", fingerprint="f", created=created
    )
    assert labels["org.opencontainers.image.revision"] == SHA
    assert labels["org.opencontainers.image.source"] == "https://github.com/Acme/App"
    assert labels["org.opencontainers.image.created"] == "2026-11-30T12:00:00Z"
    assert (labels["previews.pr"], labels["previews.repository"]) == ("7", "Acme/App")
    assert labels["previews.build-fingerprint"] == "f"


W = PurePosixPath("/ws")


@pytest.mark.parametrize(
    ("context", "dockerfile", "field"),
    [
        (W / "app", W / "app/Dockerfile", None),
        (W, W / "app/Dockerfile", None),  # context `..`: the siblings are in it
        (W, W / "app/ops/Dockerfile", None),
        (PurePosixPath("/"), W / "app/Dockerfile", "PREVIEWS_BUILD_CONTEXT"),  # `../..` leaves the workspace
        (PurePosixPath("/etc"), PurePosixPath("/etc/Dockerfile"), "PREVIEWS_BUILD_CONTEXT"),  # a symlink out
        (W / "app", W / "common/Dockerfile", "PREVIEWS_DOCKERFILE"),
    ],
)
def test_the_build_context_stays_in_the_workspace(
    context: PurePosixPath, dockerfile: PurePosixPath, field: str | None
) -> None:
    paths = BuildPaths(workspace=W, context=context, dockerfile=dockerfile)  # type: ignore[arg-type]
    request = params().request
    if field is not None:
        with pytest.raises(ValidationError) as caught:
            plan.build_spec(CONFIG, request, paths=paths, tag="pr-7-x", labels={})
        assert caught.value.field == field
        return
    spec = plan.build_spec(CONFIG, request, paths=paths, tag="pr-7-x", labels={"a": "b"}, cache_from=("c",))
    assert spec.context_dir == context
    assert spec.dockerfile == str(dockerfile.relative_to(context))
    assert spec.image_ref == "registry.example.test/acme/app:pr-7-x"
    assert (dict(spec.labels), tuple(spec.cache_from), spec.timeout) == ({"a": "b"}, ("c",), 1800.0)


@pytest.mark.parametrize(
    ("newest", "fallback", "expected"),
    [
        (None, None, []),
        ("pr-7-abc1234", None, [("registry.example.test/acme/app:pr-7-abc1234", True)]),
        (None, "registry.example.test/acme/app:main", [("registry.example.test/acme/app:main", True)]),
        (None, "other.example/acme/app:main", [("other.example/acme/app:main", False)]),
        (
            "pr-7-abc1234",
            "other.example/x:y",
            [("registry.example.test/acme/app:pr-7-abc1234", True), ("other.example/x:y", False)],
        ),
    ],
)
def test_cache_sources_and_whose_credentials_they_get(
    newest: str | None, fallback: str | None, expected: list[tuple[str, bool]]
) -> None:
    config = replace(CONFIG, cache_from_fallback=fallback)
    assert [(s.reference, s.ours) for s in plan.cache_sources(config, params().request, newest)] == expected


# --- failure status and the result ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "state", "description"),
    [
        (BuildError("RUN make failed", log_tail=["x"]), "failure", "failed: RUN make failed"),
        (AuthError("registry said 401"), "error", "failed: AuthError: registry said 401"),
        (TransientError("503\nmore"), "error", "failed: TransientError: 503"),
        (RuntimeError(""), "error", "failed: RuntimeError: RuntimeError"),
    ],
)
def test_failure_status(error: BaseException, state: str, description: str) -> None:
    update = plan.failure_status(error)
    assert (update.state, update.description) == (state, description)


def test_results_name_the_run() -> None:
    skipped = plan.skipped(params(), "skipped: x", head_sha=OTHER)
    assert (skipped.status, skipped.head_sha, skipped.pr_number) == ("skipped", OTHER, 7)
    from previews.core.outcome import NotifyResult

    notify = NotifyResult(sent=False, target=None, reason="none")
    reused = plan.pushed(
        params(), head_sha=SHA, tag="t", image="r/i:t", digest="sha256:d", built=None, notify=notify
    )
    assert reused.reason == "already published r/i:t@sha256:d; nothing built"
    assert reused.steps is None


# --- retries (previews.core.retry) -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "planned", "wait"),
    [
        (ValidationError("f", "bad"), 2.0, None),  # never retried
        (AuthError("no"), 2.0, None),
        (BuildError("broke"), 2.0, None),
        (RuntimeError("boom"), 2.0, None),  # stamina's rule: only what is known to be transient
        (None, 2.0, None),
        (TransientError("503"), 2.0, 2.0),
        (TransientGitHubError("limited", retry_after=30.0), 2.0, 30.0),  # the remote's wait wins
        (TransientGitHubError("limited", retry_after=0.5), 2.0, 2.0),  # never shorter than the backoff
        (TransientGitHubError("limited", retry_after=3600.0), 2.0, None),  # too long to hold a run for
    ],
)
def test_retry_wait(error: BaseException | None, planned: float, wait: float | None) -> None:
    assert retry_wait(error, planned=planned, max_wait=120.0) == wait


def test_backoff_doubles_and_the_last_delay_repeats() -> None:
    assert backoff(2.0, 3) == [2.0, 4.0, 8.0]
    assert backoff(2.0, 0) == []
    assert [planned_delay([1.0, 2.0], n) for n in range(4)] == [1.0, 2.0, 2.0, 2.0]
    assert (planned_delay(None, 0), planned_delay(5, 3), planned_delay([], 1)) == (0.0, 5.0, 0.0)
