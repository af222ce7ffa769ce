"""The one benchmark command: every figure measured side by side in one run, printed as one table.

    python bench/run.py [--events 5] [--receiver-seconds 5] [--versions 100000]

It starts (and stops, by PID) its own registry, Prefect server, served deployments (with the real event
trigger, ``PREFECT_RUNNER_POLL_FREQUENCY=1``) and receiver, then measures:

1. pipeline vs the same work by hand (bench/pipeline.py), cold cache and warm (a one-line change):
   ``previews build`` as one process, and the running stack from the receiver's 202 to the pushed tag;
2. receiver deliveries/s and p50/p99 with the durable outbox (bench/receiver.py): fixed load and saturation;
3. event -> flow run Running, p50/p99 over ``--events`` deliveries (use ``--events 50`` for the full figure);
4. cleanup planner time for ``--versions`` image versions (bench/cleanup.py); reconcile plan time and GitHub
   requests for 1,000 open PRs over 10 repositories, beside the PRs that needed a run (bench/reconcile.py);
5. peak RSS of the receiver, the flow runner, one flow run (its subprocess) and ``previews build``;
6. BuildKit against the classic builder (warm one-line rebuild), and one-line rebuilds on cold, private
   engines with and without the registry cache (bench/buildkit.py; the private engines need root);
7. issue 17's table: each figure beside its baseline (the issue's "now", and where this run can measure it,
   the old way measured here too: one deletion at a time; ``--baseline-checkout`` runs an earlier
   checkout's planner) and its target, with the load average when it was measured: ``previews build``
   without a server (a temporary one) and with ``previews up``'s found through its state directory, new
   push -> older run Cancelled (bench/supersede.py), 2,000 deletions on the local registry.
8. with ``--burst``: a burst of pushes on SQLite/one server/one worker and on the production-shaped stack
   (bench/burst.py; several minutes per shape, so off by default).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import httpx

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import buildkit as buildkit_bench  # noqa: E402
import cleanup as cleanup_bench  # noqa: E402
import pipeline  # noqa: E402
import receiver as receiver_bench  # noqa: E402
import reconcile as reconcile_bench  # noqa: E402

from previews.local import demo  # noqa: E402
from previews.local.stack import Stack  # noqa: E402
from tests.support.services import ensure_base_image, free_port  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def wait_for(url: str, proc: subprocess.Popen[bytes], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a process for {url} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.25)
    raise SystemExit(f"{url} did not answer within {timeout:.0f}s")


def wait_for_deployments(api_url: str, runner: subprocess.Popen[bytes], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runner.poll() is not None:
            raise SystemExit(f"the flow runner exited with {runner.returncode}")
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
            names = {
                d["name"] for d in httpx.post(f"{api_url}/deployments/filter", json={}, timeout=5).json()
            }
            automations = httpx.post(f"{api_url}/automations/filter", json={}, timeout=5).json()
            if "preview-image" in names and len(automations) >= 1:
                return
        time.sleep(0.5)
    raise SystemExit(f"the deployments were not served within {timeout:.0f}s")


@contextmanager
def running_stack(
    state: Path, env: dict[str, str]
) -> Iterator[tuple[str, str, subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    """Prefect server, served deployments and receiver: yields (api, receiver url, receiver, runner)."""
    prefect_port, receiver_port = free_port(), free_port()
    api = f"http://127.0.0.1:{prefect_port}/api"
    env = {
        **env,
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREVIEWS_WEBHOOK_SECRET": pipeline.SECRET,
        "PREVIEWS_OUTBOX_PATH": str(state / "outbox.sqlite3"),
    }
    stack = Stack(state)
    bin_dir = Path(sys.executable).parent
    try:
        server, _ = stack.start(
            "prefect-server",
            [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            env,
        )
        wait_for(f"{api}/health", server, timeout=180)
        runner, _ = stack.start("flows", [sys.executable, "-m", "flows.serve"], env, grace=6, tier=1)
        receiver, _ = stack.start(
            "receiver",
            [
                str(bin_dir / "previews"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(receiver_port),
            ],
            env,
            grace=2,
            tier=1,
        )
        wait_for(f"http://127.0.0.1:{receiver_port}/healthz", receiver, timeout=60)
        wait_for_deployments(api, runner, timeout=120)
        yield api, f"http://127.0.0.1:{receiver_port}/webhooks/github", receiver, runner
    finally:
        stack.stop()


def receiver_figures(workdir: Path, seconds: float) -> tuple[list[receiver_bench.Result], float]:
    """Deliveries/s and latency at 50/s offered and at saturation (16 clients); the receiver's peak RSS."""
    workdir.mkdir(parents=True)
    body = receiver_bench._body()
    port = free_port()
    proc = receiver_bench._start_receiver(workdir, port, f"http://127.0.0.1:{free_port()}/api")
    url = f"http://127.0.0.1:{port}/webhooks/github"
    try:
        asyncio.run(receiver_bench.saturation(url, body, 4, 1.0))  # warm-up, not reported
        results = [
            asyncio.run(receiver_bench.fixed_rate(url, body, 200.0, seconds)),
            asyncio.run(receiver_bench.saturation(url, body, 16, seconds)),
        ]
    finally:
        proc.terminate()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return results, usage.ru_maxrss / 1024


