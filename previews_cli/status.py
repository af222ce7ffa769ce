"""``previews status --repository R [--pr N]``: what happened to a repository's pull requests, per PR.

Reads the Prefect API only (``PREFECT_API_URL``): each PR's newest preview-image runs, newest first, with the
commit, state and message, image and digest, step durations and who triggered it, and whether its preview
is live. Exit 3 when the Prefect API does not answer; 0 otherwise, also when no run matches.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from previews.core.history import PullHistory, RunRecord, pull_histories, read_summary
from previews.core.names import parse_pr_number, parse_repository
from previews.wiring import Wiring
from previews_cli import common
from previews_cli.common import EXIT_OK, InvalidInputError

IMAGE_FLOW, TEARDOWN_FLOW = "preview-image", "preview-teardown"


def _positive(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 1 to 10000")
    return int(text)


def collect(
    wiring: Wiring, repository: str, pr_number: int | None, *, per_pr: int, scan: int
) -> list[PullHistory]:
    """Read the runs, their summaries (for image, digest and liveness) and the shown runs' step durations."""
    with wiring.run_history() as history:
        records = history.runs(repository, pr_number, scan=scan)
        builds = [r for r in records if r.flow == IMAGE_FLOW]
        teardowns = [r for r in records if r.flow == TEARDOWN_FLOW]
        texts = history.summaries([r.flow_run_id for r in builds if r.completed])
        builds = [replace(r, summary=read_summary(texts.get(r.flow_run_id, ""))) for r in builds]
        pulls = pull_histories(builds, teardowns, per_pr=per_pr)
        times = history.durations([run.flow_run_id for pull in pulls for run in pull.runs])
    return [
        replace(pull, runs=[replace(r, durations_s=times.get(r.flow_run_id, {})) for r in pull.runs])
        for pull in pulls
    ]


def _clip(message: str | None, width: int = 90) -> str:
    text = (message or "-").removeprefix("Flow run encountered an exception: ")
    return text if len(text) <= width else f"{text[: width - 1]}…"


def _steps(run: RunRecord) -> str:
    return ", ".join(f"{step} {secs:.1f}s" for step, secs in run.durations_s.items()) or "-"


def _image(run: RunRecord) -> str:
    if run.summary.image and run.summary.digest:
        return f"{run.summary.image}@{run.summary.digest[:19]}"
    return run.summary.image or "-"


def _plain(repository: str, pulls: list[PullHistory]) -> list[str]:
    lines: list[str] = []
    for pull in pulls:
        live = "live" if pull.live.live else "not live"
        lines.append(f"{repository}#{pull.pr_number}: {live} ({pull.live.reason})")
        for run in pull.runs:
            lines.append(
                f"  {run.created:%Y-%m-%d %H:%M:%S}  {(run.head_sha or '?')[:12]}  {run.state:10}  "
                f"{run.trigger}  {run.name}  {run.flow_run_id}"
            )
            lines.append(f"      {run.message or '-'}")
            lines.append(f"      image: {_image(run)}   steps: {_steps(run)}")
    return lines


def _short_image(run: RunRecord) -> str:
    """``pr-42-d45dc181d884…@sha256:f850bda84977…``: the tag and digest, shortened for a table cell."""
    image, digest = run.summary.image, run.summary.digest
    if not image:
        return "-"
    tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else image
    tag = f"{tag[:19]}…" if len(tag) > 20 else tag
    return f"{tag}@{digest[:19]}…" if digest else tag


def _table(repository: str, pulls: list[PullHistory]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for pull in pulls:
        live = "[green]live[/green]" if pull.live.live else "[dim]not live[/dim]"
        table = Table(
            title=f"{repository}#{pull.pr_number}: {live} ({pull.live.reason})", title_justify="left"
        )
        for column in ("created (UTC)", "SHA", "state", "trigger", "image", "steps", "message"):
            table.add_column(column, overflow="fold")
        for run in pull.runs:
            colour = {"Completed": "green", "Failed": "red", "Crashed": "red"}.get(run.state, "yellow")
            table.add_row(
                f"{run.created:%Y-%m-%d %H:%M:%S}",
                (run.head_sha or "?")[:12],
                f"[{colour}]{run.state}[/{colour}]",
                str(run.trigger),
                _short_image(run),
                "\n".join(f"{step} {secs:.1f}s" for step, secs in run.durations_s.items()) or "-",
                _clip(run.message),
            )
        console.print(table)


def _status(args: argparse.Namespace) -> int:
    repository = parse_repository(args.repository, field="--repository")
    number = parse_pr_number(args.pr, field="--pr") if args.pr is not None else None
    settings = common.settings()
    if common.require_prefect(settings) is None:
        raise InvalidInputError(
            "PREFECT_API_URL", "not set; `previews status` reads the runs of a Prefect server"
        )
    pulls = collect(Wiring(settings), repository, number, per_pr=args.limit, scan=args.scan)
    body = common.document(
        args, "ok", repository=repository, pr_number=number, pull_requests=[p.to_json() for p in pulls]
    )
    if not pulls:
        which = f"#{number}" if number is not None else ""
        return common.finish(args, body, [f"no preview runs for {repository}{which}"], EXIT_OK)
    if not args.json and sys.stdout.isatty():
        _table(repository, pulls)
        return EXIT_OK
    return common.finish(args, body, _plain(repository, pulls), EXIT_OK)


def _template() -> dict[str, Any]:
    return {"repository": None, "pr_number": None, "pull_requests": []}


def register(sub: Any) -> None:
    """Add ``previews status`` to the CLI."""
    status = sub.add_parser(
        "status",
        help="per pull request: its recent preview runs and whether its preview is live (reads Prefect)",
        env=("ui_url", *common.PREFECT_ENV),
    )
    status.add_argument("--repository", required=True, help="GitHub repository, owner/name")
    status.add_argument("--pr", help="only this pull request number")
    status.add_argument("--limit", type=_positive, default=5, help="runs shown per pull request (default 5)")
    status.add_argument(
        "--scan",
        type=_positive,
        default=1000,
        help="newest runs read from Prefect to find them (default 1000)",
    )
    status.set_defaults(handler=_status, template=_template)
