"""Session-wide real services, and what the flow tests share.

Prefect settings are fixed first, before anything imports prefect. Tests that need a real service (the Docker
engine, the registry, the Prefect server, git remotes) are marked ``services`` here, from the fixtures they use:
``pytest -m "not services"`` runs the rest in seconds.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tests.support import services

# One Prefect server per test session, on a free port, with its home in a temp dir.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="previews-tests-"))
_PREFECT_PORT = services.free_port()
os.environ.update(services.prefect_env(_SESSION_DIR / "prefect-home", _PREFECT_PORT))
for _name in [n for n in os.environ if n.startswith("PREVIEWS_")]:
    del os.environ[_name]  # tests pass configuration explicitly

import contextlib  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from prefect.client.schemas.objects import State  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from flows.preview_cleanup import preview_cleanup  # noqa: E402
from flows.preview_image import preview_image  # noqa: E402
from flows.preview_teardown import preview_teardown  # noqa: E402
from previews.settings import Settings  # noqa: E402
from previews.wiring import Wiring  # noqa: E402
from tests.support.fake_github import FakeGitHub  # noqa: E402
from tests.support.sample import SampleProject, make_sample  # noqa: E402
from tests.support.services import Registry  # noqa: E402


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


# --- what the flow tests share: settings for a sample project, running a flow over them --------------------

INFRA = "acme-infra/environments"
SERVICE_FIXTURES = frozenset({"docker_client", "base_image", "registry", "prefect_server", "remotes_root"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``services`` every test that needs a real service (Docker, the registry, Prefect, git remotes):
    those that use a service fixture, and the ``slow`` end-to-end ones, which start their own.

    ``pytest -m "not services"`` then runs the pure and in-process tests in about a minute.
    """
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.services)


def settings_for(sample: SampleProject, reg: Registry, **overrides: Any) -> Settings:
    """Settings that build ``sample`` and push to ``reg`` (with its credentials), plus ``overrides``."""
    values: dict[str, Any] = {
        "registry": reg.host,
        "registry_username": reg.username,
        "registry_token": SecretStr(reg.password),
        "git_url_template": sample.git_url_template,
        "siblings": sample.siblings,
        "build_context": "..",
        "retry_delay": 0.1,
        **overrides,
    }
    return Settings(**values)


def github_values(github: FakeGitHub, **overrides: Any) -> dict[str, Any]:
    """Settings values that point the pipeline at ``github`` with a token, notifying :data:`INFRA`."""
    return {
        "github_api_url": github.url,
        "github_token": SecretStr(github.token),
        "infra_repository": INFRA,
        **overrides,
    }


def params_for(sample: SampleProject, pr: int = 7, sha: str | None = None) -> dict[str, Any]:
    """The preview-image parameters for ``sample``'s PR ``pr`` at ``sha`` (default: its head)."""
    return {"repository": sample.app.repository, "pr_number": pr, "head_sha": sha or sample.head_sha}


def run_image(settings: Settings, **params: Any) -> State[Any]:
    """One preview-image run in this process, over ``settings`` (no blocks, no environment)."""
    state: State[Any] = preview_image.over(lambda: Wiring(settings))(**params, return_state=True)
    return state


def run_teardown(settings: Settings, **params: Any) -> State[Any]:
    """One preview-teardown run in this process, over ``settings``."""
    state: State[Any] = preview_teardown.over(lambda: Wiring(settings))(**params, return_state=True)
    return state


def run_cleanup(settings: Settings, *, dry_run: bool) -> State[Any]:
    """One preview-cleanup run in this process, over ``settings``."""
    state: State[Any] = preview_cleanup.over(lambda: Wiring(settings))(dry_run=dry_run, return_state=True)
    return state


@pytest.fixture
def sample(remotes_root: Path) -> SampleProject:
    """A fresh app repository (mixed-case owner) with its sibling, as git remotes."""
    return make_sample(remotes_root, f"Owner-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def image_cleanup(docker_client: services.docker.DockerClient) -> Iterator[list[str]]:
    """Image references a test made in the local engine, removed afterwards."""
    refs: list[str] = []
    yield refs
    for ref in refs:
        with contextlib.suppress(services.docker.errors.ImageNotFound):
            docker_client.images.remove(ref, force=True)


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    """The fake GitHub API, with the infra repository that receives dispatches."""
    with FakeGitHub() as fake:
        fake.add_repo(INFRA)
        yield fake
