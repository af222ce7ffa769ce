"""Serve the deployments from this process (``python -m flows.serve``), as ``previews up`` does.

Production runs them on a Docker work pool from prefect.yaml instead; the triggers are the same.

Each flow run gets a process of its own, as Prefect's runner gives it, but not a cold one: Prefect starts it
with multiprocessing's ``spawn`` (a new interpreter that imports Prefect and the flow: 1.5-3 s of every run
on this machine, see bench/breakdown.py), and :func:`warm_start` has it forked instead from a ``forkserver``
that imported them once, at startup. The run's environment and settings are handed over exactly as before.
``PREVIEWS_RUNNER_START=spawn`` keeps Prefect's own way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import types
from collections.abc import Sequence
from typing import Any

from prefect.exceptions import TerminationSignal
from prefect.runner import Runner

from flows import preview_reconcile
from flows.preview_image import preview_image
from flows.preview_teardown import preview_teardown
from flows.triggers import image_trigger, rerun_trigger, teardown_trigger

WARM_MODULES = ("prefect.flow_engine", "flows.preview_image", "flows.preview_teardown")


class _WarmContext:
    """``multiprocessing`` as Prefect's ``run_flow_in_subprocess`` sees it: every context is the forkserver."""

    def __init__(self, context: multiprocessing.context.BaseContext) -> None:
        self._context = context

    def get_context(self, method: str | None = None) -> multiprocessing.context.BaseContext:
        return self._context


def warm_start(modules: Sequence[str] = WARM_MODULES, environ: dict[str, str] | None = None) -> bool:
    """Start flow-run processes from a forkserver that imported ``modules``; False when turned off.

    Prefect's runner starts a served flow's run through ``prefect.runner._starter_direct``'s module-level
    ``run_flow_in_subprocess`` (documented there as the point to patch); this puts a copy of Prefect's
    function there whose multiprocessing context is the warm forkserver, its code unchanged.
    """
    if (environ if environ is not None else os.environ).get("PREVIEWS_RUNNER_START") == "spawn":
        return False
    import prefect.flow_engine as flow_engine

    try:
        import prefect.runner._starter_direct as starter

        original: Any = getattr(starter, "run_flow_in_subprocess")  # noqa: B009 (private, may go)
    except (ImportError, AttributeError):  # another Prefect: its own way, which works, only slower
        logging.getLogger(__name__).warning("this Prefect has no direct starter to warm; runs start cold")
        return False
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(modules))
    multiprocessing.forkserver.ensure_running()  # imports the modules now, not during the first run
    if original is not flow_engine.run_flow_in_subprocess:
        return True  # already warm
    namespace = {**original.__globals__, "multiprocessing": _WarmContext(context)}
    warm = types.FunctionType(original.__code__, namespace, original.__name__, original.__defaults__)
    warm.__kwdefaults__ = original.__kwdefaults__
    warm.__doc__ = original.__doc__
    starter.run_flow_in_subprocess = warm  # type: ignore[attr-defined]
    return True


def main() -> None:
    """Register the deployments with their event triggers and run their flow runs locally."""
    warm = warm_start()
    # Prefect pauses served deployments on shutdown by default: an API call that retries for as long as the
    # server is unreachable, so a SIGTERM after the server stopped hung until a second SIGTERM. Leaving them
    # unpaused makes shutdown need no API call; serving them again updates them anyway.
    runner = Runner(limit=4, pause_on_shutdown=False)
    # add_flow (rather than serve(to_deployment(...))) keeps the flow object in the runner, so a run starts
    # from it in a forked process instead of a `python -m prefect.engine` that loads the entrypoint again.
    runner.add_flow(preview_image, name="preview-image", triggers=[image_trigger(), rerun_trigger()])
    runner.add_flow(preview_teardown, name="preview-teardown", triggers=[teardown_trigger()])
    runner.add_deployment(preview_reconcile.deployment(scheduled=_reconcile_configured()))  # scheduled: cold
    print(
        f"serving preview-image, preview-teardown and preview-reconcile ({'warm forkserver' if warm else 'spawn'})",
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt, TerminationSignal):
        asyncio.run(runner.start())


def _reconcile_configured() -> bool:
    """Schedule the reconcile only where it can work: repositories to reconcile and GitHub credentials."""
    from previews.errors import ValidationError
    from previews.settings import Settings

    try:
        settings = Settings()
        repositories = settings.reconcile_repository_names()
    except ValidationError:
        return False
    return bool(repositories) and bool(settings.github_token or settings.github_app_id)


if __name__ == "__main__":
    main()
