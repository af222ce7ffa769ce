"""The ``previews`` command (argparse): parses, then runs a flow, the receiver or the local stack.

``previews build`` runs the preview-image flow once, in this process, against the Prefect API in
``PREFECT_API_URL`` (or a temporary local one). Exit status: 0 pushed or skipped, 2 invalid input, 1 failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from previews.errors import PreviewsError, ValidationError
from previews.local import stack
from previews_cli import receiver
from previews_cli import reconcile as reconcile_cli

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _build(args: argparse.Namespace) -> int:
    from previews.core.names import parse_pr_number, parse_repository, parse_sha
    from previews.settings import Settings

    try:
        settings = Settings()
        parse_repository(args.repository)
        parse_pr_number(args.pr)
        parse_sha(args.sha)
    except (ValidationError, ValueError) as invalid_input:
        return _report_invalid(args, invalid_input)

    if not (args.debug or args.verbose):
        # The run's full log (build output, tracebacks) is in the Prefect UI; the terminal gets one sentence.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")

    from blocks import load_wiring
    from flows.preview_image import preview_image
    from previews.core.outcome import PreviewResult

    run = preview_image.over(partial(load_wiring, settings))
    state = run(repository=args.repository, pr_number=int(args.pr), head_sha=args.sha, return_state=True)
    run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    if state.is_completed():
        result = state.result()
        assert isinstance(result, PreviewResult)
        _print_result(args, result.to_json(), human=f"{result.status}: {result.reason}")
        return EXIT_OK
    error = state.result(raise_on_failure=False)
    exc = error if isinstance(error, BaseException) else PreviewsError(state.message or "the run failed")
    if args.debug and isinstance(exc, BaseException):
        traceback.print_exception(exc)
    invalid = isinstance(exc, ValidationError)
    payload: dict[str, Any] = {
        "status": "failed",
        "image": None,
        "digest": None,
        "reason": _one_line(exc),
        "error": type(exc).__name__,
        "flow_run_id": run_id,
    }
    _print_result(args, payload, human=f"failed: {_one_line(exc)}", stream=sys.stderr)
    return EXIT_INVALID if invalid else EXIT_FAILED


def _cleanup(args: argparse.Namespace) -> int:
    if not (args.debug or args.verbose):
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    from blocks import load_wiring
    from flows.preview_cleanup import CleanupResult, preview_cleanup
    from previews.settings import Settings

    run = preview_cleanup.over(partial(load_wiring, Settings()))
    state = run(dry_run=not args.apply, return_state=True)
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        reason = (str(error).strip().splitlines() or [state.message or "the run failed"])[0]
        if args.json:
            print(json.dumps({"status": "failed", "reason": reason}))
        else:
            print(f"failed: {reason}")
        return 1
    result = state.result()
    assert isinstance(result, CleanupResult)
    if args.json:
        print(json.dumps(result.model_dump(), sort_keys=True))
        return 0
    mode = (
        "dry run: nothing deleted" if result.dry_run else f"removed {result.removed}, failed {result.failed}"
    )
    print(f"{result.image}: {result.tags} tags, {result.planned_removals} planned removals ({mode})")
    for reason, count in sorted(result.counts.items()):
        print(f"  {count:6d}  {reason}")
    for failure in result.failures:
        print(f"  failed: {failure}")
    return 0 if result.failed == 0 else 1


def _report_invalid(args: argparse.Namespace, exc: Exception) -> int:
    payload = {
        "status": "failed",
        "image": None,
        "digest": None,
        "reason": _one_line(exc),
        "flow_run_id": None,
    }
    _print_result(args, payload, human=f"invalid input: {_one_line(exc)}", stream=sys.stderr)
    return EXIT_INVALID


def _print_result(
    args: argparse.Namespace, payload: dict[str, Any], *, human: str, stream: Any = None
) -> None:
    if args.json:
        print(json.dumps(payload, sort_keys=True))
    else:
        print(human, file=stream or sys.stdout)


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``previews``."""
    root = argparse.ArgumentParser(
        prog="previews", description="Per-PR preview images, built by Prefect flows."
    )
    root.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = root.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="build and push one PR's preview image now, in this process")
    build.add_argument("--repository", required=True, help="GitHub repository, owner/name")
    build.add_argument("--pr", required=True, help="pull request number")
    build.add_argument("--sha", required=True, help="head commit SHA (full, or a prefix of the PR head)")
    build.add_argument("--json", action="store_true", help="print one JSON object")
    build.add_argument("--verbose", "-v", action="store_true", help="stream the run's log to the terminal")
    build.set_defaults(handler=_build)

    cleanup = sub.add_parser("cleanup", help="plan or apply the removal of stale pr-* tags now")
    mode = cleanup.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", dest="apply", action="store_false", help="only plan (default)")
    mode.add_argument("--apply", dest="apply", action="store_true", help="delete what the plan says")
    cleanup.add_argument("--json", action="store_true", help="print one JSON object")
    cleanup.add_argument("--verbose", "-v", action="store_true", help="stream the run's log to the terminal")
    cleanup.set_defaults(handler=_cleanup, apply=False)

    for register in (receiver.register, stack.register):
        register(sub)
    reconcile_cli.register(sub)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``previews`` console script."""
    args = parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except ValidationError as exc:
        if args.debug:
            raise
        print(f"invalid input: {_one_line(exc)}", file=sys.stderr)
        return EXIT_INVALID
    except PreviewsError as exc:
        if args.debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
