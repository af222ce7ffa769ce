"""``previews up --production`` before it starts anything: what it needs, said in one sentence each; and the
crash-retry automation it installs, as Prefect's own model reads it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.server.events.actions import ChangeFlowRunState

from previews.local import production
from tests.support.console import PREVIEWS
from tests.support.services import free_port


def user_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PREVIEWS_"))}
    return {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def test_a_missing_redis_server_is_named_with_its_package(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a PATH with python, git and docker but no redis-server
    bin_dir.mkdir()
    for program in ("git", "docker"):
        if (found := shutil.which(program)) is not None:
            (bin_dir / program).symlink_to(found)
    proc = subprocess.run(
        [PREVIEWS, "up", "--production", "--state-dir", str(tmp_path / "state"), "--port", str(free_port())],
        env=user_env(PATH=f"{Path(PREVIEWS).parent}:{bin_dir}"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "redis-server is not installed: apt-get install redis-server" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "state").exists()


def test_each_missing_program_is_named_with_its_debian_package(tmp_path: Path) -> None:
    assert production.missing_programs(search_path=str(tmp_path)) == [
        "redis-server is not installed: apt-get install redis-server",
        "haproxy is not installed: apt-get install haproxy",
    ]


def test_production_and_demo_together_are_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        [PREVIEWS, "up", "--production", "--demo", "--state-dir", str(tmp_path), "--port", str(free_port())],
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "--demo runs on the embedded stack only" in proc.stderr


def test_the_retry_automation_reschedules_a_crashed_first_attempt_of_preview_image_only() -> None:
    body = production.retry_crashed_automation("0b7c5c8e-3d2f-4a55-9d0e-1d2e3f405162")
    automation = AutomationCore.model_validate(body)
    trigger = automation.trigger
    assert isinstance(trigger, EventTrigger)
    assert trigger.posture is Posture.Reactive
    assert trigger.expect == {"prefect.flow-run.Crashed"}
    assert trigger.match.model_dump() == {
        "prefect.resource.id": "prefect.flow-run.*",
        "prefect.run-count": "1",
    }
    related = trigger.match_related
    assert not isinstance(related, list)
    assert related.model_dump() == {
        "prefect.resource.id": "prefect.deployment.0b7c5c8e-3d2f-4a55-9d0e-1d2e3f405162"
    }
    (action,) = automation.actions
    server_side = ChangeFlowRunState.model_validate(action.model_dump())
    assert server_side.state.value == "SCHEDULED"
    assert server_side.name == "AwaitingRetry"
    assert server_side.force is True