def load() -> str:
    """The 1-minute load average now (the machine is shared: every figure says what it ran beside)."""
    return Path("/proc/loadavg").read_text().split()[0]


def baseline_planner_seconds(checkout: Path, versions: int) -> float | None:
    """An earlier checkout's planner on the same input (its own bench/cleanup.py), best of three."""
    script = checkout / "bench" / "cleanup.py"
    if not script.exists():
        return None
    out = subprocess.run(
        [sys.executable, str(script), "--skip-registry", "--versions", str(versions)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"best ([0-9.]+) s", out)
    return float(match.group(1)) if match else None


def supersede_seconds(rounds: int) -> tuple[float, str]:
    """New run created -> older run Cancelled, median of ``rounds`` (bench/supersede.py --supersede-only)."""
    out = subprocess.run(
        [sys.executable, str(HERE / "supersede.py"), "--supersede-only", "--rounds", str(rounds)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"median ([0-9.]+) s; rounds: (.*)$", out, re.M)
    if match is None:
        raise SystemExit(f"unexpected bench/supersede.py output: {out[-500:]}")
    return float(match.group(1)), match.group(2)


def one_shot_builds(
    project: pipeline.Project, env: dict[str, str], tmp: Path, api: str
) -> dict[str, tuple[float, str]]:
    """``previews build`` with no PREFECT_API_URL: no server (first call creates PREFECT_HOME's database,
    the second finds it), and with a running stack found through its state directory."""
    bare = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    empty, stack_state = tmp / "oneshot-empty-state", tmp / "oneshot-stack-state"
    empty.mkdir()
    stack_state.mkdir()
    (stack_state / "prefect-api-url").write_text(api + "\n")
    found: dict[str, tuple[float, str]] = {}
    cases = [
        ("no server, first call", {"PREVIEWS_STATE_DIR": str(empty), "PREFECT_HOME": str(tmp / "oneshot")}),
        ("no server", {"PREVIEWS_STATE_DIR": str(empty), "PREFECT_HOME": str(tmp / "oneshot")}),
        ("previews up running", {"PREVIEWS_STATE_DIR": str(stack_state), "PREFECT_HOME": str(tmp / "o2")}),
    ]
    for label, extra in cases:
        project.one_line_change()
        found[label] = (pipeline.previews_build(project, {**bare, **extra}, tmp).seconds, load())
    return found


def planner_seconds(versions: int) -> tuple[float, str]:
    """Best of three plans over ``versions`` versions, from bench/cleanup.py's own output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cleanup_bench.bench_plan(versions, 300)
    text = out.getvalue().strip()
    match = re.search(r"best ([0-9.]+) s", text)
    if match is None:
        raise SystemExit(f"unexpected bench/cleanup.py output: {text}")
    return float(match.group(1)), text


def main() -> int:
    """Run everything and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--events", type=int, default=5, help="event -> Running samples (50 for the full figure)"
    )
    parser.add_argument("--receiver-seconds", type=float, default=5.0, help="seconds per receiver scenario")
    parser.add_argument("--versions", type=int, default=100_000, help="versions for the cleanup planner")
    parser.add_argument("--supersede-rounds", type=int, default=2, help="0: skip bench/supersede.py")
    parser.add_argument(
        "--cleanup-tags", type=int, default=2000, help="tags of the registry cleanup (0: skip it)"
    )
    parser.add_argument(
        "--baseline-checkout",
        type=Path,
        default=None,
        help="an earlier checkout (e.g. of main) whose planner runs beside this one",
    )
    parser.add_argument(
        "--buildkit-samples",
        type=int,
        default=3,
        help="warm rebuilds per builder (0: skip bench/buildkit.py)",
    )
    parser.add_argument(
        "--burst",
        action="store_true",
        help="also run bench/burst.py (SQLite vs the production-shaped stack; slow, off by default)",
    )
    args = parser.parse_args()

    client = docker.from_env(timeout=300)
    ensure_base_image(client)
    rows: list[tuple[str, str, str, str, str]] = []
    notes: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="previews-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with demo.run_registry(tmp / "registry") as reg:
            registry = pipeline.RegistryAccess(reg.host, reg.username, reg.password)
            pipeline.push_base_layer(client, registry)  # every cold run then finds the same registry state
            remotes = tmp / "remotes"
            projects = {
                kind: pipeline.make_project(remotes, f"bench/{kind}-{os.getpid()}", pr)
                for pr, kind in enumerate(("hand", "cli", "stack"), start=1)
            }
            env = pipeline.pipeline_env(projects["cli"], registry, "", tmp / "unused")
            sampler = pipeline.MemorySampler()
            with (
                running_stack(tmp / "stack", env) as (api, receiver_url, receiver, runner),
                sampler.running(),
            ):
                sampler.watch("receiver (stack)", receiver.pid)
                sampler.watch("flow runner (flows.serve)", runner.pid)
                cli_env = {**env, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp / "cli-home")}
                timings: dict[str, dict[str, float]] = {}
                cli_rss: list[float] = []
                for phase in ("cold", "warm"):
                    if phase == "warm":
                        for project in projects.values():
                            project.one_line_change()
                    hand = pipeline.by_hand(projects["hand"], registry, tmp / "hand")
                    cli = pipeline.previews_build(projects["cli"], cli_env, tmp)
                    cli_rss.append(cli.peak_rss_mib)
                    via = pipeline.through_stack(
                        projects["stack"], registry, receiver_url=receiver_url, api_url=api, wait_for_tag=True
                    )
                    assert via.to_pushed is not None
                    timings[phase] = {"hand": hand, "cli": cli.seconds, "stack": via.to_pushed}
                one_shot = one_shot_builds(projects["cli"], cli_env, tmp, api)
                stack_load = load()
                latencies = []
                for _ in range(args.events):
                    run = pipeline.through_stack(
                        projects["stack"],
                        registry,
                        receiver_url=receiver_url,
                        api_url=api,
                        wait_for_tag=False,
                    )
                    latencies.append(run.to_running)
            peaks = dict(sampler.peaks_mib)
            for image in client.images.list():
                for ref in image.tags:
                    if ref.startswith(f"{reg.host}/"):
                        with contextlib.suppress(docker.errors.APIError):
                            client.images.remove(ref, force=True)

        for phase in ("cold", "warm"):
            t = timings[phase]
            for key, label in (("cli", "previews build (CLI)"), ("stack", "stack: 202 -> tag pushed")):
                rows.append(
                    (
                        f"pipeline {phase}: {label}",
                        f"{t[key]:.2f} s",
                        f"by hand {t['hand']:.2f} s",
                        f"{t[key] / t['hand']:.2f}x",
                        f"{t[key] - t['hand']:+.2f} s",
                    )
                )
        results, receiver_rss = receiver_figures(tmp / "receiver", args.receiver_seconds)
    for result in results:
        lat = sorted(result.latencies)
        rate = len(lat) / result.elapsed if result.elapsed else 0.0
        rows.append(
            (
                f"receiver {result.label} ({result.offered})",
                f"{rate:.1f} deliveries/s",
                f"p50 {pct(lat, 0.5) * 1000:.1f} ms" if lat else "-",
                f"p99 {pct(lat, 0.99) * 1000:.1f} ms" if lat else "-",
                f"{len(lat)} ok, {result.errors} errors",
            )
        )
    rows.append(
        (
            f"event -> flow run Running ({len(latencies)} events)",
            f"p50 {pct(latencies, 0.5):.2f} s",
            f"p99 {pct(latencies, 0.99):.2f} s",
            f"max {max(latencies):.2f} s",
            "served deployment, poll 1 s",
        )
    )
    if args.buildkit_samples > 0:
        rows.extend(buildkit_bench.measure(args.buildkit_samples))
    plan_s, plan_text = planner_seconds(args.versions)
    rows.append((f"cleanup planner, {args.versions} versions", f"{plan_s:.2f} s", "best of 3", "", ""))
    rows.extend(reconcile_bench.measure(1000, 10))
    notes.append(plan_text)
    for role, mib in sorted(peaks.items()):
        label = "one flow run (runner subprocess)" if role.endswith("child process") else role
        rows.append((f"peak RSS: {label}", f"{mib:.0f} MiB", "sampled /proc every 0.2 s", "", ""))
    rows.append(("peak RSS: receiver (bench load)", f"{receiver_rss:.0f} MiB", "wait4 ru_maxrss", "", ""))
    rows.append(("peak RSS: previews build", f"{max(cli_rss):.0f} MiB", "wait4 ru_maxrss", "", ""))

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    print(
        f"machine: {cpu}, {os.cpu_count()} CPUs (shared), Linux {platform.release()}, Python {platform.python_version()}"
    )
    print(f"total bench time {time.monotonic() - started:.0f} s")
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    header = ("measure", "value", "baseline / p50", "ratio / p99", "overhead / note")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    for note in notes:
        print(note)
    print_targets(timings, latencies, stack_load, one_shot, results, plan_s, args)
    if args.burst:
        print("burst (bench/burst.py):", flush=True)
        return subprocess.run([sys.executable, str(HERE / "burst.py")], check=False).returncode
    return 0


