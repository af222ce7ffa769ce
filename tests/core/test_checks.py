"""Where a run reports (PREVIEWS_GITHUB_REPORT) and what its check run says, pure."""

from __future__ import annotations

import pytest

from previews.core import checks, status
from previews.core.checks import ReportMode, RunDetail, report_mode
from previews.core.outcome import PreviewResult
from previews.errors import ValidationError


@pytest.mark.parametrize(
    ("value", "has_app", "mode"),
    [
        (None, False, ReportMode.STATUS),
        (None, True, ReportMode.BOTH),
        ("", True, ReportMode.BOTH),
        ("status", True, ReportMode.STATUS),
        ("status", False, ReportMode.STATUS),
        ("check", True, ReportMode.CHECK),
        (" Both ", True, ReportMode.BOTH),
    ],
)
def test_report_mode(value: str | None, has_app: bool, mode: ReportMode) -> None:
    assert report_mode(value, has_app=has_app) is mode


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("check", "needs a GitHub App"),
        ("both", "needs a GitHub App"),
        ("checks", "is not one of status, check, both"),
    ],
)
def test_a_bad_report_mode_names_the_variable(value: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        report_mode(value, has_app=False)
    assert info.value.field == "PREVIEWS_GITHUB_REPORT"
    assert message in str(info.value)


def test_a_reused_image_says_so_and_table_cells_stay_cells() -> None:
    result = PreviewResult(
        status="pushed",
        reason="already published",
        image="r/i:pr-1-a",
        digest="sha256:1",
        durations_s={"check|published": 0.1},
    )
    summary = checks.final_output(
        status.pushed("r/i:pr-1-a"), RunDetail(result=result), "https://ui/x"
    ).summary
    assert "reused, not rebuilt" in summary
    assert "| check\\|published | 0.10 |" in summary
    assert summary.endswith("[Flow run in Prefect](https://ui/x)")


def test_the_summary_fits_githubs_limit_and_a_fence_in_the_log_cannot_end_the_block() -> None:
    failure = checks.failed_step("build", RuntimeError("x" * 100_000 + "\n```\n# heading"))
    assert all(len(line) <= checks.TAIL_LINE_CHARS for line in failure.log_tail)
    summary = checks.final_output(status.failed("boom"), RunDetail(failure=failure), None).summary
    assert len(summary) <= checks.MAX_SUMMARY
    assert summary.count("```") == 2
