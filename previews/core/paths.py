"""The docs-only filter: does a change touch only paths that need no new image?

Globs follow gitignore syntax (https://git-scm.com/docs/gitignore#_pattern_format):

- a pattern without a ``/`` (other than a trailing one) matches at any depth: ``*.txt`` matches ``a/b/c.txt``;
- a leading or middle ``/`` anchors the pattern at the repository root: ``/build.sh``, ``docs/*.md``;
- a trailing ``/`` matches directories only, so every file below them: ``docs/``;
- ``*`` and ``?`` never match ``/``; ``**/`` is zero or more directories, ``/**`` everything inside;
- a pattern that names a directory also covers every file below it (``docs`` covers ``docs/a/b.md``);
- ``!pattern`` re-includes what an earlier pattern ignored; the last matching pattern wins
  (unlike git there is no directory traversal, so a file below an ignored directory can be re-included);
- ``\\`` escapes the next character, so ``\\!`` and ``\\#`` start literal patterns.

An empty change list is never docs-only: with nothing to compare, the image is built.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from previews.errors import ValidationError

DEFAULT_PATHS_IGNORE: tuple[str, ...] = ("docs/**", "**/*.md")


@dataclass(frozen=True, slots=True)
class _Rule:
    pattern: str
    regex: re.Pattern[str]
    negate: bool


def _translate_segment(segment: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(segment):
        char = segment[i]
        if char == "\\" and i + 1 < len(segment):
            out.append(re.escape(segment[i + 1]))
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            start = i + 1
            negated = segment[start : start + 1] in ("!", "^")
            start += 1 if negated else 0
            end = segment.find("]", start + 1)
            if end == -1:
                raise ValidationError("paths_ignore", f"unclosed '[' in {segment!r}")
            body = "".join("\\" + c if c in "\\]^[" else c for c in segment[start:end])
            out.append(f"[^/{body}]" if negated else f"[{body}]")
            i = end + 1
            continue
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def _compile(raw: str) -> _Rule | None:
    pattern = raw.strip()
    if not pattern or pattern.startswith("#"):
        return None
    negate = pattern.startswith("!")
    if negate or pattern.startswith(("\\!", "\\#")):
        pattern = pattern[1:]
    dir_only = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    if not pattern:
        raise ValidationError("paths_ignore", f"{raw!r} is not a usable glob")
    anchored = "/" in pattern
    pattern = pattern.lstrip("/")
    segments = pattern.split("/")
    body: list[str] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            body.append(".+" if last else "(?:[^/]+/)*")
        elif segment:
            body.append(_translate_segment(segment) + ("" if last else "/"))
    prefix = "" if anchored else "(?:[^/]+/)*"
    suffix = "/.+" if dir_only else "(?:/.+)?"
    regex = re.compile(prefix + "".join(body) + suffix, re.ASCII | re.DOTALL)
    return _Rule(pattern=raw.strip(), regex=regex, negate=negate)


class PathFilter:
    """Compiled ignore globs. ``ignores(path)`` is True when the last matching rule ignores the path."""

    def __init__(self, globs: Sequence[str]) -> None:
        if isinstance(globs, str):
            raise ValidationError("paths_ignore", "pass a sequence of globs, not one string")
        self.globs = tuple(globs)
        self._rules = tuple(rule for rule in (_compile(g) for g in globs) if rule is not None)

    def ignores(self, path: str) -> bool:
        """Whether a changed file at ``path`` (repository-relative, ``/``-separated) needs no image."""
        normalized = path.removeprefix("./").lstrip("/")
        ignored = False
        for rule in self._rules:
            if rule.negate == ignored and rule.regex.fullmatch(normalized):
                ignored = not rule.negate
        return ignored

    def relevant(self, changed: Sequence[str]) -> list[str]:
        """The changed paths that are not ignored (the ones that make a build necessary)."""
        return [path for path in changed if not self.ignores(path)]

    def docs_only(self, changed: Sequence[str]) -> bool:
        """True when there is at least one change and every change is ignored."""
        return bool(changed) and not self.relevant(changed)


def parse_globs(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """Split ``PREVIEWS_PATHS_IGNORE`` (comma-separated) into globs; a sequence is taken as is."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(item.strip() for item in items if item.strip())


def docs_only(changed: Sequence[str], ignore_globs: Sequence[str]) -> bool:
    """True when ``changed`` is non-empty and every path matches the ignore globs (gitignore-style)."""
    return PathFilter(ignore_globs).docs_only(changed)
