"""A run cancelled or crashed before it could report completes its own open check run (its state hook), so a
required check never hangs; another run's check on the same commit is left alone."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.states import Cancelled, Crashed
from pydantic import SecretStr

from flows.preview_image import close_run_check, preview_image
from previews.core import status
from previews.github.checks import CheckReporter
from previews.redact import Redactor
from previews.settings import Settings
from previews.wiring import Wiring
from tests.support.fake_github import FakeGitHub

REPO = "acme/app"
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"


def open_check(wiring: Wiring, run_id: str) -> None:
    github = wiring.github()
    assert github is not None
    with github:
        r = CheckReporter(github, REPO, "preview-image", None, run_id, logging.getLogger("t"), Redactor())
        r.use_sha(SHA)
        r.post(status.pending())
        r.started()


@pytest.mark.parametrize(("state", "conclusion"), [(Cancelled(), "cancelled"), (Crashed(), "failure")])
def test_the_hook_completes_only_this_runs_open_check(
    github: FakeGitHub, state: Any, conclusion: str
) -> None:
    settings = Settings(
        github_api_url=github.url,
        github_app_id=12345,
        github_app_private_key=SecretStr(github.enable_app()),
        github_app_installation_id=67890,
        ui_url="https://prefect.example.test",
    )
    wiring = Wiring(settings)
    mine, other = str(uuid.uuid4()), str(uuid.uuid4())
    open_check(wiring, mine)
    open_check(wiring, other)
    flow_run = FlowRun(
        id=uuid.UUID(mine),
        flow_id=uuid.uuid4(),
        name="pr-7-6dcb09b",
        parameters={"repository": REPO, "pr_number": 7, "head_sha": SHA},
    )
    close_run_check(preview_image.over(lambda: wiring), flow_run, state)
    runs = {run["external_id"]: run for run in github.check_runs(REPO, SHA)}
    assert (runs[mine]["status"], runs[mine]["conclusion"]) == ("completed", conclusion)
    assert f"https://prefect.example.test/runs/flow-run/{mine}" in runs[mine]["output"]["summary"]
    assert (runs[other]["status"], runs[other]["conclusion"]) == ("in_progress", None)


def test_without_check_reporting_the_hook_sends_nothing(github: FakeGitHub) -> None:
    wiring = Wiring(Settings(github_api_url=github.url, github_token=SecretStr(github.token)))
    flow_run = FlowRun(flow_id=uuid.uuid4(), name="x", parameters={"repository": REPO, "head_sha": SHA})
    close_run_check(preview_image.over(lambda: wiring), flow_run, Crashed())
    assert github.requests == []
