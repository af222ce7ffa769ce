"""``previews build`` as a person runs it: a subprocess with environment settings, JSON out, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

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
