"""The composition root picks the reporters PREVIEWS_GITHUB_REPORT asks for; ``both`` reports to each."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pydantic import SecretStr

from previews.core import status
from previews.errors import ValidationError
from previews.github.checks import CheckReporter
from previews.github.reporting import Reporters
from previews.github.statuses import StatusReporter
from previews.settings import Settings
from previews.wiring import Wiring
from tests.support.fake_github import FakeGitHub

REPO = "acme/app"
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
LOG = logging.getLogger("test.reporting")


def app_values(gh: FakeGitHub, **overrides: Any) -> dict[str, Any]:
    return {
        "github_api_url": gh.url,
        "github_app_id": 12345,
        "github_app_private_key": SecretStr(gh.enable_app()),
        "github_app_installation_id": 67890,
        **overrides,
    }


def kinds(reporter: object) -> list[type]:
    members = reporter.members if isinstance(reporter, Reporters) else (reporter,)
    return [type(m) for m in members]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [(None, [StatusReporter, CheckReporter]), ("status", [StatusReporter]), ("check", [CheckReporter])],
)
def test_with_an_app(gh: FakeGitHub, mode: str | None, expected: list[type]) -> None:
    wiring = Wiring(Settings(**app_values(gh, github_report=mode)))
    with wiring.github() as client:  # type: ignore[union-attr]
        reporter = wiring.reporter(client, REPO, run_url=None, run_id="r", logger=LOG)
        assert kinds(reporter) == expected
        reporter.use_sha(SHA)
        reporter.post(status.pending())
        reporter.started()
        reporter.post(status.skipped_docs_only())
    assert len(gh.statuses(REPO, SHA)) == (2 if StatusReporter in expected else 0)
    assert len(gh.check_runs(REPO, SHA)) == (1 if CheckReporter in expected else 0)


def test_without_an_app_statuses_only_and_check_is_refused(gh: FakeGitHub) -> None:
    wiring = Wiring(Settings(github_api_url=gh.url, github_token=SecretStr(gh.token)))
    assert kinds(wiring.reporter(None, REPO, run_url=None, run_id=None, logger=LOG)) == [StatusReporter]
    with pytest.raises(ValidationError, match="PREVIEWS_GITHUB_REPORT"):
        Wiring(Settings(github_report="check")).reporter(None, REPO, run_url=None, run_id=None, logger=LOG)


def test_the_redactor_knows_every_secret() -> None:
    settings = Settings(
        registry_token=SecretStr("reg-tok"),
        git_token=SecretStr("git-tok"),
        build_secret_values={"NPM": SecretStr("npm-tok")},
    )
    assert Wiring(settings).redactor()("a reg-tok b git-tok c npm-tok") == "a *** b *** c ***"
