"""Who triggered a run, what its summary says, and whether a PR's preview is live (previews.core.history)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from previews.core.history import (
    RunRecord,
    Summary,
    Trigger,
    liveness,
    pull_histories,
    read_summary,
    trigger_of,
)
from previews.core.outcome import NotifyResult, PreviewResult, summary_markdown

GUID = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("delivery", "creator", "deployment", "expected"),
    [
        (GUID, None, True, Trigger("event", GUID)),
        ("reconcile:0123456789abcdef", None, True, Trigger("reconcile", "0123456789abcdef")),
        (f"rerequest:{GUID}", None, True, Trigger("rerequest", GUID)),
        (None, ("USER", "ada"), True, Trigger("ui", "ada")),
        ("", None, True, Trigger("ui")),
        (
            None,
            ("AUTOMATION", "preview-image on PR events"),
            True,
            Trigger("automation", "preview-image on PR events"),
        ),
        (None, None, False, Trigger("cli")),
        ("d-123", None, False, Trigger("event", "d-123")),
    ],
)
def test_trigger_of(
    delivery: str | None, creator: tuple[str, str] | None, deployment: bool, expected: Trigger
) -> None:
    kind, name = creator or (None, None)
    got = trigger_of(delivery, created_by_type=kind, created_by_name=name, from_deployment=deployment)
    assert got == expected


def test_read_summary_reads_what_summary_markdown_writes() -> None:
    image = "ghcr.io/acme/app:pr-5-" + "a" * 40
    notify = NotifyResult(sent=True, target="acme/infra", reason=f"sent preview-create for {image} via x")
    result = PreviewResult(
        status="pushed",
        reason="pushed",
        repository="acme/app",
        pr_number=5,
        head_sha="a" * 40,
        image=image,
        digest="sha256:" + "b" * 64,
        durations_s={"build": 1.5},
        notify=notify,
    )
    summary = read_summary(summary_markdown(result))
    assert summary == Summary(image=image, digest="sha256:" + "b" * 64, infra=notify.reason)
    assert summary.dispatched
    skipped = read_summary(summary_markdown(PreviewResult(status="skipped", reason="docs-only")))
    assert skipped == Summary()
    assert not skipped.dispatched


def record(flow: str, minutes: int, *, state: str = "Completed", sent: bool = True, pr: int = 5) -> RunRecord:
    infra = "sent preview-create for x" if sent else "skipped: no infra target"
    return RunRecord(
        flow_run_id=f"{flow}-{minutes}",
        flow=flow,
        name=f"{flow}-{minutes}",
        pr_number=pr,
        head_sha="c" * 40,
        state=state,
        message=("sent preview-teardown for x" if sent else "skipped") if flow == "teardown" else None,
        created=T0 + timedelta(minutes=minutes),
        trigger=Trigger("event"),
        summary=Summary(infra=infra) if flow == "image" else Summary(),
    )


@pytest.mark.parametrize(
    ("builds", "teardowns", "live"),
    [
        ([], [], False),
        ([record("image", 0)], [], True),
        ([record("image", 0, sent=False)], [], False),
        ([record("image", 0, state="Failed")], [], False),
        ([record("image", 0)], [record("teardown", 5)], False),
        ([record("image", 0), record("image", 10)], [record("teardown", 5)], True),  # reopened and rebuilt
        ([record("image", 0)], [record("teardown", 5, sent=False)], True),  # nothing was torn down
        ([record("image", 0)], [record("teardown", 5, state="Failed")], True),
    ],
)
def test_liveness(builds: list[RunRecord], teardowns: list[RunRecord], live: bool) -> None:
    assert liveness(builds, teardowns).live is live


def test_pull_histories_group_by_pr_newest_first_and_limit_the_runs_shown() -> None:
    builds = [record("image", m, pr=pr) for pr in (3, 12) for m in (1, 30, 7)]
    pulls = pull_histories(builds, [record("teardown", 60, pr=3)], per_pr=2)
    assert [p.pr_number for p in pulls] == [12, 3]
    assert [r.flow_run_id for r in pulls[0].runs] == ["image-30", "image-7"]
    assert (pulls[0].live.live, pulls[1].live.live) == (True, False)
