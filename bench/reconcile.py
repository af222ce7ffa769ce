"""Reconcile benchmark: GitHub requests, read time and plan time for 1,000 open PRs over 10 repositories.

    python bench/reconcile.py                      # 1,000 PRs over 10 repositories
    python bench/reconcile.py --prs 5000 --repos 50

The fake GitHub (tests/support/fake_github.py, a real HTTP server) holds the open PRs with a mix of what a
reconcile meets: most heads carry our terminal status, some none (a missed webhook), some a pending status
older than the stale limit (a run that died), a few a recent pending one, a few a run in flight; and per
repository one closed PR whose preview was never torn down. The reads go through the reconcile's own reader
(:class:`previews.github.pulls.PullReader` over :class:`GitHubClient`); the plan is the pure
:mod:`previews.core.reconcile` (the flow's plan-reconcile step), best of three. It prints the requests
GitHub was sent side by side with the number of PRs that needed a run.
"""

from __future__ import annotations

import argparse
import random
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402

from previews.core import reconcile  # noqa: E402
from previews.core.reconcile import Decision, FinishedRun, PreviewMark, RunIndex  # noqa: E402
from previews.core.supersede import RunRef  # noqa: E402
from previews.github.client import GitHubClient  # noqa: E402
from previews.github.pulls import PullReader  # noqa: E402
from tests.support.fake_github import FakeGitHub  # noqa: E402

CONTEXT = "previews/image"
STALE = timedelta(minutes=30)
Row = tuple[str, str, str, str, str]


def populate(
    github: FakeGitHub, prs: int, repos: int, now: datetime
) -> tuple[list[RunRef], list[FinishedRun], list[PreviewMark]]:
    """The open PRs with their statuses; returns the runs in flight and ended, and the previews of closed PRs."""
    rng = random.Random(14)
    in_flight: list[RunRef] = []
    finished: list[FinishedRun] = []
    previews: list[PreviewMark] = []
    for r in range(repos):
        repo = f"bench-{r}/app"
        for number in range(1, prs // repos + 1):
            sha = secrets.token_hex(20)
            github.add_pull(repo, number, head_sha=sha, labels=["preview"])
            roll = rng.random()
            if roll < 0.88:
                state, minutes = rng.choice(["success", "success", "success", "failure", "error"]), 5
                ref = RunRef(f"run-{r}-{number}", f"pr-{number}", now, repo, number, sha)
                finished.append(FinishedRun(ref, "COMPLETED" if state == "success" else "FAILED", state))
            elif roll < 0.90:
                in_flight.append(RunRef(f"run-{r}-{number}", f"pr-{number}", now, repo, number, sha))
                state, minutes = "pending", 1
            elif roll < 0.92:
                state, minutes = "pending", 90  # the run that posted it is gone
            elif roll < 0.93:
                state, minutes = "pending", 2  # a run that just ended, or will post soon
            else:
                continue  # a missed webhook: no status at all
            github.add_status(
                repo, sha, state=state, context=CONTEXT, updated_at=now - timedelta(minutes=minutes)
            )
        closed = prs // repos + 1
        github.add_pull(repo, closed, head_sha=secrets.token_hex(20), state="closed")
        previews.append(PreviewMark(repo, closed, now - timedelta(days=1)))
    return in_flight, finished, previews


def read_and_plan(
    github: FakeGitHub, repos: int, runs: RunIndex, previews: list[PreviewMark], now: datetime
) -> tuple[int, float, list[Decision], float]:
    """What the flow does between read-runs and start-runs: (requests, read seconds, decisions, plan best s)."""
    client = GitHubClient(base_url=github.url, token=SecretStr(github.token))
    reader = PullReader(client, context=CONTEXT, reserve=0)
    started = time.perf_counter()
    facts = []
    for r in range(repos):
        repo = f"bench-{r}/app"
        pulls = reader.open_pulls(repo)
        statuses = {
            p.head_sha: reader.our_status(repo, p.head_sha) for p in pulls if reconcile.needs_status(p, runs)
        }
        numbers = reconcile.teardown_candidates(repo, (p.number for p in pulls), previews, [])
        facts.append((repo, pulls, statuses, {n: reader.pull_state(repo, n) for n in numbers}))
    read_s = time.perf_counter() - started
    client.close()
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        decisions = plan(facts, runs, now)
        timings.append(time.perf_counter() - start)
    return reader.requests, read_s, decisions, min(timings)


def plan(facts: list[tuple[str, list, dict, dict]], runs: RunIndex, now: datetime) -> list[Decision]:  # type: ignore[type-arg]
    """The plan-reconcile step over what was read."""
    out = []
    for repo, pulls, statuses, closed in facts:
        out += [reconcile.decide_pull(p, statuses.get(p.head_sha), runs, now=now, stale=STALE) for p in pulls]
        out += [reconcile.decide_closed(repo, n, s, now=now, stale=STALE) for n, s in closed.items()]
    return out


def measure(prs: int = 1000, repos: int = 10) -> list[Row]:
    """The benchmark's rows (bench/run.py prints them in its table): with the ended runs Prefect keeps
    (the steady state), and without them (a first reconcile, or runs older than the look-back)."""
    now = datetime.now(UTC)
    rows: list[Row] = []
    with FakeGitHub() as github:
        in_flight, finished, previews = populate(github, prs, repos, now)
        for label, runs in (
            ("ended runs known", RunIndex(in_flight, finished)),
            ("no run history", RunIndex(in_flight)),
        ):
            requests, read_s, decisions, plan_s = read_and_plan(github, repos, runs, previews, now)
            rows += _rows(label, prs, repos, requests, read_s, decisions, plan_s)
    return rows


def _rows(
    label: str, prs: int, repos: int, requests: int, read_s: float, decisions: list[Decision], plan_s: float
) -> list[Row]:
    counts: dict[str, int] = {}
    for d in decisions:
        counts[d.kind] = counts.get(d.kind, 0) + 1
    needed = sum(1 for d in decisions if d.start is not None)
    detail = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    return [
        (
            f"reconcile plan, {prs} PRs / {repos} repos ({label})",
            f"{plan_s * 1000:.1f} ms",
            "best of 3",
            "",
            detail,
        ),
        (
            f"reconcile GitHub requests ({label})",
            f"{requests} requests",
            f"{needed} PRs needed a run",
            f"{requests / max(needed, 1):.1f} per needed run",
            f"read {read_s:.1f} s (fake GitHub over HTTP)",
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prs", type=int, default=1000, help="open PRs in all (default 1000)")
    parser.add_argument("--repos", type=int, default=10, help="repositories (default 10)")
    args = parser.parse_args()
    for row in measure(args.prs, args.repos):
        print(" | ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
