"""The preview-image flow reporting through GitHub check runs (a GitHub App configured), against the fake GitHub:
the lifecycle, the summary of a pushed image, the failing step's tail, and the configuration error."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from previews.errors import ValidationError
from previews.settings import Settings
from tests.conftest import github_values, run_image, settings_for
from tests.support.fake_github import FakeGitHub
from tests.support.sample import SampleProject, make_sample
from tests.support.services import Registry

pytestmark = pytest.mark.usefixtures("prefect_server", "base_image")
UI = "http://prefect.example.test"


@pytest.fixture
def pr(remotes_root: Path, github: FakeGitHub) -> tuple[SampleProject, str, str]:
    sample = make_sample(remotes_root, f"ck-{uuid.uuid4().hex[:8]}")
    base = sample.head_sha
    head = sample.app.commit({"src/main.txt": "app main v3\n"}, "code change")
    github.add_pull(sample.app.repository, 5, head_sha=head, base_sha=base)
    return sample, base, head


def app_settings(sample: SampleProject, reg: Registry, github: FakeGitHub, **overrides: Any) -> Settings:
    key = github.enable_app()
    app = {
        "github_token": None,
        "github_app_id": 12345,
        "github_app_private_key": SecretStr(key),
        "github_app_installation_id": 67890,
        "ui_url": UI,
    }
    return settings_for(sample, reg, **github_values(github, **app, **overrides))


def check_bodies(github: FakeGitHub) -> list[tuple[str, str]]:
    return [(method, body.get("status", "")) for method, _, body in github.check_run_requests]


def test_a_pushed_image_completes_the_check_with_its_summary(
    pr: tuple[SampleProject, str, str], registry: Registry, github: FakeGitHub
) -> None:
    sample, base, head = pr
    settings = app_settings(sample, registry, github, github_report="check")
    state = run_image(settings, repository=sample.app.repository, pr_number=5, head_sha=head, base_sha=base)
    assert state.is_completed(), state.message
    result = state.result()
    run_id = str(state.state_details.flow_run_id)

    assert check_bodies(github) == [("POST", "queued"), ("PATCH", "in_progress"), ("PATCH", "completed")]
    (check,) = github.check_runs(sample.app.repository, head)
    assert (check["status"], check["conclusion"], check["external_id"]) == ("completed", "success", run_id)
    assert check["details_url"] == f"{UI}/runs/flow-run/{run_id}"
    summary = check["output"]["summary"]
    assert result.image in summary
    assert result.digest in summary
    assert f"{result.cached_steps} of {result.steps} steps cached" in summary
    assert "| build |" in summary
    assert "| push |" in summary
    assert f"[Flow run in Prefect]({UI}/runs/flow-run/{run_id})" in summary
    assert github.statuses(sample.app.repository, head) == []  # check only: no commit statuses


def test_a_broken_build_fails_the_check_with_the_steps_log_tail(
    pr: tuple[SampleProject, str, str], registry: Registry, github: FakeGitHub
) -> None:
    sample, base, _head = pr
    broken = sample.app.commit(
        {"Dockerfile": f"FROM previews-test/busybox:1\nRUN echo {registry.password} >/dev/null; exit 7\n"},
        "broken",
    )
    github.add_pull(sample.app.repository, 9, head_sha=broken, base_sha=base)
    settings = app_settings(sample, registry, github)  # default with an App: both
    state = run_image(settings, repository=sample.app.repository, pr_number=9, head_sha=broken)
    assert state.is_failed()

    assert [s["state"] for s in github.statuses(sample.app.repository, broken)] == ["pending", "failure"]
    (check,) = github.check_runs(sample.app.repository, broken)
    assert check["conclusion"] == "failure"
    summary = check["output"]["summary"]
    assert "Failed in step `build`." in summary
    assert "exit code: 7" in summary
    assert registry.password not in summary


def test_check_reporting_without_an_app_is_a_configuration_error(
    pr: tuple[SampleProject, str, str], registry: Registry, github: FakeGitHub
) -> None:
    sample, base, head = pr
    settings = settings_for(sample, registry, **github_values(github, github_report="check"))
    state = run_image(settings, repository=sample.app.repository, pr_number=5, head_sha=head, base_sha=base)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ValidationError)
    assert error.field == "PREVIEWS_GITHUB_REPORT"
    assert "needs a GitHub App" in str(error)
    assert github.check_runs(sample.app.repository) == []
