"""``previews serve`` and ``previews outbox list|replay``: the receiver's part of the ``previews`` command.

``outbox list`` and ``outbox replay`` only open an outbox that exists: a missing one is a configuration
error (exit 2, naming ``PREVIEWS_OUTBOX_PATH``), and nothing is created by reading.
"""

from __future__ import annotations

import argparse
import gc
import logging
from typing import TYPE_CHECKING, Any

from previews.core.events import parse_delivery_id
from previews.settings import Settings
from previews.wiring import Wiring
from previews_cli import common
from previews_cli.common import EXIT_OK, InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from previews.ingress.outbox import Outbox, OutboxEntry

SERVE_ENV = (
    "webhook_secret",
    "allowed_repositories",
    "outbox_path",
    "max_body_bytes",
    "max_concurrent_deliveries",
    "body_read_timeout",
    "outbox_retention_hours",
    "forwarder_poll_seconds",
    "forwarder_max_backoff",
    "forwarder_batch_size",
    *common.PREFECT_ENV,
)


def _settings() -> Settings:
    """Settings from the environment, with ``PREFECT_API_URL`` from the active Prefect profile if unset."""
    settings = common.settings()
    if settings.prefect_api_url is None:
        url = common.prefect_api_url(settings)
        if url:
            settings = settings.model_copy(update={"prefect_api_url": url})
    return settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from previews.ingress.app import require_secret
    from previews.ingress.forwarder import DEFAULT_API_URL
    from previews.redact import redact_url

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings()
    if not args.insecure_no_signature:
        require_secret(settings.webhook_secret)  # refuse before anything slower (checked again below)
    app = Wiring(settings).receiver_app(allow_unsigned=args.insecure_no_signature)
    outbox = app.state.outbox
    print(
        f"previews receiver on http://{args.host}:{args.port}/webhooks/github "
        f"(outbox {outbox.path}, Prefect {redact_url(settings.prefect_api_url or DEFAULT_API_URL)})",
        flush=True,
    )
    # Everything imported so far lives as long as the process: keep it out of the cyclic GC's full
    # collections, which otherwise walk it all (50-250 ms here) in the middle of requests (issue 17).
    gc.freeze()
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)
    return 0


def _open_outbox() -> Outbox:
    """The existing outbox; a missing file is refused, never created."""
    settings = common.settings()
    path = settings.outbox_path
    if not path.is_file():
        raise InvalidInputError(
            "PREVIEWS_OUTBOX_PATH",
            f"no outbox at {path.resolve()} (the receiver creates it on its first delivery; "
            "run this where `previews serve` runs or set PREVIEWS_OUTBOX_PATH)",
        )
    return Wiring(settings).outbox()


def _line(entry: OutboxEntry) -> str:
    summary = entry.summary()
    error = f"  last_error={summary['last_error']}" if summary["last_error"] else ""
    return (
        f"{summary['delivery']}  {summary['state']:9}  {summary['event']}  "
        f"{summary['repository']}#{summary['number']}  attempts={summary['attempts']}{error}"
    )


def _list(args: argparse.Namespace) -> int:
    with _open_outbox() as outbox:
        entries = outbox.entries(state=args.state)
        path = str(outbox.path)
    body = common.document(args, "ok", outbox=path, entries=[e.summary() for e in entries])
    human = [_line(entry) for entry in entries] or [f"no entries in {path}"]
    return common.finish(args, body, human, EXIT_OK)


def _replay(args: argparse.Namespace) -> int:
    delivery = parse_delivery_id(args.delivery, field="DELIVERY_ID")
    with _open_outbox() as outbox:
        entry = outbox.replay(delivery)
        path = str(outbox.path)
    if entry is None:
        return common.fail(args, NotFoundError(f"no delivery {delivery} in the outbox {path}"))
    body = common.document(args, "replayed", outbox=path, entry=entry.summary())
    human = [f"replayed: {_line(entry)}  event_id={entry.summary()['event_id']}"]
    return common.finish(args, body, human, EXIT_OK)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``serve`` and ``outbox list|replay`` to the ``previews`` command."""
    serve = subparsers.add_parser("serve", help="run the GitHub webhook receiver", env=SERVE_ENV)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8787, help="port (default 8787)")
    serve.add_argument(
        "--insecure-no-signature",
        action="store_true",
        help="start without PREVIEWS_WEBHOOK_SECRET and accept unsigned deliveries (local experiments only)",
    )
    serve.set_defaults(handler=_serve)

    outbox = subparsers.add_parser(
        "outbox", help="inspect and re-send webhook deliveries", env=("outbox_path",)
    )
    actions = outbox.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list outbox entries, oldest first", env=("outbox_path",))
    listing.add_argument("--state", choices=["pending", "delivered", "rejected"], help="only this state")
    listing.set_defaults(handler=_list, template=lambda: {"outbox": None, "entries": []})
    replay = actions.add_parser(
        "replay", help="send a delivery's event to Prefect again", env=("outbox_path",)
    )
    replay.add_argument("delivery", metavar="DELIVERY_ID")
    replay.set_defaults(handler=_replay, template=lambda: {"outbox": None, "entry": None})
