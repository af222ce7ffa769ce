"""A sample application repository (with a sibling) whose Dockerfile builds on the local busybox base."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.support.services import BASE_IMAGE, Remote, make_remote

APP_DOCKERFILE = f"""\
FROM {BASE_IMAGE} AS base
ARG GREETING=hello
COPY common/lib.txt /opt/common/lib.txt
COPY app/src/ /opt/app/
RUN cat /opt/app/main.txt /opt/common/lib.txt > /opt/combined.txt && echo "$GREETING" > /opt/greeting.txt

FROM base AS final
RUN echo built-final > /opt/final.txt
"""


@dataclass
class SampleProject:
    """An app remote and its ``common`` sibling remote, with the app's head SHA."""

    app: Remote
    common: Remote
    head_sha: str
    git_url_template: str

    @property
    def siblings(self) -> str:
        return f"common={self.common.repository}@main"


def make_sample(root: Path, owner: str, name: str = "app") -> SampleProject:
    """Create ``owner/name`` (the PR repository) and ``owner/common`` under ``root``."""
    common = make_remote(root, f"{owner}/common")
    common.commit({"lib.txt": "common library v1\n"}, "common v1")
    app = make_remote(root, f"{owner}/{name}")
    head = app.commit(
        {"Dockerfile": APP_DOCKERFILE, "src/main.txt": "app main v1\n", "README.md": "# sample\n"}, "app v1"
    )
    return SampleProject(app, common, head, f"file://{root}/{{repository}}.git")
