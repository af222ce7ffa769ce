"""Reconcile against hostile GitHub answers and a missing Prefect: it ends cleanly, says why, acts only on what
it read completely, and a rerun never starts a run twice. A real Prefect server; the preview-image deployment
is registered but not served, so the runs reconcile starts stay Scheduled (in flight)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from pydantic import SecretStr

from flows.preview_image import preview_image
from flows.preview_reconcile import ReconcileReport, preview_reconcile
from previews.github.checks import create_check_run
from previews.settings import Settings
from previews.wiring import Wiring
from previews_cli.app import main
from tests.support.fake_github import FakeGitHub
from tests.support.services import free_port

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def deployment(prefect_server: str) -> Iterator[str]:
    """preview-image registered under a fresh name, not served; its runs are deleted afterwards."""
    name = f"faults-{uuid.uuid4().hex[:8]}"
    preview_image.to_deployment(name=name).apply()
    yield f"preview-image/{name}"
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["reconcile"]))
        ):
            client.delete_flow_run(run.id)


def repos_with_pulls(github: FakeGitHub, count: int = 3) -> tuple[str, str]:
    owner = f"Fault-{uuid.uuid4().hex[:6]}"
    first, second = f"{owner}/one", f"{owner}/two"
    for repo in (first, second):
        for pr in range(1, count + 1):
            github.add_pull(repo, pr, head_sha=secrets.token_hex(20))
    return first, second


def settings(github: FakeGitHub, deployment: str, *repos: str) -> Settings:
    return Settings(
        github_api_url=github.url,
        github_token=SecretStr(github.token),
        reconcile_repositories=",".join(repos),
        reconcile_image_deployment=deployment,
    )


def reconcile(values: Settings, *, dry_run: bool = False) -> tuple[bool, ReconcileReport]:
    state = preview_reconcile.over(lambda: Wiring(values))(dry_run=dry_run, return_state=True)
    report = state.result(raise_on_failure=False)
    assert isinstance(report, ReconcileReport), report
    assert state.message == report.summary
    return state.is_completed(), report


def started_prs(report: ReconcileReport) -> list[tuple[str, int]]:
    return sorted((s["repository"], s["pr_number"]) for s in report.started if s.get("fresh", True))


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        (lambda gh, path: gh.malformed_json("GET", path), "not JSON"),
        (lambda gh, path: gh.fail_server_error("GET", path, status=502), "502"),
        (lambda gh, path: gh.secondary_rate_limit("GET", path, retry_after=60), "rate limit"),
        (lambda gh, path: gh.secondary_rate_limit("GET", path, status=429, retry_after=60), "429"),
        (lambda gh, path: gh.primary_rate_limit("GET", path, reset_in=600), "rate limit"),
    ],
    ids=["malformed-json", "5xx", "secondary-403", "secondary-429", "primary"],
)
def test_a_hostile_status_read_ends_the_reconcile_and_a_rerun_starts_nothing_twice(
    github: FakeGitHub, deployment: str, fault: Any, said: str
) -> None:
    first, second = repos_with_pulls(github)
    fault(github, f"/repos/{second}/commits/*/status")
    ok, report = reconcile(settings(github, deployment, first, second))
    assert not ok
    assert not report.complete
    assert report.stopped_by == "github"
    assert report.reason is not None
    assert said in report.reason
    assert started_prs(report) == [(first, 1), (first, 2), (first, 3)]  # the repository read completely
    assert report.read == [first]
    assert report.github_requests == 1 + 3 + 1 + 1  # one listing and 3 statuses, one listing, one status

    ok, again = reconcile(settings(github, deployment, first, second))
    assert ok, again.reason
    assert started_prs(again) == [(second, 1), (second, 2), (second, 3)]
    assert again.counts == {"up-to-date": 3, "missing": 3}  # the first repository's runs are in flight


def test_a_malformed_listing_starts_nothing(github: FakeGitHub, deployment: str) -> None:
    first, _ = repos_with_pulls(github)
    github.malformed_json("GET", f"/repos/{first}/pulls")
    ok, report = reconcile(settings(github, deployment, first))
    assert not ok
    assert report.started == []
    assert report.decisions == []
    assert report.reason is not None
    assert f"GitHub: GitHub GET /repos/{first}/pulls: 200 with a body that is not JSON" == report.reason


def test_a_listing_of_a_wrong_shape_starts_nothing(github: FakeGitHub, deployment: str) -> None:
    first, _ = repos_with_pulls(github)
    github.fail("GET", f"/repos/{first}/pulls", status=200, body=[{"number": 1, "state": "open"}])
    ok, report = reconcile(settings(github, deployment, first))
    assert not ok
    assert report.started == []
    assert report.reason is not None
    assert "unexpected pull request shape" in report.reason


def test_it_stops_before_the_rate_limit_runs_out(github: FakeGitHub, deployment: str) -> None:
    first, _ = repos_with_pulls(github, count=5)
    github._remaining = 103  # the next answers say 102, 101, 100, 99 requests are left
    ok, report = reconcile(settings(github, deployment, first))
    assert not ok
    assert report.reason is not None
    assert "99 requests left in this hour's rate limit" in report.reason
    assert report.started == []
    assert report.github_requests == 4  # the listing and three statuses; nothing more was sent


def test_a_dry_run_starts_nothing(github: FakeGitHub, deployment: str) -> None:
    first, _ = repos_with_pulls(github)
    ok, report = reconcile(settings(github, deployment, first), dry_run=True)
    assert ok
    assert report.counts == {"missing": 3}
    assert [d["run"] for d in report.decisions] == ["dry run"] * 3
    ok, again = reconcile(settings(github, deployment, first), dry_run=True)
    assert again.counts == {"missing": 3}  # nothing was started in between


def test_with_check_runs_only_it_reads_the_check_runs(github: FakeGitHub, deployment: str) -> None:
    first, _ = repos_with_pulls(github, count=4)
    key = github.enable_app(app_id=4242, installation_id=77)
    values = settings(github, deployment, first).model_copy(
        update={
            "github_token": None,
            "github_app_id": 4242,
            "github_app_private_key": SecretStr(key),
            "github_app_installation_id": 77,
            "github_report": "check",
        }
    )
    heads = {n: secrets.token_hex(20) for n in (1, 2, 3, 4)}
    for number, sha in heads.items():
        github.set_head(first, number, sha)
    client = Wiring(values).github()
    assert client is not None
    with client:
        create_check_run(
            client, first, name="preview-image", head_sha=heads[1], status="completed", conclusion="failure"
        )
        create_check_run(client, first, name="preview-image", head_sha=heads[2], status="in_progress")
        create_check_run(
            client, first, name="other-check", head_sha=heads[3], status="completed", conclusion="success"
        )
        old = datetime.now(UTC) - timedelta(hours=2)
        create_check_run(client, first, name="preview-image", head_sha=heads[4], status="in_progress", at=old)
    ok, report = reconcile(values, dry_run=True)
    assert ok, report.reason
    kinds = {d["pr_number"]: d["kind"] for d in report.decisions}
    assert kinds == {1: "up-to-date", 2: "waiting", 3: "missing", 4: "stale-pending"}
    assert github.requests_to("GET", "/repos/*/commits/*/status") == []


# --- the command ------------------------------------------------------------------------------------------------


def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str], *args: str
) -> tuple[int, Any]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(["reconcile", "--json", *args])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1]) if out else None


def test_cli_exit_codes(
    github: FakeGitHub, deployment: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first, _ = repos_with_pulls(github)
    env = {
        "PREVIEWS_GITHUB_API_URL": github.url,
        "PREVIEWS_GITHUB_TOKEN": github.token,
        "PREVIEWS_RECONCILE_REPOSITORIES": first,
        "PREVIEWS_RECONCILE_IMAGE_DEPLOYMENT": deployment,
    }
    code, out = cli(monkeypatch, capsys, env)
    assert code == 0
    assert out["dry_run"] is True
    assert out["counts"] == {"missing": 3}

    github.fail_server_error("GET", f"/repos/{first}/pulls", status=503)
    code, out = cli(monkeypatch, capsys, env, "--apply")
    assert code == 3
    assert out["stopped_by"] == "github"

    code, out = cli(monkeypatch, capsys, {**env, "PREVIEWS_RECONCILE_REPOSITORIES": "not a repository"})
    assert code == 2
    assert out["reason"].startswith("PREVIEWS_RECONCILE_REPOSITORIES: ")

    monkeypatch.delenv("PREVIEWS_GITHUB_TOKEN")
    code, out = cli(monkeypatch, capsys, {"PREVIEWS_RECONCILE_REPOSITORIES": first})
    assert code == 2
    assert out["reason"].startswith("PREVIEWS_GITHUB_TOKEN: ")


def test_cli_without_prefect_is_unreachable(github: FakeGitHub) -> None:
    env = {
        **os.environ,
        "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
        "PREVIEWS_GITHUB_API_URL": github.url,
        "PREVIEWS_GITHUB_TOKEN": github.token,
        "PREVIEWS_RECONCILE_REPOSITORIES": "acme/app",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "previews_cli", "reconcile"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stderr.startswith("unreachable: ")


def test_one_idempotency_key_starts_one_run(deployment: str) -> None:
    values = Settings()
    key = f"reconcile:{secrets.token_hex(8)}:1"
    params = {"repository": "acme/keyed", "pr_number": 9, "head_sha": secrets.token_hex(20)}
    with Wiring(values).prefect_runs() as runs:
        first = runs.start(deployment, params, idempotency_key=key, tags=["reconcile"])
        again = runs.start(deployment, params, idempotency_key=key, tags=["reconcile"])
        other = runs.start(deployment, params, idempotency_key=key + "0", tags=["reconcile"])
    assert first.fresh
    assert not again.fresh
    assert again.id == first.id
    assert other.fresh
    assert other.id != first.id
