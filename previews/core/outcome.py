"""What a preview run produced, in a form that crosses task, flow, CLI and artifact boundaries."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

Status = Literal["pushed", "skipped", "failed"]


@dataclass(frozen=True, slots=True)
class NotifyResult:
    """Whether infra was told about the image, and if not, why."""

    sent: bool
    target: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class PreviewResult:
    """The outcome of one ``preview_image`` run."""

    status: Status
    reason: str
    repository: str | None = None
    pr_number: int | None = None
    head_sha: str | None = None
    image: str | None = None
    tag: str | None = None
    digest: str | None = None
    size_bytes: int | None = None
    cached_steps: int | None = None
    steps: int | None = None
    durations_s: dict[str, float] = field(default_factory=dict)
    notify: NotifyResult | None = None
    flow_run_id: str | None = None

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (the CLI's ``--json`` output)."""
        return asdict(self)


def summary_markdown(result: PreviewResult) -> str:
    """The run's markdown artifact: image, digest, size, per-step durations and cache use."""
    lines = [f"## Preview image: {result.status}", "", f"**{result.reason}**", ""]
    rows: list[tuple[str, str]] = []
    if result.repository and result.pr_number:
        rows.append(("Pull request", f"{result.repository}#{result.pr_number}"))
    if result.head_sha:
        rows.append(("Commit", f"`{result.head_sha}`"))
    if result.image:
        rows.append(("Image", f"`{result.image}`"))
    if result.digest:
        rows.append(("Digest", f"`{result.digest}`"))
    if result.size_bytes is not None:
        rows.append(("Size", f"{result.size_bytes / 1_000_000:.1f} MB"))
    if result.steps is not None:
        rows.append(("Build cache", f"{result.cached_steps or 0} of {result.steps} steps cached"))
    if result.notify is not None:
        rows.append(("Infra", result.notify.reason))
    if rows:
        lines += ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    if result.durations_s:
        lines += ["| step | seconds |", "|---|---:|"]
        lines += [f"| {step} | {secs:.2f} |" for step, secs in result.durations_s.items()]
    return "\n".join(lines) + "\n"
