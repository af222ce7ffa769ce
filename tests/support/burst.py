"""A burst of signed ``pull_request`` deliveries over many PRs, and what the Prefect API says happened.

Shared by tests/e2e/test_production.py and bench/burst.py. Each push is a real commit of a sample project;
pushes are shuffled across PRs and stay in order within a PR (a PR's pushes happen one after the other).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import SecretStr

from blocks import PreviewsConfig, PreviewsCredentials
from tests.support.sample import SampleProject
from tests.support.services import Registry
from tests.support.webhooks import headers, synchronize_payload

FINAL = ("COMPLETED", "CANCELLED", "FAILED", "CRASHED")


@dataclass(frozen=True)
class Push:
    """One push: the PR, its new head and the delivery GUID that announces it."""

    pr: int
    sha: str
    delivery: str


def plan_burst(
    sample: SampleProject, *, prs: int, deliveries: int, seed: int, first_pr: int = 100
) -> list[Push]:
    """``deliveries`` pushes over ``prs`` PRs (1-6 each), each a real commit, in sending order."""
    assert prs <= deliveries <= 6 * prs, "each PR gets 1-6 pushes"
    rng = random.Random(seed)
    counts = [1] * prs
    while sum(counts) < deliveries:
        pr = rng.randrange(prs)
        if counts[pr] < 6:
            counts[pr] += 1
    queues: list[list[Push]] = []
    for index, count in enumerate(counts):
        pr = first_pr + index
        shas = [
            sample.app.commit({f"src/pr{pr}.txt": f"pr {pr} push {n}\n"}, f"pr {pr} push {n}")
            for n in range(count)
        ]
        queues.append([Push(pr, sha, str(uuid.uuid4())) for sha in shas])
    order = [i for i, queue in enumerate(queues) for _ in queue]
    rng.shuffle(order)
    return [queues[i].pop(0) for i in order]


def finals(pushes: list[Push]) -> dict[int, str]:
    """The head each PR ends at: its last push in sending order."""
    return {p.pr: p.sha for p in pushes}


def send(receiver_url: str, secret: str, repository: str, push: Push, base: str) -> float:
    """One signed ``synchronize`` delivery; the wall time at which the receiver answered 202."""
    payload = synchronize_payload(repository=repository, number=push.pr)
    payload["pull_request"]["head"]["sha"] = push.sha
    payload["pull_request"]["base"]["sha"] = base
    body = json.dumps(payload).encode()
    response = httpx.post(
        receiver_url, content=body, headers=headers(body, delivery=push.delivery, secret=secret), timeout=30
    )
    assert response.status_code == 202, response.text
    return time.time()


def runs_of(api: str, repository: str) -> list[dict[str, Any]]:
    """Every preview-image flow run of ``repository`` (JSON, as the API returns it)."""
    deployment = httpx.get(f"{api}/deployments/name/preview-image/preview-image", timeout=30).json()
    runs: list[dict[str, Any]] = []
    while True:
        page = httpx.post(
            f"{api}/flow_runs/filter",
            json={"deployments": {"id": {"any_": [deployment["id"]]}}, "limit": 200, "offset": len(runs)},
            timeout=30,
        ).json()
        runs += page
        if len(page) < 200:
            return [r for r in runs if r["parameters"].get("repository") == repository]


def wait_all_final(
    api: str, repository: str, count: int, timeout: float, *, settle: float | None = None
) -> list[dict[str, Any]]:
    """Wait until ``count`` runs of ``repository`` exist and all ended; return them.

    With ``settle`` (the bench), also return when fewer runs exist but all ended and no new one appeared for
    ``settle`` seconds: a delivery whose run was never created is then reported, not waited for.
    """
    deadline = time.monotonic() + timeout
    runs: list[dict[str, Any]] = []
    changed = time.monotonic()
    while time.monotonic() < deadline:
        try:
            seen = len(runs)
            runs = runs_of(api, repository)
        except httpx.HTTPError:  # an API server being killed; HAProxy takes it out within 2 s
            time.sleep(1)
            continue
        changed = time.monotonic() if len(runs) != seen else changed
        ended = all(r["state"]["type"] in FINAL for r in runs)
        if ended and (len(runs) >= count or (settle is not None and time.monotonic() - changed > settle)):
            return runs
        time.sleep(3)
    states = sorted((r["name"], r["state"]["name"]) for r in runs)
    raise AssertionError(f"{len(runs)}/{count} runs, not all final within {timeout}s: {states}")


def states_of(api: str, run_id: str) -> list[dict[str, Any]]:
    """A run's state history, oldest first."""
    states: list[dict[str, Any]] = httpx.get(
        f"{api}/flow_run_states/", params={"flow_run_id": run_id}, timeout=30
    ).json()
    return sorted(states, key=lambda s: s["timestamp"])


def running_intervals(api: str, runs: list[dict[str, Any]]) -> dict[str, list[tuple[datetime, datetime]]]:
    """For each run id, when it was Running (from its state history; a retried run has two intervals)."""
    intervals: dict[str, list[tuple[datetime, datetime]]] = {}
    for run in runs:
        states = states_of(api, run["id"])
        for state, after in zip(states, [*states[1:], None], strict=True):
            if state["type"] == "RUNNING":
                end = after["timestamp"] if after else state["timestamp"]
                span = (datetime.fromisoformat(state["timestamp"]), datetime.fromisoformat(end))
                intervals.setdefault(run["id"], []).append(span)
    return intervals


def peak_overlap(intervals: dict[str, list[tuple[datetime, datetime]]]) -> int:
    """The most intervals open at one moment."""
    edges = [(start, 1) for spans in intervals.values() for start, _ in spans]
    edges += [(end, -1) for spans in intervals.values() for _, end in spans]
    level = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        level += step
        peak = max(peak, level)
    return peak


def builds_executed(api: str, runs: list[dict[str, Any]]) -> int:
    """How many of ``runs`` ran their ``build`` task to the end (a cancelled build does not count)."""
    ids = [r["id"] for r in runs]
    built = 0
    for start in range(0, len(ids), 100):
        tasks = httpx.post(
            f"{api}/task_runs/filter",
            json={
                "flow_runs": {"id": {"any_": ids[start : start + 100]}},
                "task_runs": {"name": {"like_": "build"}, "state": {"type": {"any_": ["COMPLETED"]}}},
            },
            timeout=30,
        ).json()
        built += len({t["flow_run_id"] for t in tasks if t["name"].startswith("build-")})
    return built


def save_blocks(
    api: str, registry: Registry, git_url_template: str, git_token: str, sample: SampleProject
) -> None:
    """The ``previews`` credentials and config blocks on the Prefect API at ``api``, for ``sample``."""
    with temporary_settings({PREFECT_API_URL: api}):
        PreviewsCredentials(
            registry_username=registry.username,
            registry_token=SecretStr(registry.password),
            git_token=SecretStr(git_token),
        ).save("previews", overwrite=True)
        PreviewsConfig(
            registry=registry.host,
            git_url_template=git_url_template,
            siblings=sample.siblings,
            build_context="..",
            dockerfile="Dockerfile",
        ).save("previews", overwrite=True)


def failed_actions(api: str) -> list[str]:
    """The reasons of Prefect's failed automation actions (a trigger that could not create its run)."""
    found = httpx.post(
        f"{api}/events/filter",
        json={"limit": 200, "filter": {"event": {"name": ["prefect.automation.action.failed"]}}},
        timeout=30,
    ).json()
    return [str(e["payload"].get("reason", "?")) for e in found.get("events", [])]
