"""Where the seconds of one warm rebuild go: receiver 202 -> tag pushed, read back from the Prefect API.

    python bench/breakdown.py [--samples 3]

Starts the same stack as ``bench/run.py`` (registry, Prefect server, served deployments polling every second,
receiver), builds one project cold, then sends ``--samples`` warm one-line changes and for each prints the
timeline the Prefect server recorded: the event received, the flow run created (trigger), Pending (the
runner's poll picked it up), Running (the flow-run process started and imported its code), each task run's
start and end, the run's end; and the tag's arrival in the registry (polled every 0.05 s). The same work by
hand (git fetch + build + push) runs beside it. It also times ``import`` of the flow-run process's modules
(``python -X importtime``), the floor of a cold process per run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import httpx

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import pipeline  # noqa: E402
from run import running_stack  # noqa: E402

from previews.local import demo  # noqa: E402
from tests.support.services import ensure_base_image  # noqa: E402


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def import_seconds(module: str) -> float:
    """Wall seconds of ``python -c 'import <module>'`` in a fresh process (best of three)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        best = min(best, time.perf_counter() - start)
    return best


def send_and_watch(
    project: pipeline.Project, registry: pipeline.RegistryAccess, receiver_url: str, api: str
) -> tuple[float, float, str]:
    """One delivery: (202 time, tag-in-registry time, flow run id)."""
    body, headers, delivery_id = pipeline.delivery(project)
    resp = httpx.post(receiver_url, content=body, headers=headers, timeout=30)
    accepted = time.time()
    if resp.status_code != 202:
        raise SystemExit(f"the receiver answered {resp.status_code}")
    tag = f"pr-{project.pr}-{project.head_sha}"
    pushed: float | None = None
    deadline = time.monotonic() + 300
    while pushed is None and time.monotonic() < deadline:
        if registry.has_tag(project.image, tag):
            pushed = time.time()
        time.sleep(0.05)
    if pushed is None:
        raise SystemExit(f"{tag} was not pushed within 300 s")
    run: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        run = pipeline.find_run(api, delivery_id)
        if run is not None and run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(0.2)
    assert run is not None
    return accepted, pushed, str(run["id"])


def timeline(api: str, run_id: str, accepted: float, pushed: float) -> list[tuple[float, str]]:
    """Every recorded moment of the run, in seconds after the 202."""
    time.sleep(1.5)  # task-run states arrive as events: let the server record the last ones
    points: list[tuple[float, str]] = [(0.0, "receiver answered 202")]
    run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
    points.append((_ts(run["created"]) or 0.0, "flow run created (trigger fired)"))
    states = httpx.get(f"{api}/flow_run_states/", params={"flow_run_id": run_id}, timeout=10).json()
    for state in states:
        points.append((_ts(state["timestamp"]) or 0.0, f"flow run {state['name']}"))
    events = httpx.post(
        f"{api}/events/filter",
        json={"filter": {"event": {"prefix": ["github.pull_request."]}}, "limit": 50},
        timeout=10,
    ).json()
    for event in events.get("events", []):
        received = _ts(event.get("received"))
        if received is not None and accepted - 1 <= received <= pushed:
            points.append((received, f"event {event['event']} received by the server"))
    tasks = httpx.post(
        f"{api}/task_runs/filter", json={"task_runs": {"flow_run_id": {"any_": [run_id]}}}, timeout=10
    ).json()
    for task in tasks:
        start, end = _ts(task.get("start_time")), _ts(task.get("end_time"))
        if start is not None:
            points.append((start, f"task {task['name']} start"))
        if end is not None:
            points.append((end, f"task {task['name']} end ({task['state_type']})"))
    points.append((pushed, "tag answers in the registry (polled every 0.05 s)"))
    return sorted((t - accepted if t > 1e6 else t, label) for t, label in points)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=3)
    args = parser.parse_args()
    client = docker.from_env(timeout=300)
    ensure_base_image(client)
    print(f"load before: {Path('/proc/loadavg').read_text().strip()}")
    for module in ("prefect", "flows.preview_image", "previews_cli.app"):
        print(f"import {module}: {import_seconds(module):.2f} s (fresh process, best of 3)")
    with tempfile.TemporaryDirectory(prefix="previews-breakdown-") as tmp_name:
        tmp = Path(tmp_name)
        with demo.run_registry(tmp / "registry") as reg:
            registry = pipeline.RegistryAccess(reg.host, reg.username, reg.password)
            pipeline.push_base_layer(client, registry)
            remotes = tmp / "remotes"
            stack_project = pipeline.make_project(remotes, f"bench/stack-{os.getpid()}", 3)
            hand_project = pipeline.make_project(remotes, f"bench/hand-{os.getpid()}", 1)
            env = pipeline.pipeline_env(stack_project, registry, "", tmp / "unused")
            with running_stack(tmp / "stack", env) as (api, receiver_url, _receiver, _runner):
                send_and_watch(stack_project, registry, receiver_url, api)  # cold, not reported
                pipeline.by_hand(hand_project, registry, tmp / "hand")
                for sample in range(args.samples):
                    stack_project.one_line_change()
                    hand_project.one_line_change()
                    hand = pipeline.by_hand(hand_project, registry, tmp / "hand")
                    accepted, pushed, run_id = send_and_watch(stack_project, registry, receiver_url, api)
                    print(
                        f"\nwarm sample {sample + 1}: 202 -> tag {pushed - accepted:.2f} s, by hand "
                        f"{hand:.2f} s (+{pushed - accepted - hand:.2f} s); "
                        f"load {Path('/proc/loadavg').read_text().split()[0]}"
                    )
                    previous = 0.0
                    for at, label in timeline(api, run_id, accepted, pushed):
                        print(f"  {at:7.3f} s  (+{at - previous:6.3f})  {label}")
                        previous = at
    return 0


if __name__ == "__main__":
    sys.exit(main())
