"""``previews pool-limit LIMIT [--pool previews]``: a work pool's concurrency limit, as a hard cap.

Sets the pool's limit (what ``prefect work-pool set-concurrency-limit`` does) and points the pool's deployments
that have no limit of their own at one shared global concurrency limit of the same size, which Prefect takes
atomically on the way to Pending (:mod:`previews.pool`). Run it again after every ``prefect deploy``. Exit
status (the scheme of :mod:`previews_cli.common`): 0 done, 2 bad input (the limit, an unknown pool, no
``PREFECT_API_URL``), 3 the Prefect API did not answer.
"""

from __future__ import annotations

import argparse
from typing import Any

from previews.wiring import Wiring
from previews_cli import common
from previews_cli.common import EXIT_OK, InvalidInputError

# Nothing here imports Prefect before the command runs: one-shot commands choose the Prefect API first.
MAX_LIMIT = 1000


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 1 to {MAX_LIMIT}")
    return int(text)


def _pool_limit(args: argparse.Namespace) -> int:
    settings = common.settings()
    if common.require_prefect(settings) is None:
        raise InvalidInputError(
            "PREFECT_API_URL", "not set; `previews pool-limit` changes a work pool of a Prefect server"
        )
    with Wiring(settings).pool_limits() as limits:
        cap = limits.cap(args.pool, args.limit)
    body = common.document(args, "ok", **cap.to_json())
    human = [
        f"work pool {cap.pool!r}: at most {cap.limit} runs at once, held by the shared limit "
        f"{cap.concurrency_limit!r} (taken atomically on the way to Pending)",
        f"  capped: {', '.join(cap.capped) or 'no deployment yet (run this again after prefect deploy)'}",
    ]
    if cap.own_limit:
        human.append(f"  keep their own limit: {', '.join(cap.own_limit)}")
    return common.finish(args, body, human, EXIT_OK)


def _template() -> dict[str, Any]:
    return {
        "pool": None,
        "limit": None,
        "concurrency_limit": None,
        "capped_deployments": [],
        "deployments_with_their_own_limit": [],
    }


def register(sub: Any) -> None:
    """Add ``previews pool-limit`` to the CLI."""
    cmd = sub.add_parser(
        "pool-limit",
        help="cap a work pool's concurrent runs, atomically (the pool limit alone races between workers)",
        env=common.PREFECT_ENV,
    )
    cmd.add_argument("limit", type=_limit, help=f"runs of the pool at once, 1 to {MAX_LIMIT}")
    cmd.add_argument("--pool", default="previews", help="the work pool (default: previews)")
    cmd.set_defaults(handler=_pool_limit, template=_template)
