"""``previews reconcile [--dry-run|--apply] [--json]``: compare GitHub's open PRs with the builds now.

Runs the preview-reconcile flow once in this process (against ``PREFECT_API_URL``). A dry run (the default)
only reports; ``--apply`` starts the missing runs through the deployments. Exit status: 0 done, 1 the run
failed, 2 bad configuration, 3 a required service (GitHub, Prefect) did not answer or refused to go on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from typing import Any

import httpx
from pydantic import ValidationError as SettingsError

from previews.errors import PreviewsError, TransientError, ValidationError

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_UNREACHABLE = 0, 1, 2, 3


def register(sub: Any) -> None:
    """Add ``reconcile`` to the ``previews`` subcommands."""
    cmd = sub.add_parser("reconcile", help="find PR heads a missed webhook left unbuilt (and closed PRs)")
    mode = cmd.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", dest="apply", action="store_false", help="only report (default)")
    mode.add_argument("--apply", dest="apply", action="store_true", help="start the runs it decided")
    cmd.add_argument("--json", action="store_true", help="print one JSON object")
    cmd.add_argument("--verbose", "-v", action="store_true", help="stream the run's log to the terminal")
    cmd.set_defaults(handler=run, apply=False)


def _say(args: argparse.Namespace, payload: dict[str, Any], human: str, code: int) -> int:
    if args.json:
        print(json.dumps(payload, sort_keys=True))
    else:
        print(human, file=sys.stdout if code == EXIT_OK else sys.stderr)
    return code


def _failed(args: argparse.Namespace, exc: BaseException, code: int) -> int:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    word = {EXIT_CONFIG: "invalid configuration", EXIT_UNREACHABLE: "unreachable"}.get(code, "failed")
    return _say(args, {"status": "failed", "reason": reason}, f"{word}: {reason}", code)


def _code(exc: BaseException) -> int:
    if isinstance(exc, ValidationError | SettingsError):
        return EXIT_CONFIG
    if isinstance(exc, TransientError | httpx.TransportError):
        return EXIT_UNREACHABLE
    return EXIT_FAILED


def run(args: argparse.Namespace) -> int:
    """The ``reconcile`` command."""
    if not (args.debug or args.verbose):
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    from blocks import load_wiring
    from flows.preview_reconcile import ReconcileReport, preview_reconcile
    from previews.settings import Settings
    from previews.wiring import Wiring

    try:
        settings = Settings()
        Wiring(settings).reconcile_github()[1].close()
    except (ValidationError, SettingsError) as exc:
        return _failed(args, exc, EXIT_CONFIG)
    try:
        with Wiring(settings).prefect_runs() as runs:
            runs.ping()
        flow = preview_reconcile.over(partial(load_wiring, settings))
        state = flow(dry_run=not args.apply, return_state=True)
    except (PreviewsError, httpx.TransportError) as exc:
        return _failed(args, exc, _code(exc))
    result = state.result(raise_on_failure=False)
    if isinstance(result, ReconcileReport):
        code = EXIT_OK if result.complete else EXIT_UNREACHABLE
        return _say(args, result.model_dump(), _human(result), code)
    if isinstance(result, BaseException):
        return _failed(args, result, _code(result))
    return _failed(args, PreviewsError(state.message or "the run failed"), EXIT_FAILED)


def _human(report: Any) -> str:
    lines = [report.summary]
    for d in report.decisions:
        if d["kind"] != "up-to-date":
            sha = (d["head_sha"] or "")[:12]
            run = f" -> {d['run']}" if d["run"] else ""
            lines.append(f"  {d['kind']:<13} {d['repository']}#{d['pr_number']} {sha:<12} {d['reason']}{run}")
    return "\n".join(lines)
