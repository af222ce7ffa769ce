"""The path filter: GitHub Actions' ``paths`` and ``paths-ignore``, with Actions' own pattern semantics.

A PR whose changes the filter excludes gets no image, exactly as the deploy workflow's
``on.pull_request.paths-ignore`` (or ``paths``) would have skipped it. Patterns follow the "Filter pattern
cheat sheet" of GitHub's workflow syntax
(https://docs.github.com/en/actions/reference/workflows-and-actions/workflow-syntax#filter-pattern-cheat-sheet):

- a pattern matches the whole path from the repository root (``*.md`` does not match ``sub/README.md``);
- ``*`` matches any characters except ``/``; ``**`` matches any characters including ``/``, and ``**/``
  also matches no directory at all (``**/README.md`` matches ``README.md``);
- ``?`` and ``+`` apply to the preceding character: zero or one, one or more (``*.jsx?`` matches ``page.js``);
  as the first character they are literal;
- ``[...]`` matches one character listed or in a range; only letters, digits and the ranges ``a-z``, ``A-Z``,
  ``0-9`` (or parts of them) are allowed;
- ``\\`` escapes the next character; every other character is literal (no brace expansion, no dot-file rule);
- ``!`` as the first character makes a pattern negative. Patterns are checked in order and, for each path,
  the last matching pattern wins.

Decision rule (Actions'): with ``paths-ignore`` the build is skipped only when every changed path matches;
with ``paths`` it runs when at least one changed path matches. Two deliberate differences, both towards
building rather than skipping (a wrong skip is a missing preview): there is no 300-file limit (the caller
passes the complete ``git diff``), and an empty change list (base == head) builds, where Actions would not
run at all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from previews.errors import ValidationError

Mode = Literal["paths", "paths-ignore"]

DEFAULT_PATHS_IGNORE: tuple[str, ...] = ("docs/**", "**/*.md")
_SETTING: dict[Mode, str] = {"paths": "PREVIEWS_PATHS", "paths-ignore": "PREVIEWS_PATHS_IGNORE"}
_CLASS_BODY_RE = re.compile(r"(?:[a-z]-[a-z]|[A-Z]-[A-Z]|[0-9]-[0-9]|[A-Za-z0-9])+", re.ASCII)


@dataclass(frozen=True, slots=True)
class PathPattern:
    """One compiled pattern: its text as written, whether it is negative, and its anchored regex."""

    text: str
    negative: bool
    regex: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class PathDecision:
    """Whether the filter lets the build run, why, and the changed paths that decided it."""

    build: bool
    reason: str
    deciding: tuple[str, ...]


def compile_pattern(raw: str, *, setting: str = "PREVIEWS_PATHS_IGNORE") -> PathPattern:
    """Translate one Actions filter pattern into an anchored regex; a malformed one raises ValidationError."""
    negative = raw.startswith("!")
    body = raw[1:] if negative else raw
    if not body:
        raise ValidationError(setting, f"{raw!r} is an empty pattern")
    out: list[str] = []
    quantifiable = False  # may the next ? or + apply to what was just emitted?
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            if i + 1 == len(body):
                raise ValidationError(setting, f"{raw!r} ends with a lone backslash")
            out.append(re.escape(body[i + 1]))
            quantifiable, i = True, i + 2
        elif char == "*":
            if body.startswith("**/", i):
                out.append("(?:.+/)?")
                i += 3
            elif body.startswith("**", i):
                out.append(".*")
                i += 2
            else:
                out.append("[^/]*")
                i += 1
            quantifiable = False
        elif char in "?+":
            if i == 0:
                out.append(re.escape(char))
                quantifiable = True
            elif quantifiable:
                out.append(char)
                quantifiable = False
            else:
                raise ValidationError(
                    setting, f"{raw!r}: {char!r} at position {i + 1} must follow a character or a [...] class"
                )
            i += 1
        elif char == "[":
            end = body.find("]", i + 1)
            if end == -1:
                raise ValidationError(setting, f"{raw!r} has an unclosed '['")
            members = body[i + 1 : end]
            if not _CLASS_BODY_RE.fullmatch(members):
                raise ValidationError(
                    setting,
                    f"{raw!r}: [{members}] may hold only letters, digits and the ranges a-z, A-Z, 0-9",
                )
            out.append(f"[{members}]")
            quantifiable, i = True, end + 1
        else:
            out.append(re.escape(char))
            quantifiable, i = True, i + 1
    return PathPattern(raw, negative, re.compile("".join(out), re.ASCII | re.DOTALL))


def parse_patterns(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """Split a comma-separated setting into patterns (blanks dropped); a sequence is taken as is."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(item.strip() for item in items if item.strip())


