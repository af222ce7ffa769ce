"""``previews build`` as a person runs it: a subprocess with environment settings, JSON out, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.console import PREVIEWS
from tests.support.sample import make_sample
from tests.support.services import Registry

pytestmark = pytest.mark.usefixtures("prefect_server", "base_image")


def previews(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PREVIEWS, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_build_pushes_and_prints_json(remotes_root: Path, registry: Registry) -> None:
    sample = make_sample(remotes_root, f"cli-{uuid.uuid4().hex[:8]}")
    env = {
        "PREVIEWS_REGISTRY": registry.host,
        "PREVIEWS_REGISTRY_USERNAME": registry.username,
        "PREVIEWS_REGISTRY_TOKEN": registry.password,
        "PREVIEWS_GIT_URL_TEMPLATE": sample.git_url_template,
        "PREVIEWS_SIBLINGS": sample.siblings,
        "PREVIEWS_BUILD_CONTEXT": "..",
    }
    args = ["build", "--repository", sample.app.repository, "--pr", "31", "--sha", sample.head_sha, "--json"]
    proc = previews(*args, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    image = f"{registry.host}/{sample.app.repository.lower()}:pr-31-{sample.head_sha}"
    assert out["status"] == "pushed"
    assert out["image"] == image
    assert out["digest"] == registry.manifest(sample.app.repository.lower(), f"pr-31-{sample.head_sha}")[0]
    assert uuid.UUID(out["flow_run_id"])
    assert registry.password not in proc.stdout + proc.stderr

    skipped = previews(*args, env={**env, "PREVIEWS_REGISTRY_TOKEN": ""})
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert json.loads(skipped.stdout.strip().splitlines()[-1])["status"] == "skipped"

    failed = previews(*args[:-3], "--sha", "e" * 40, "--json", env=env)
    assert failed.returncode == 1
    body = json.loads(failed.stdout.strip().splitlines()[-1])
    assert body["status"] == "failed"
    assert "e" * 40 in body["reason"]
    assert "Traceback" not in failed.stderr


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--repository", "acme", "--pr", "1", "--sha", "a" * 40], "repository"),
        (["--repository", "acme/app", "--pr", "100000", "--sha", "a" * 40], "pr_number"),
        (["--repository", "acme/app", "--pr", "1", "--sha", "$(id)"], "head_sha"),
    ],
)
def test_invalid_input_exits_2_with_one_sentence(args: list[str], field: str) -> None:
    proc = previews("build", *args, env={})
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"invalid input: {field}:")
    assert len(proc.stderr.strip().splitlines()) == 1

    as_json = previews("build", *args, "--json", env={})
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["status"] == "failed"


def _build_env(sample_name: str, remotes_root: Path, registry: Registry) -> tuple[dict[str, str], list[str]]:
    sample = make_sample(remotes_root, f"{sample_name}-{uuid.uuid4().hex[:8]}")
    env = {
        "PREVIEWS_REGISTRY": registry.host,
        "PREVIEWS_REGISTRY_USERNAME": registry.username,
        "PREVIEWS_REGISTRY_TOKEN": registry.password,
        "PREVIEWS_GIT_URL_TEMPLATE": sample.git_url_template,
        "PREVIEWS_SIBLINGS": sample.siblings,
        "PREVIEWS_BUILD_CONTEXT": "..",
    }
    args = ["build", "--repository", sample.app.repository, "--pr", "32", "--sha", sample.head_sha, "--json"]
    return env, args


def _processes_with_home(home: Path) -> list[int]:
    """PIDs whose environment has ``PREFECT_HOME=<home>`` (a temporary server left behind would)."""
    marker = f"PREFECT_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_build_without_an_api_url_uses_the_running_stack_server(
    remotes_root: Path, registry: Registry, prefect_server: str, tmp_path: Path
) -> None:
    env, args = _build_env("cli-stack", remotes_root, registry)
    (tmp_path / "prefect-api-url").write_text(prefect_server + "\n")  # as a running `previews up` leaves it
    home = tmp_path / "home"
    env |= {"PREFECT_API_URL": "", "PREVIEWS_STATE_DIR": str(tmp_path), "PREFECT_HOME": str(home)}
    proc = previews(*args, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_id = json.loads(proc.stdout.strip().splitlines()[-1])["flow_run_id"]
    found = httpx.get(f"{prefect_server}/flow_runs/{run_id}", timeout=10)
    assert found.status_code == 200, "the run is not on the running server"
    assert found.json()["state_type"] == "COMPLETED"
    assert not (home / "prefect.db").exists(), "a temporary server was started anyway"


def test_build_without_any_server_runs_on_a_temporary_one_and_stops_it(
    remotes_root: Path, registry: Registry, tmp_path: Path
) -> None:
    env, args = _build_env("cli-temp", remotes_root, registry)
    home = tmp_path / "home"
    (tmp_path / "prefect-api-url").write_text("http://127.0.0.1:9/api\n")  # a stack that is gone
    env |= {"PREFECT_API_URL": "", "PREVIEWS_STATE_DIR": str(tmp_path), "PREFECT_HOME": str(home)}
    proc = previews(*args, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "pushed"
    assert (home / "prefect.db").exists(), "the run was not recorded in PREFECT_HOME's database"
    assert _processes_with_home(home) == [], "the temporary Prefect server outlived the command"
