"""An absent or lost Docker engine is reported as such ("no Docker engine answers at ..."), never as a raw
docker-py exception: when the engine client is made, when the build cache pulls, when an image is pushed, and
at the end of a whole ``previews build``."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import docker
import pytest
from pydantic import SecretStr

from previews.docker_engine import DockerEngine
from previews.errors import DockerUnavailableError, TransientError
from tests.support.console import PREVIEWS
from tests.support.sample import make_sample
from tests.support.services import Registry, free_port


def dead_engine(tmp_path: Path) -> DockerEngine:
    """An engine client for a socket nobody listens on (the API version is fixed, so making it connects to nothing)."""
    return DockerEngine(
        docker.DockerClient(base_url=f"unix://{tmp_path}/gone.sock", version="1.41", timeout=5)
    )


def test_no_engine_at_docker_host_is_named_when_the_client_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/missing.sock")
    with pytest.raises(DockerUnavailableError) as missing:
        DockerEngine.from_env(timeout=5)
    assert (
        str(missing.value)
        == f"no Docker engine answers at unix://{tmp_path}/missing.sock (No such file or directory)"
    )
    assert isinstance(missing.value, TransientError)  # a restarted engine is worth a retry

    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{free_port()}")
    with pytest.raises(
        DockerUnavailableError, match=r"answers at tcp://127\.0\.0\.1:\d+ \(Connection refused\)"
    ):
        DockerEngine.from_env(timeout=5)


def test_a_push_to_a_lost_engine_names_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/gone.sock")
    with pytest.raises(DockerUnavailableError) as lost:
        dead_engine(tmp_path).push(
            "127.0.0.1:5000/acme/app", "pr-1-abcdef0", username="u", password=SecretStr("s3cret-token")
        )
    assert str(lost.value).startswith(
        f"no Docker engine answers at unix://{tmp_path}/gone.sock during the push"
    )
    assert "s3cret-token" not in str(lost.value)


def test_the_build_cache_says_the_engine_is_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/gone.sock")
    reason = dead_engine(tmp_path).pull("127.0.0.1:5000/acme/app:pr-1-abcdef0")
    assert reason == f"no Docker engine answers at unix://{tmp_path}/gone.sock (No such file or directory)"


@pytest.mark.usefixtures("prefect_server", "base_image")
def test_previews_build_without_an_engine_fails_naming_it(
    tmp_path: Path, remotes_root: Path, registry: Registry
) -> None:
    sample = make_sample(remotes_root, f"no-engine-{uuid.uuid4().hex[:8]}")
    env = {
        **os.environ,
        "DOCKER_HOST": f"unix://{tmp_path}/missing.sock",
        "PREVIEWS_REGISTRY": registry.host,
        "PREVIEWS_REGISTRY_USERNAME": registry.username,
        "PREVIEWS_REGISTRY_TOKEN": registry.password,
        "PREVIEWS_GIT_URL_TEMPLATE": sample.git_url_template,
        "PREVIEWS_SIBLINGS": sample.siblings,
        "PREVIEWS_BUILD_CONTEXT": "..",
        "PREVIEWS_RETRIES": "0",
    }
    args = ["build", "--repository", sample.app.repository, "--pr", "7", "--sha", sample.head_sha, "--json"]
    proc = subprocess.run(
        [PREVIEWS, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr  # a required service is unreachable
    out = json.loads(proc.stdout)
    assert out["status"] == "failed"
    assert out["error"] == "DockerUnavailableError"
    assert (
        out["reason"]
        == f"no Docker engine answers at unix://{tmp_path}/missing.sock (No such file or directory)"
    )
    assert "docker.errors" not in proc.stdout + proc.stderr
