"""Session-wide real services. Prefect settings are fixed here, before anything imports prefect."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import services

# One Prefect server per test session, on a free port, with its home in a temp dir.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="previews-tests-"))
_PREFECT_PORT = services.free_port()
os.environ.update(services.prefect_env(_SESSION_DIR / "prefect-home", _PREFECT_PORT))
for _name in [n for n in os.environ if n.startswith("PREVIEWS_")]:
    del os.environ[_name]  # tests pass configuration explicitly


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def docker_client() -> services.docker.DockerClient:
    return services.docker_client()


@pytest.fixture(scope="session")
def base_image(docker_client: services.docker.DockerClient) -> str:
    return services.ensure_base_image(docker_client)


@pytest.fixture(scope="session")
def registry(session_dir: Path) -> Iterator[services.Registry]:
    with services.run_registry(session_dir / "registry") as reg:
        yield reg


@pytest.fixture(scope="session")
def prefect_server(session_dir: Path) -> Iterator[str]:
    """A real Prefect server for the session; yields its API URL (already in PREFECT_API_URL)."""
    with services.run_prefect_server(session_dir / "prefect-home", _PREFECT_PORT):
        yield os.environ["PREFECT_API_URL"]


@pytest.fixture(scope="session")
def remotes_root(session_dir: Path) -> Path:
    root = session_dir / "remotes"
    root.mkdir(exist_ok=True)
    return root
