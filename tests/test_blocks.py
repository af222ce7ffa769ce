"""The Prefect blocks register from the command line and feed the flows' settings at run time."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from prefect.blocks.fields import SecretDict
from pydantic import SecretStr

from blocks import PreviewsConfig, PreviewsCredentials
from flows.common import load_settings
from previews.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("prefect_server")


def test_block_types_register_with_the_prefect_cli(prefect_server: str) -> None:
    prefect = Path(sys.executable).with_name("prefect")
    proc = subprocess.run(
        [str(prefect), "block", "register", "-m", "blocks"],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for slug in ("previews-credentials", "previews-config"):
        assert httpx.get(f"{prefect_server}/block_types/slug/{slug}", timeout=10).status_code == 200


def test_flows_load_credentials_and_config_blocks_by_name(prefect_server: str) -> None:
    name = f"t-{uuid.uuid4().hex[:8]}"
    PreviewsCredentials(registry_username="robot", registry_token=SecretStr("push-token-42")).save(name)
    PreviewsConfig(
        registry="127.0.0.1:5999", siblings="common=acme/common@v2", dockerfile="ops/Dockerfile"
    ).save(name)
    settings = load_settings(Settings(credentials_block=name, config_block=name, registry="ghcr.io"))
    assert settings.registry == "127.0.0.1:5999"
    assert settings.dockerfile == "ops/Dockerfile"
    assert settings.siblings == "common=acme/common@v2"
    assert settings.registry_username == "robot"
    assert settings.registry_token is not None
    assert settings.registry_token.get_secret_value() == "push-token-42"
    assert settings.has_push_credentials

    # Stored encrypted and served masked: the secret is not in the block document the API returns by default.
    doc = httpx.get(
        f"{prefect_server}/block_types/slug/previews-credentials/block_documents/name/{name}", timeout=10
    ).json()
    assert "push-token-42" not in str(doc)


def test_a_config_block_with_a_bad_value_is_refused_naming_it(prefect_server: str) -> None:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    PreviewsConfig(registry="https://not-a-host/").save(name)
    with pytest.raises(ValueError, match="registry"):
        load_settings(Settings(config_block=name))


def test_sibling_token_and_build_secrets_come_from_the_blocks(prefect_server: str) -> None:
    name = f"sib-{uuid.uuid4().hex[:8]}"
    PreviewsCredentials(
        siblings_git_token=SecretStr("repo-access-token-7"),
        build_secrets=SecretDict({"NPM_TOKEN": "npm-from-block-9"}),
    ).save(name)
    PreviewsConfig(build_secrets="npm=NPM_TOKEN", paths="src/**,!src/docs/**").save(name)
    settings = load_settings(Settings(credentials_block=name, config_block=name))
    sibling = settings.sibling_git_token()
    assert sibling is not None
    assert sibling.get_secret_value() == "repo-access-token-7"
    app = settings.app_git_token()  # no PREVIEWS_GIT_TOKEN: the app falls back to the siblings' token
    assert app is not None
    assert app.get_secret_value() == "repo-access-token-7"
    assert settings.build_secrets == "npm=NPM_TOKEN"
    assert settings.build_secret_values["NPM_TOKEN"].get_secret_value() == "npm-from-block-9"
    assert settings.path_filter().mode == "paths"
    doc = httpx.get(
        f"{prefect_server}/block_types/slug/previews-credentials/block_documents/name/{name}", timeout=10
    ).json()
    assert "repo-access-token-7" not in str(doc)
    assert "npm-from-block-9" not in str(doc)
