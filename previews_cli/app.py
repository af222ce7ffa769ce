"""The ``previews`` command (argparse + rich): parses, then runs a flow, the receiver or the local stack.

Each module adds its commands with ``register(sub)`` (one line in :func:`parser`); they all get the global
options, the help sections and the exit codes of :mod:`previews_cli.common`::

    0 ok    1 the run failed    2 bad input or configuration    3 a required service unreachable

``previews build`` and ``previews cleanup`` run their flow once, in this process, against the Prefect API in
``PREFECT_API_URL`` (``previews build`` without it: a running ``previews up``'s server, else a temporary local
one started as the command starts, :mod:`previews.local.prefect_api`), showing each step as it starts and ends
(:mod:`previews_cli.progress`); ``--json`` prints one document with ``status`` and ``flow_run_id``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from importlib.metadata import version
from typing import Any

from previews.errors import PreviewsError
from previews.local import stack
from previews_cli import common, receiver, status
from previews_cli import pool as pool_cli
from previews_cli import reconcile as reconcile_cli
from previews_cli.common import EXIT_FAILED, EXIT_OK
from previews_cli.progress import run_progress

BUILD_ENV = (
    "registry",
    "registry_username",
    "registry_token",
    "image",
    "git_url_template",
    "git_token",
    "siblings",
    "dockerfile",
    "build_context",
    "build_args",
    "build_secrets",
    "docker_cli",
    "build_timeout",
    "push_timeout",
    "retries",
    "retry_delay",
    "github_token",
    "github_api_url",
    "github_report",
    "infra_repository",
    "ui_url",
    "credentials_block",
    "config_block",
    *common.PREFECT_ENV,
)
CLEANUP_ENV = (
    "registry",
    "registry_username",
    "registry_token",
    "registry_kind",
    "image",
    "cleanup_repository",
    "cleanup_grace_hours",
    "cleanup_keep_per_open_pr",
    "cleanup_ttl_days",
    "cleanup_deletes_per_minute",
    "protected_tags",
    "github_token",
    "retries",
    "ui_url",
    "credentials_block",
    "config_block",
    *common.PREFECT_ENV,
)


def _quiet_prefect(args: argparse.Namespace) -> None:
    """Keep Prefect's own console log off the terminal unless asked (the run's log is in the UI)."""
    if not (args.debug or args.verbose):
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


def _run_id(state: Any) -> str | None:
    run_id = state.state_details.flow_run_id
    return str(run_id) if run_id else None


def _failure(state: Any) -> BaseException:
    error = state.result(raise_on_failure=False)
    return error if isinstance(error, BaseException) else PreviewsError(state.message or "the run failed")


def _build_template() -> dict[str, Any]:
    from previews.core.outcome import PreviewResult

    return PreviewResult(status="failed", reason="").to_json() | {"reason": None}


def _build(args: argparse.Namespace) -> int:
    _quiet_prefect(args)
    from previews.core.names import parse_pr_number, parse_repository, parse_sha

    settings = common.settings()
    repository, number = parse_repository(args.repository), parse_pr_number(args.pr)
    sha = parse_sha(args.sha)
    args.template = lambda: (
        _build_template() | {"repository": repository, "pr_number": number, "head_sha": sha}
    )
    from previews.local.prefect_api import one_shot_api

    # First, before anything imports Prefect (its settings are fixed at import): the API this run uses.
    with one_shot_api() as api:  # a temporary server boots while the flow and Prefect are imported
        if api.process is None:  # one we did not start ourselves must answer
            common.require_prefect(settings)
        return _run_build(args, settings, (repository, number, sha), api.ready)


def _run_build(
    args: argparse.Namespace, settings: Any, pull: tuple[str, int, str], api_ready: Callable[[], None]
) -> int:
    from blocks import load_wiring
    from flows.preview_image import preview_image
    from previews.core.outcome import PreviewResult

    repository, number, sha = pull
    run = preview_image.over(partial(load_wiring, settings))
    api_ready()
    with run_progress(args, ui_url=settings.ui_url) as progress:
        state = run(repository=repository, pr_number=number, head_sha=sha, return_state=True)
    run_id = _run_id(state)
    if not state.is_completed():
        return common.fail(args, _failure(state), flow_run_id=run_id)
    result = state.result()
    assert isinstance(result, PreviewResult)
    fields: dict[str, Any] = result.to_json()
    fields.pop("flow_run_id", None)
    fields.pop("status", None)
    body = common.document(args, result.status, flow_run_id=run_id, **fields)
    said = result.reason.startswith(result.status)
    human = [result.reason if said else f"{result.status}: {result.reason}"]
    if result.image and result.digest:
        human.append(f"image: {result.image}@{result.digest}")
    if progress is not None and progress.url():
        human.append(f"flow run: {progress.url()}")
    return common.finish(args, body, human, EXIT_OK)


def _cleanup_template() -> dict[str, Any]:
    """Every field of :class:`CleanupResult`, empty: the shape of a cleanup that did not get that far."""
    from typing import get_origin

    from flows.preview_cleanup import CleanupResult

    empty: dict[object, Any] = {dict: {}, list: []}
    return {
        name: empty.get(get_origin(field.annotation)) for name, field in CleanupResult.model_fields.items()
    }


def _cleanup(args: argparse.Namespace) -> int:
    _quiet_prefect(args)
    settings = common.settings()
    common.require_prefect(settings)
    from blocks import load_wiring
    from flows.preview_cleanup import CleanupResult, preview_cleanup

    run = preview_cleanup.over(partial(load_wiring, settings))
    with run_progress(args, ui_url=settings.ui_url):
        state = run(dry_run=not args.apply, return_state=True)
    run_id = _run_id(state)
    if not state.is_completed():
        return common.fail(args, _failure(state), flow_run_id=run_id)
    result = state.result()
    assert isinstance(result, CleanupResult)
    failed = result.failed > 0
    outcome = "failed" if failed else "planned" if result.dry_run else "applied"
    reason = f"{result.failed} deletions failed" if failed else result.summary
    body = common.document(args, outcome, flow_run_id=run_id, **result.model_dump(), reason=reason)
    mode = (
        "dry run: nothing deleted" if result.dry_run else f"removed {result.removed}, failed {result.failed}"
    )
    human = [f"{result.image}: {result.tags} tags, {result.planned_removals} planned removals ({mode})"]
    human.append(
        f"  PR states from {result.repository or 'no repository'} ({result.repository_decided_by}); "
        f"{result.unknown_pr_states} unknown"
    )
    human += [f"  {count:6d}  {why}" for why, count in sorted(result.counts.items())]
    human += [f"  failed: {failure}" for failure in result.failures]
    return common.finish(args, body, human, EXIT_FAILED if failed else EXIT_OK)


def _register_flows(sub: Any) -> None:
    build = sub.add_parser(
        "build", help="build and push one PR's preview image now, in this process", env=BUILD_ENV
    )
    build.add_argument("--repository", required=True, help="GitHub repository, owner/name")
    build.add_argument("--pr", required=True, help="pull request number")
    build.add_argument("--sha", required=True, help="head commit SHA (full, or a prefix of the PR head)")
    build.set_defaults(handler=_build, template=_build_template)

    cleanup = sub.add_parser(
        "cleanup", help="plan or apply the removal of stale pr-* tags now", env=CLEANUP_ENV
    )
    mode = cleanup.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", dest="apply", action="store_false", help="only plan (default)")
    mode.add_argument("--apply", dest="apply", action="store_true", help="delete what the plan says")
    cleanup.set_defaults(handler=_cleanup, apply=False, template=_cleanup_template)


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``previews``."""
    root = common.CommandParser(
        prog="previews",
        description="Per-PR preview images, built by Prefect flows.",
        parents=[common.global_options(suppress=False)],
        epilog=common.EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("--version", action="version", version=f"%(prog)s {version('previews')}")
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in (_register_flows, status.register, receiver.register, stack.register):
        register(sub)
    reconcile_cli.register(sub)
    pool_cli.register(sub)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``previews`` console script."""
    return common.run_handler(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
