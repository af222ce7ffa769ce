"""The one retry layer: Prefect task retries, transient errors only, at least as late as the remote asked."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prefect.states import Failed

from flows.common import TransientOnly, retrying
from flows.preview_image import push_image
from previews.errors import AuthError, PrefectError, TransientGitHubError, TransientPrefectError
from previews.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def decide(
    error: BaseException, *, run_count: int = 1, delays: list[float] | None = None
) -> tuple[bool, list[float]]:
    slept: list[float] = []
    condition = TransientOnly(max_wait=60.0, sleep=slept.append)
    task = SimpleNamespace(retry_delay_seconds=delays if delays is not None else [1.0, 2.0])
    task_run = SimpleNamespace(run_count=run_count)
    return condition(task, task_run, Failed(data=error)), slept  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "run_count", "retried", "slept"),
    [
        (TransientPrefectError("503"), 1, True, []),  # the scheduled backoff is enough
        (TransientGitHubError("limited", retry_after=5.0), 1, True, [4.0]),  # waits the rest of 5 s
        (TransientGitHubError("limited", retry_after=5.0), 2, True, [3.0]),  # the second delay is 2 s
        (TransientGitHubError("limited", retry_after=0.1), 1, True, []),
        (TransientGitHubError("limited", retry_after=3600.0), 1, False, []),  # longer than it may wait
        (PrefectError("404"), 1, False, []),  # the supersede tasks no longer retry anything
        (AuthError("401"), 1, False, []),
        (RuntimeError("boom"), 1, False, []),
    ],
)
def test_transient_only(error: BaseException, run_count: int, retried: bool, slept: list[float]) -> None:
    assert decide(error, run_count=run_count) == (retried, slept)


def test_retrying_takes_count_backoff_and_condition_from_the_settings() -> None:
    task = retrying(push_image, Settings(retries=4, retry_delay=0.5))
    assert task.retries == 4
    assert task.retry_delay_seconds == [0.5, 1.0, 2.0, 4.0]
    assert isinstance(task.retry_condition_fn, TransientOnly)


def test_no_task_retries_without_the_transient_only_condition() -> None:
    """A task that declares retries also declares the condition; none retries any exception."""
    offenders = []
    for path in sorted((ROOT / "flows").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                if not (isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "task"):
                    continue
                options: dict[str, Any] = {k.arg: k.value for k in deco.keywords if k.arg}
                retries = options.get("retries")
                declares = retries is not None and not (
                    isinstance(retries, ast.Constant) and retries.value == 0
                )
                if declares and "retry_condition_fn" not in options:
                    offenders.append(f"{path.name}:{node.name}")
    assert offenders == []
