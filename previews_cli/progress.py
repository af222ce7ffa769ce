"""Each step of a flow run in this process, as it starts and ends: ``with run_progress(args): flow(...)``.

Prefect's run loggers already say when a task run is created (DEBUG) and when it finishes (INFO); a handler
on them turns that into progress lines, with no polling and no lag. On a terminal (stderr) the lines are
drawn by rich with a spinner on the running step; otherwise they are plain lines; with ``--json`` nothing.
Only this handler sees the DEBUG records it enables: every other handler on the way keeps its old level.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.status import Status

TASK_RUNS, FLOW_RUNS = "prefect.task_runs", "prefect.flow_runs"


class Reporter:
    """Where the progress goes: rich on a terminal, plain lines elsewhere."""

    def __init__(self, *, terminal: bool, spinner: bool = True) -> None:
        self.terminal = terminal
        self.console = Console(stderr=True, highlight=False) if terminal else None
        self.spinner = spinner  # off while Prefect's own log also streams to the terminal
        self.status: Status | None = None

    def line(self, text: str, *, styled: str | None = None) -> None:
        if self.console is not None:
            self.console.print(styled or text)
        else:
            print(text, file=sys.stderr, flush=True)

    def run_started(self, name: str, url: str | None) -> None:
        where = f": {url}" if url else " (no UI address: a temporary Prefect server, or set PREVIEWS_UI_URL)"
        self.line(f"flow run {name}{where}", styled=f"[bold]flow run {name}[/bold]{where}")

    def step_started(self, step: str, running: list[str]) -> None:
        if self.console is None or not self.spinner:
            self.line(f"step {step}: started", styled=f"[dim]▸ {step}[/dim]")
            return
        text = f"running {', '.join(running)} ..."
        if self.status is None:
            self.status = self.console.status(text)
            self.status.start()
        else:
            self.status.update(text)

    def step_ended(self, step: str, state: str, seconds: float | None, running: list[str]) -> None:
        took = f" in {seconds:.2f}s" if seconds is not None else ""
        ok = state == "Completed"
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        self.line(f"step {step}: {state}{took}", styled=f"{mark} {step} [dim]{state}{took}[/dim]")
        if self.status is not None:
            if running:
                self.status.update(f"running {', '.join(running)} ...")
            else:
                self.status.stop()
                self.status = None

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


class RunProgress(logging.Handler):
    """Reads Prefect's run-log records: the flow run's start (and URL), each task run's start and end."""

    def __init__(self, reporter: Reporter, *, ui_url: str | None = None) -> None:
        super().__init__(logging.DEBUG)
        self.reporter = reporter
        self.ui_url = ui_url
        self.flow_run_id: str | None = None
        self._started: dict[str, tuple[str, float]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._read(record)
        except Exception:  # progress must never break the run
            self.handleError(record)

    def _read(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name == FLOW_RUNS and message.startswith("Beginning flow run"):
            if self.flow_run_id is None:
                self.flow_run_id = str(getattr(record, "flow_run_id", "") or "") or None
                self.reporter.run_started(str(getattr(record, "flow_run_name", "?")), self.url())
            return
        if record.name != TASK_RUNS:
            return
        run_id = str(getattr(record, "task_run_id", ""))
        step = str(getattr(record, "task_name", "") or getattr(record, "task_run_name", "?"))
        if message.startswith("Created task run"):
            self._started[run_id] = (step, record.created)
            self.reporter.step_started(step, self.running())
        elif message.startswith("Finished in state"):
            began = self._started.pop(run_id, None)
            seconds = record.created - began[1] if began else None
            state = message.removeprefix("Finished in state ").split("(")[0].strip()
            self.reporter.step_ended(step, state, seconds, self.running())

    def running(self) -> list[str]:
        """The steps started and not yet finished, in start order."""
        return [step for step, _ in self._started.values()]

    def url(self) -> str | None:
        """The flow run's page in the Prefect UI (``PREVIEWS_UI_URL`` wins over Prefect's own)."""
        if self.flow_run_id is None:
            return None
        if self.ui_url:
            return f"{self.ui_url.rstrip('/')}/runs/flow-run/{self.flow_run_id}"
        from prefect.utilities.urls import url_for

        return url_for("flow-run", obj_id=self.flow_run_id)


class _KeepLevel(logging.Filter):
    """Lets a handler see only the records it saw before the progress lowered a logger's level."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


def _handlers_on_the_way(logger: logging.Logger) -> list[logging.Handler]:
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found += current.handlers
        current = current.parent if current.propagate else None
    return found


@contextmanager
def run_progress(args: argparse.Namespace, *, ui_url: str | None = None) -> Iterator[RunProgress | None]:
    """Show the progress of the flow runs started inside (nothing with ``--json``); yields the handler."""
    if getattr(args, "json", False):
        yield None
        return
    streaming = bool(getattr(args, "verbose", False) or getattr(args, "debug", False))
    handler = RunProgress(Reporter(terminal=sys.stderr.isatty(), spinner=not streaming), ui_url=ui_url)
    task_log = logging.getLogger(TASK_RUNS)
    flow_log = logging.getLogger(FLOW_RUNS)
    before = task_log.level
    keep = _KeepLevel(task_log.getEffectiveLevel())
    filtered = _handlers_on_the_way(task_log)
    for other in filtered:
        other.addFilter(keep)
    task_log.setLevel(logging.DEBUG)
    task_log.addHandler(handler)
    flow_log.addHandler(handler)
    try:
        yield handler
    finally:
        flow_log.removeHandler(handler)
        task_log.removeHandler(handler)
        task_log.setLevel(before)
        for other in filtered:
            other.removeFilter(keep)
        handler.reporter.close()