@dataclass(frozen=True, slots=True)
class PathFilter:
    """An ordered list of patterns used as Actions' ``paths`` or ``paths-ignore``."""

    mode: Mode
    patterns: tuple[PathPattern, ...]

    @classmethod
    def of(cls, mode: Mode, patterns: Sequence[str]) -> PathFilter:
        """Compile ``patterns`` for ``mode``; ``paths`` needs at least one positive pattern, as in Actions."""
        if isinstance(patterns, str):
            raise ValidationError(_SETTING[mode], "pass a sequence of patterns, not one string")
        compiled = tuple(compile_pattern(p, setting=_SETTING[mode]) for p in patterns)
        if mode == "paths" and compiled and all(p.negative for p in compiled):
            raise ValidationError(
                _SETTING[mode], "has only '!' patterns; add a positive one (Actions requires it)"
            )
        return cls(mode, compiled)

    def matches(self, path: str) -> bool:
        """Whether ``path`` ends up matched: patterns in order, the last one that matches wins."""
        matched = False
        for pattern in self.patterns:
            if pattern.regex.fullmatch(path):
                matched = not pattern.negative
        return matched

    def decide(self, changed: Sequence[str]) -> PathDecision:
        """Actions' decision for a PR whose complete list of changed paths is ``changed``."""
        setting = _SETTING[self.mode]
        if not self.patterns:
            return PathDecision(True, f"{setting} is empty: every change builds", tuple(changed))
        if not changed:
            return PathDecision(True, "no changed files to filter (base and head trees are equal)", ())
        matched = tuple(path for path in changed if self.matches(path))
        if self.mode == "paths-ignore":
            unmatched = tuple(path for path in changed if path not in set(matched))
            if unmatched:
                return PathDecision(
                    True, f"{len(unmatched)} of {len(changed)} changed paths are outside {setting}", unmatched
                )
            return PathDecision(False, f"all {len(changed)} changed paths match {setting}", matched)
        if matched:
            return PathDecision(
                True, f"{len(matched)} of {len(changed)} changed paths match {setting}", matched
            )
        return PathDecision(False, f"none of the {len(changed)} changed paths match {setting}", ())


def choose_filter(*, paths: str | None, paths_ignore: str | None) -> PathFilter:
    """The filter the settings ask for: ``PREVIEWS_PATHS`` or ``PREVIEWS_PATHS_IGNORE``, never both.

    Neither set means the default ``paths-ignore`` list (:data:`DEFAULT_PATHS_IGNORE`); an explicitly empty
    value means no filter (every change builds).
    """
    include, ignore = parse_patterns(paths), parse_patterns(paths_ignore)
    if include and ignore:
        raise ValidationError(
            "PREVIEWS_PATHS",
            "PREVIEWS_PATHS and PREVIEWS_PATHS_IGNORE are both set; as in GitHub Actions use one of them "
            "(put exclusions into PREVIEWS_PATHS as '!pattern')",
        )
    if include:
        return PathFilter.of("paths", include)
    if paths_ignore is None and paths is None:
        return PathFilter.of("paths-ignore", DEFAULT_PATHS_IGNORE)
    return PathFilter.of("paths-ignore", ignore)
