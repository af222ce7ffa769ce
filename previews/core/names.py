"""Grammars for the names that cross our boundary: GitHub repositories, SHAs, PR numbers, OCI names.

Every pattern is matched with ``fullmatch`` and ASCII classes (a ``$`` anchor would accept a trailing newline).
"""

from __future__ import annotations

import re

from previews.errors import ValidationError

# GitHub: owner (user/org) 1-39 chars, alphanumerics and single hyphens, no leading/trailing hyphen.
# Legacy accounts may contain consecutive hyphens, so those are accepted.
_OWNER = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,37}[A-Za-z0-9])?"
# GitHub repository names: 1-100 of [A-Za-z0-9._-]; "." and ".." are not repositories.
_REPO = r"[A-Za-z0-9._-]{1,100}"
REPOSITORY_RE = re.compile(rf"({_OWNER})/({_REPO})", re.ASCII)
SHA_RE = re.compile(r"[0-9a-f]{7,40}", re.ASCII)
FULL_SHA_RE = re.compile(r"[0-9a-f]{40}", re.ASCII)
PR_MIN, PR_MAX = 1, 99999

# OCI distribution-spec v1.1.1 repository name component grammar (lower case only).
_OCI_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
OCI_REPOSITORY_RE = re.compile(rf"{_OCI_COMPONENT}(?:/{_OCI_COMPONENT})*", re.ASCII)
# A registry host: DNS name or IPv4, optional port. (No scheme, no path.)
REGISTRY_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]{1,5})?",
    re.ASCII,
)
# A safe directory / sibling name: no separators, no leading dot or dash.
DIR_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}", re.ASCII)
# A git ref we are willing to pass to git: branch/tag names or SHAs, never options or revision syntax.
GIT_REF_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}", re.ASCII)


def _text(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {type(value).__name__}")
    return value


def _show(value: str, limit: int = 60) -> str:
    """A printable, bounded rendering of a hostile value for error messages."""
    shown = value if len(value) <= limit else value[:limit] + "..."
    return repr(shown)


def parse_repository(value: object, *, field: str = "repository") -> str:
    """Validate a GitHub ``owner/name``. Case is kept (owners are mixed case)."""
    text = _text(field, value)
    match = REPOSITORY_RE.fullmatch(text)
    if match is None or match.group(2) in {".", ".."} or match.group(2).endswith(".git"):
        raise ValidationError(field, f"{_show(text)} is not a GitHub repository of the form owner/name")
    return text


def parse_pr_number(value: object, *, field: str = "pr_number") -> int:
    """Validate a PR number: an integer 1-99999 (a decimal string is accepted from CLIs and forms)."""
    if isinstance(value, bool):
        raise ValidationError(field, "must be an integer, got bool")
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9]{1,5}", value, re.ASCII):
            raise ValidationError(field, f"{_show(value)} is not a PR number between {PR_MIN} and {PR_MAX}")
        value = int(value)
    if not isinstance(value, int):
        raise ValidationError(field, f"must be an integer, got {type(value).__name__}")
    if not PR_MIN <= value <= PR_MAX:
        raise ValidationError(field, f"{value} is out of range {PR_MIN}-{PR_MAX}")
    return value


def parse_sha(value: object, *, field: str = "head_sha", full: bool = False) -> str:
    """Validate a commit SHA: 7-40 lower-case hex (exactly 40 when ``full``)."""
    text = _text(field, value)
    pattern = FULL_SHA_RE if full else SHA_RE
    if pattern.fullmatch(text) is None:
        want = "40" if full else "7-40"
        raise ValidationError(field, f"{_show(text)} is not a commit SHA ({want} lower-case hex characters)")
    return text


def parse_image_repository(value: object, *, field: str = "image") -> str:
    """Validate an OCI repository name. Upper case is lowered (GitHub owners are mixed case)."""
    text = _text(field, value).lower()
    if len(text) > 255 or OCI_REPOSITORY_RE.fullmatch(text) is None:
        raise ValidationError(field, f"{_show(text)} is not a valid OCI repository name")
    return text


def parse_registry(value: object, *, field: str = "registry") -> str:
    """Validate a registry ``host[:port]`` (no scheme, no path)."""
    text = _text(field, value)
    if REGISTRY_RE.fullmatch(text) is None:
        raise ValidationError(field, f"{_show(text)} is not a registry host[:port]")
    return text.lower()


def parse_dir_name(value: object, *, field: str) -> str:
    """Validate a single safe directory name (no '/', no leading '.' or '-')."""
    text = _text(field, value)
    if DIR_NAME_RE.fullmatch(text) is None or text in {".", ".."}:
        raise ValidationError(field, f"{_show(text)} is not a safe directory name")
    return text


def parse_git_ref(value: object, *, field: str) -> str:
    """Validate a branch, tag or SHA given to git: no options, no revision syntax, no '..'."""
    text = _text(field, value)
    if (
        GIT_REF_RE.fullmatch(text) is None
        or ".." in text
        or "//" in text
        or text.endswith(("/", ".", ".lock"))
    ):
        raise ValidationError(field, f"{_show(text)} is not a plain git branch, tag or SHA")
    return text
