"""``check_run`` / ``check_suite`` ``rerequested`` deliveries built from the recorded octokit examples."""

from __future__ import annotations

import copy
from typing import Any

from tests.support.webhooks import WEBHOOKS, load_payload

CHECK_RUN = WEBHOOKS / "octokit-webhooks/check_run/rerequested.payload.json"
CHECK_SUITE = WEBHOOKS / "octokit-webhooks/check_suite/rerequested.payload.json"


def _pull(number: int, head_sha: str, repository: str) -> dict[str, Any]:
    """One entry of a check's ``pull_requests`` (the recorded check_suite example's shape)."""
    entry: dict[str, Any] = copy.deepcopy(load_payload(CHECK_SUITE)["check_suite"]["pull_requests"][0])
    entry.update(number=number, url=f"https://api.github.com/repos/{repository}/pulls/{number}")
    entry["head"]["sha"] = head_sha
    return entry


def rerequested(
    kind: str,
    *,
    repository: str,
    head_sha: str,
    app_id: int,
    numbers: tuple[int, ...] = (7,),
    name: str = "preview-image",
    conclusion: str | None = "failure",
) -> dict[str, Any]:
    """A ``rerequested`` delivery of ``kind`` for the App's check on ``head_sha`` of PRs ``numbers``."""
    payload = load_payload(CHECK_RUN if kind == "check_run" else CHECK_SUITE)
    check = payload[kind]
    check.update(head_sha=head_sha, conclusion=conclusion)
    check["app"]["id"] = app_id
    check["pull_requests"] = [_pull(n, head_sha, repository) for n in numbers]
    if kind == "check_run":
        check["name"] = name
        check["check_suite"].update(head_sha=head_sha, pull_requests=check["pull_requests"])
    owner, repo = repository.split("/")
    payload["repository"].update(full_name=repository, name=repo)
    payload["repository"]["owner"]["login"] = owner
    return payload
