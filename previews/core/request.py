"""The validated input of one preview build: a PR at one commit, and the build settings it uses."""

from __future__ import annotations

from dataclasses import dataclass, field

from previews.core.names import (
    parse_dir_name,
    parse_git_ref,
    parse_image_repository,
    parse_pr_number,
    parse_registry,
    parse_repository,
    parse_sha,
)
from previews.errors import ValidationError


@dataclass(frozen=True, slots=True)
class Sibling:
    """A repository checked out beside the app, at ``<workspace>/<name>``.

    ``ref`` None means the repository's default branch, as its remote reports it (``HEAD``).
    """

    name: str
    repository: str
    ref: str | None = None

    def __str__(self) -> str:
        return f"{self.name}={self.repository}" + (f"@{self.ref}" if self.ref else "")


def parse_siblings(value: str | None) -> tuple[Sibling, ...]:
    """Parse ``name=owner/repo@ref,...``; without ``@ref`` the remote's default branch is used."""
    if value is None or not value.strip():
        return ()
    siblings: list[Sibling] = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, rest = item.partition("=")
        if not sep:
            raise ValidationError("siblings", f"{item!r} is not of the form name=owner/repo@ref")
        repository, _, ref = rest.partition("@")
        siblings.append(
            Sibling(
                name=parse_dir_name(name.strip(), field="siblings"),
                repository=parse_repository(repository.strip(), field="siblings"),
                ref=parse_git_ref(ref.strip(), field="siblings") if ref.strip() else None,
            )
        )
    names = [s.name for s in siblings]
    if len(set(names)) != len(names):
        raise ValidationError("siblings", f"sibling names must be unique, got {names}")
    if "app" in names:
        raise ValidationError("siblings", "'app' is reserved for the pull request's repository")
    return tuple(siblings)


@dataclass(frozen=True, slots=True)
class BuildRequest:
    """One PR at one commit, validated. Construct with :func:`validate_request`."""

    repository: str
    pr_number: int
    head_sha: str
    registry: str
    image: str
    siblings: tuple[Sibling, ...] = field(default=())

    @property
    def image_name(self) -> str:
        """``registry/image`` without a tag."""
        return f"{self.registry}/{self.image}"


def validate_request(
    *,
    repository: object,
    pr_number: object,
    head_sha: object,
    registry: object,
    image: object | None = None,
    siblings: str | None = None,
) -> BuildRequest:
    """Validate every input of a build; raise :class:`ValidationError` naming the first bad field."""
    repo = parse_repository(repository)
    return BuildRequest(
        repository=repo,
        pr_number=parse_pr_number(pr_number),
        head_sha=parse_sha(head_sha),
        registry=parse_registry(registry),
        image=parse_image_repository(image if image else repo),
        siblings=parse_siblings(siblings),
    )
