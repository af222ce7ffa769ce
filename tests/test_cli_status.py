"""``previews status`` against a real Prefect server holding preview runs in several states."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect import get_client
from prefect.states import Cancelled, Scheduled

from flows.preview_image import preview_image
from tests.conftest import INFRA, github_values, run_image, run_teardown, settings_for
from tests.support.console import PREVIEWS
from tests.support.fake_github import FakeGitHub
from tests.support.sample import make_sample
from tests.support.services import Registry, free_port

pytestmark = pytest.mark.usefixtures("prefect_server", "base_image")


def previews(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PREVIEWS, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120
    )


def queued(parameters: dict[str, Any], state: Any) -> str:
    """A preview-image run that never ran: created straight in ``state`` (as a queued or cancelled one is)."""
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(preview_image, parameters=parameters, state=state)
    return str(run.id)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> dict[str, Any]:
    """One repository with PRs 5 (pushed, live), 9 (pushed, torn down), 8 (failed), 6 (queued, cancelled)."""
    sample = make_sample(tmp_path_factory.mktemp("remotes"), f"Status-{uuid.uuid4().hex[:8]}")
    repo, base = sample.app.repository, sample.head_sha
    head = sample.app.commit({"src/main.txt": "app main v2\n"}, "code change")
    event = str(uuid.uuid4())
    with FakeGitHub() as github:
        github.add_repo(INFRA)
        for number in (5, 9):
            sample.app.push_pr_ref(number, head)
            github.add_pull(repo, number, head_sha=head, base_sha=base)
        settings = settings_for(sample, registry, **github_values(github))
        live = run_image(settings, repository=repo, pr_number=5, head_sha=head, delivery=event)
        torn = run_image(settings, repository=repo, pr_number=9, head_sha=head)
        assert live.is_completed(), live.message
        assert torn.is_completed(), torn.message
        assert run_teardown(settings, repository=repo, pr_number=9).is_completed()
        failed = run_image(settings, repository=repo, pr_number=8, head_sha=head)
        assert failed.is_failed()
    params = {"repository": repo, "pr_number": 6, "head_sha": head}
    scheduled = queued(params | {"delivery": "reconcile:0123456789abcdef"}, Scheduled())
    cancelled = queued(
        params | {"delivery": f"rerequest:{event}"}, Cancelled(message="superseded by a newer run")
    )
    return {
        "repository": repo,
        "head": head,
        "event": event,
        "digest": registry.manifest(repo.lower(), f"pr-5-{head}")[0],
        "image": f"{registry.host}/{repo.lower()}:pr-5-{head}",
        "ids": {"live": str(live.state_details.flow_run_id), "scheduled": scheduled, "cancelled": cancelled},
    }


def test_status_json_lists_each_pr_newest_first_with_state_image_trigger_and_liveness(
    history: dict[str, Any],
) -> None:
    proc = previews("status", "--repository", history["repository"].upper(), "--json")
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert (body["status"], body["flow_run_id"], body["error"]) == ("ok", None, None)
    pulls = {p["pr_number"]: p for p in body["pull_requests"]}
    assert [p["pr_number"] for p in body["pull_requests"]] == [9, 8, 6, 5]

    (pushed,) = pulls[5]["runs"]
    assert pulls[5]["live"] is True, pulls[5]["live_reason"]
    assert (pushed["state"], pushed["head_sha"]) == ("Completed", history["head"])
    assert pushed["flow_run_id"] == history["ids"]["live"]
    assert (pushed["image"], pushed["digest"]) == (history["image"], history["digest"])
    assert pushed["trigger"] == {"kind": "event", "detail": history["event"]}
    assert {"validate", "checkout", "build", "push", "notify-infra"} <= set(pushed["durations_s"])
    assert all(isinstance(s, float) and s >= 0 for s in pushed["durations_s"].values())

    assert pulls[9]["live"] is False
    assert "torn down by teardown-pr-9" in pulls[9]["live_reason"]
    assert pulls[9]["runs"][0]["trigger"] == {"kind": "cli", "detail": None}

    (failure,) = pulls[8]["runs"]
    assert failure["state"] == "Failed"
    assert failure["message"]
    assert (failure["image"], pulls[8]["live"]) == (None, False)

    queued_runs = pulls[6]["runs"]
    assert [r["flow_run_id"] for r in queued_runs] == [
        history["ids"]["cancelled"],
        history["ids"]["scheduled"],
    ]
    assert [r["state"] for r in queued_runs] == ["Cancelled", "Scheduled"]
    assert queued_runs[0]["message"] == "superseded by a newer run"
    assert [r["trigger"]["kind"] for r in queued_runs] == ["rerequest", "reconcile"]
    assert queued_runs[0]["trigger"]["detail"] == history["event"]


def test_status_of_one_pr_and_its_plain_text(history: dict[str, Any]) -> None:
    repo = history["repository"]
    one = json.loads(previews("status", "--json", "--repository", repo, "--pr", "5").stdout)
    assert [p["pr_number"] for p in one["pull_requests"]] == [5]
    assert one["pr_number"] == 5

    text = previews("status", "--repository", repo, "--limit", "1")
    assert text.returncode == 0, text.stderr
    assert f"{repo}#5: live (preview-create for {history['head'][:12]}" in text.stdout
    assert f"{repo}#9: not live (torn down by" in text.stdout
    assert f"image: {history['image']}@sha256:" in text.stdout
    assert "superseded by a newer run" in text.stdout
    assert "Scheduled" not in text.stdout  # --limit 1: only the newest run of PR 6


def test_status_of_a_repository_without_runs_is_an_empty_list() -> None:
    proc = previews("--json", "status", "--repository", f"nobody/none-{uuid.uuid4().hex[:6]}")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["pull_requests"] == []
    human = previews("status", "--repository", "nobody/nothing")
    assert human.returncode == 0
    assert "no preview runs for nobody/nothing" in human.stdout


def test_status_exits_3_when_the_prefect_api_does_not_answer(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/api"
    proc = previews("status", "--repository", "a/b", "--json", env={"PREFECT_API_URL": dead})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    body = json.loads(proc.stdout)
    assert (body["status"], body["error"], body["pull_requests"]) == ("failed", "UnreachableError", [])
    assert dead in body["reason"]
    assert "PREFECT_API_URL" in body["reason"]
    bad = previews("status", "--repository", "a", env={"PREFECT_API_URL": dead})
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        == "invalid input: --repository: 'a' is not a GitHub repository of the form owner/name"
    )
