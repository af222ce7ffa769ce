"""``previews serve`` and ``previews outbox list|replay``: the receiver's part of the ``previews`` command."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

from previews.core.events import parse_delivery_id
from previews.settings import Settings
from previews.wiring import Wiring

if TYPE_CHECKING:
    from previews.ingress.outbox import Outbox


def _settings() -> Settings:
    """Settings from the environment, with ``PREFECT_API_URL`` from the active Prefect profile if unset."""
    settings = Settings()
    if settings.prefect_api_url is None:
        try:
            from prefect.settings import PREFECT_API_URL

            url = PREFECT_API_URL.value()
        except Exception:  # prefect missing or its profile unreadable: the forwarder's default applies
            url = None
        if url:
            settings = settings.model_copy(update={"prefect_api_url": str(url)})
    return settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from previews.ingress.app import require_secret
    from previews.ingress.forwarder import DEFAULT_API_URL
    from previews.redact import redact_url

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.insecure_no_signature:
        require_secret(Settings().webhook_secret)  # refuse before anything slower (checked again below)
    settings = _settings()
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
    return Wiring(Settings()).outbox()


def _list(args: argparse.Namespace) -> int:
    with _open_outbox() as outbox:
        entries = outbox.entries(state=args.state)
    for entry in entries:
        summary = entry.summary()
        if args.json:
            print(json.dumps(summary, sort_keys=True))
        else:
            error = f"  last_error={summary['last_error']}" if summary["last_error"] else ""
            print(
                f"{summary['delivery']}  {summary['state']:9}  {summary['event']}  "
                f"{summary['repository']}#{summary['number']}  attempts={summary['attempts']}{error}"
            )
    return 0


def _replay(args: argparse.Namespace) -> int:
    delivery = parse_delivery_id(args.delivery, field="DELIVERY_ID")
    with _open_outbox() as outbox:
        entry = outbox.replay(delivery)
    if entry is None:
        print(f"no delivery {delivery} in the outbox", file=sys.stderr)
        return 1
    print(json.dumps(entry.summary(), sort_keys=True))
    return 0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``serve`` and ``outbox list|replay`` to the ``previews`` command."""
    serve = subparsers.add_parser("serve", help="run the GitHub webhook receiver")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8787, help="port (default 8787)")
    serve.add_argument(
        "--insecure-no-signature",
        action="store_true",
        help="start without PREVIEWS_WEBHOOK_SECRET and accept unsigned deliveries (local experiments only)",
    )
    serve.set_defaults(handler=_serve)

    outbox = subparsers.add_parser("outbox", help="inspect and re-send webhook deliveries")
    actions = outbox.add_subparsers(dest="outbox_command", required=True)
    listing = actions.add_parser("list", help="list outbox entries, oldest first")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.add_argument("--state", choices=["pending", "delivered", "rejected"], help="only this state")
    listing.set_defaults(handler=_list)
    replay = actions.add_parser("replay", help="send a delivery's event to Prefect again")
    replay.add_argument("delivery", metavar="DELIVERY_ID")
    replay.set_defaults(handler=_replay)
