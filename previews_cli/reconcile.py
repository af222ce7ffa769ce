"""``previews reconcile [--dry-run|--apply]``: recover stranded runs, compare GitHub's open PRs with the builds.

Runs the preview-reconcile flow once in this process (against ``PREFECT_API_URL``). A dry run (the default)
only reports; ``--apply`` puts the stranded runs (Pending with no container for longer than
``PREVIEWS_STRANDED_PENDING_SECONDS``) back to Scheduled and starts the missing runs through the deployments.
The stranded runs need only Prefect: without repositories or GitHub credentials they are still recovered,
and the command then exits 2 naming the missing setting. Exit status (the scheme of
:mod:`previews_cli.common`): 0 done, 1 the run failed, 2 bad configuration, 3 a required service (GitHub,
Prefect) did not answer or refused to go on.
"""

from __future__ import annotations

import argparse
import os
from functools import partial
from typing import Any

from previews_cli import common
from previews_cli.common import EXIT_INVALID, EXIT_OK, EXIT_UNREACHABLE
from previews_cli.progress import run_progress

RECONCILE_ENV = (
    "reconcile_repositories",
    "allowed_repositories",
    "reconcile_stale_minutes",
    "reconcile_image_deployment",
    "reconcile_teardown_deployment",
    "stranded_pending_seconds",
    "github_token",
    "github_api_url",
    "github_report",
    "cleanup_ttl_days",
    "ui_url",
    "credentials_block",
    "config_block",
    *common.PREFECT_ENV,
)


def register(sub: Any) -> None:
    """Add ``reconcile`` to the ``previews`` subcommands."""
    cmd = sub.add_parser(
        "reconcile",
        help="reschedule runs a dead worker left Pending; find PR heads a missed webhook left unbuilt "
        "(and closed PRs)",
        env=RECONCILE_ENV,
    )
    mode = cmd.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", dest="apply", action="store_false", help="only report (default)")
    mode.add_argument(
        "--apply",
        dest="apply",
        action="store_true",
        help="reschedule stranded runs and start the runs it decided",
    )
    cmd.set_defaults(handler=run, apply=False, template=_template)


def _template() -> dict[str, Any]:
    """Every field of the report, empty: the shape of a reconcile that did not get that far."""
    from typing import get_origin

    from flows.preview_reconcile import ReconcileReport

    empty: dict[object, Any] = {dict: {}, list: []}
    return {
        name: empty.get(get_origin(field.annotation)) for name, field in ReconcileReport.model_fields.items()
    }


def run(args: argparse.Namespace) -> int:
    """The ``reconcile`` command."""
    if not (args.debug or args.verbose):
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    from blocks import load_wiring
    from flows.preview_reconcile import ReconcileReport, preview_reconcile
    from previews.errors import PreviewsError
    from previews.wiring import Wiring

    # No repository or GitHub credentials: the flow recovers the stranded runs, then stops naming the setting.
    settings = common.settings()
    if common.require_prefect(settings) is None:
        raise common.InvalidInputError(
            "PREFECT_API_URL",
            "not set; `previews reconcile` compares GitHub with the runs of a Prefect server "
            "(the one the deployments live on)",
        )
    with Wiring(settings).prefect_runs() as runs:
        runs.ping()
    flow = preview_reconcile.over(partial(load_wiring, settings))
    with run_progress(args, ui_url=settings.ui_url):
        state = flow(dry_run=not args.apply, return_state=True)
    run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    result = state.result(raise_on_failure=False)
    if not isinstance(result, ReconcileReport):
        error = result if isinstance(result, BaseException) else PreviewsError(state.message or "failed")
        return common.fail(args, error, flow_run_id=run_id)
    outcome = ("planned" if result.dry_run else "applied") if result.complete else "stopped"
    fields = result.model_dump() | {"reason": result.reason or result.summary}
    body = common.document(args, outcome, flow_run_id=run_id, **fields)
    return common.finish(args, body, _human(result), _exit_code(result))


def _exit_code(report: Any) -> int:
    """0 complete, 2 stopped by configuration (no repository, no GitHub credentials), 3 stopped by a service."""
    if report.complete:
        return EXIT_OK
    return EXIT_INVALID if report.stopped_by == "config" else EXIT_UNREACHABLE


def _human(report: Any) -> list[str]:
    lines = [report.summary]
    for s in report.stranded:
        lines.append(
            f"  {'stranded':<13} {s['flow']} {s['run_name']} ({s['run_id']}) {s['message']} -> {s['answer']}"
        )
    for d in report.decisions:
        if d["kind"] != "up-to-date":
            sha = (d["head_sha"] or "")[:12]
            started = f" -> {d['run']}" if d["run"] else ""
            lines.append(
                f"  {d['kind']:<13} {d['repository']}#{d['pr_number']} {sha:<12} {d['reason']}{started}"
            )
    return lines