def print_targets(
    timings: dict[str, dict[str, float]],
    latencies: list[float],
    stack_load: str,
    one_shot: dict[str, tuple[float, str]],
    results: list[receiver_bench.Result],
    plan_s: float,
    args: argparse.Namespace,
) -> None:
    """Issue 17's table: this run's figure, its baseline and the target, and the load when measured."""
    warm = timings["warm"]
    rows = [
        (
            "warm rebuild, 202 -> tag pushed, minus by hand",
            f"{warm['stack'] - warm['hand']:+.2f} s ({warm['stack']:.2f} - {warm['hand']:.2f})",
            "+4.8 s",
            "<= +2.0 s",
            stack_load,
        ),
        (
            "delivery accepted -> run Running, p50 (poll 1 s)",
            f"{pct(latencies, 0.5):.2f} s",
            "3.04 s",
            "<= 1.5 s",
            stack_load,
        ),
    ]
    if args.supersede_rounds > 0:
        supersede, rounds = supersede_seconds(args.supersede_rounds)
        rows.append(
            ("new push -> older run Cancelled", f"{supersede:.2f} s ({rounds})", "6-7.5 s", "<= 3 s", load())
        )
    for label, (seconds, at) in one_shot.items():
        rows.append((f"previews build one-shot, {label}", f"{seconds:.2f} s", "~13 s", "<= 5 s", at))
    planner_baseline = "2.84 s"
    if args.baseline_checkout is not None:
        earlier = baseline_planner_seconds(args.baseline_checkout, args.versions)
        if earlier is not None:
            planner_baseline += f"; {earlier:.2f} s measured now ({args.baseline_checkout})"
    rows.append(
        (f"cleanup planner, {args.versions} versions", f"{plan_s:.2f} s", planner_baseline, "<= 1 s", load())
    )
    if args.cleanup_tags > 0:
        applied = cleanup_bench.bench_registry(args.cleanup_tags, 300, [1, 8])
        rows.append(
            (
                f"cleanup apply, {args.cleanup_tags} tags on the local registry (8 at once)",
                f"{applied[8]:.1f} s",
                f"74 s; one at a time now {applied[1]:.1f} s",
                "<= 15 s",
                load(),
            )
        )
    fixed = results[0]
    lat = sorted(fixed.latencies)
    rows.append(
        (
            f"receiver, {fixed.offered} for {args.receiver_seconds:.0f} s, durable outbox",
            f"p99 {pct(lat, 0.99) * 1000:.1f} ms, {fixed.errors} errors" if lat else "-",
            "not measured",
            "p99 <= 50 ms, 0 errors",
            "",
        )
    )
    header = ("figure (issue 17)", "this run", "baseline", "target", "load")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    print()
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


if __name__ == "__main__":
    sys.exit(main())
