"""The path filter: GitHub Actions' ``paths`` / ``paths-ignore`` semantics, checked against every row of the
filter cheat sheet in GitHub's workflow-syntax documentation, and against real ``git diff`` output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from previews.core.paths import DEFAULT_PATHS_IGNORE, PathFilter, choose_filter, compile_pattern
from previews.errors import ValidationError
from tests.support.services import git

CHEAT_SHEET = Path(__file__).parents[1] / "fixtures/github/actions/path-filter-cheat-sheet.json"
DEFAULT = PathFilter.of("paths-ignore", DEFAULT_PATHS_IGNORE)


def _rows() -> list[Any]:
    sheet = json.loads(CHEAT_SHEET.read_text())
    rows = []
    for table in ("path_patterns", "branch_tag_patterns"):
        for row in sheet[table]:
            rows.extend(
                pytest.param(row["patterns"], name, True, id=f"{table}:{row['patterns']}:{name}")
                for name in row["matches"]
            )
            rows.extend(
                pytest.param(row["patterns"], name, False, id=f"{table}:{row['patterns']}:not:{name}")
                for name in row["does_not_match"]
            )
    return rows


CHEAT_SHEET_ROWS = _rows()


def test_the_table_covers_every_row_of_the_cheat_sheet() -> None:
    sheet = json.loads(CHEAT_SHEET.read_text())
    rows = [*sheet["path_patterns"], *sheet["branch_tag_patterns"]]
    assert len(rows) == 23
    assert len(CHEAT_SHEET_ROWS) == sum(len(r["matches"]) + len(r["does_not_match"]) for r in rows)


@pytest.mark.parametrize(("patterns", "path", "matched"), CHEAT_SHEET_ROWS)
def test_cheat_sheet(patterns: list[str], path: str, matched: bool) -> None:
    """Each example of GitHub's "Filter pattern cheat sheet": the ordered patterns match it, or not."""
    assert PathFilter.of("paths", patterns).matches(path) is matched


@pytest.mark.parametrize(
    ("patterns", "path", "matched"),
    [
        # what the issue measured: gitignore rules skipped these, Actions builds them
        (["*.md"], "sub/README.md", False),
        (["docs/*"], "docs/a/b.md", False),
        (["docs/**"], "docs/a/b.md", True),
        # anchored at the root, whole path
        (["docs/*"], "a/docs/x", False),
        (["README.md"], "x/README.md", False),
        (["src"], "src/app.py", False),  # a directory name is not a prefix
        (["src/**"], "src", False),
        # ** forms
        (["**/README.md"], "a/b/README.md", True),
        (["**"], "", True),
        (["a/**/b"], "a/b", True),
        (["a/**/b"], "a/x/y/b", True),
        (["a**b"], "a/x/b", True),
        # ? and + on the preceding character; literal as the first character
        (["*.jsx?"], "page.jsxx", False),
        (["v1+"], "v111", True),
        (["v1+"], "v", False),
        (["?x"], "?x", True),
        (["?x"], "ax", False),
        (["+x"], "+x", True),
        (["[0-9]+.txt"], "2024.txt", True),
        (["a/?"], "a", True),  # the slash is optional
        # classes
        (["[CB]at"], "Cat", True),
        (["[CB]at"], "cat", False),
        (["[1-2]00"], "300", False),
        (["file[0-9a-z]"], "filex", True),
        # escapes and literal characters
        (["\\*.md"], "*.md", True),
        (["\\*.md"], "a.md", False),
        (["a.b"], "axb", False),
        (["{a,b}.txt"], "a.txt", False),  # no brace expansion
        (["{a,b}.txt"], "{a,b}.txt", True),
        ([".github/**"], ".github/workflows/ci.yml", True),  # no dot-file rule
        # ! anywhere but first is literal; order decides
        (["a!b"], "a!b", True),
        (["docs/**", "!docs/api/**"], "docs/api/x.md", False),
        (["docs/**", "!docs/api/**", "docs/api/keep.md"], "docs/api/keep.md", True),
        (["!docs/**", "docs/**"], "docs/x", True),
        # case sensitive
        (["*.MD"], "README.md", False),
    ],
)
def test_more_semantics(patterns: list[str], path: str, matched: bool) -> None:
    assert PathFilter.of("paths", patterns).matches(path) is matched


def test_paths_ignore_skips_only_when_every_path_matches() -> None:
    ignore = PathFilter.of("paths-ignore", ["docs/**", "*.md"])
    assert not ignore.decide(["docs/a.md", "README.md"]).build
    decision = ignore.decide(["docs/a.md", "sub/README.md"])
    assert decision.build
    assert decision.deciding == ("sub/README.md",)
    assert "1 of 2 changed paths are outside PREVIEWS_PATHS_IGNORE" in decision.reason


def test_paths_builds_when_any_path_is_included() -> None:
    include = PathFilter.of("paths", ["sub-project/**", "!sub-project/docs/**"])
    assert include.decide(["sub-project/index.js"]).build
    assert include.decide(["sub-project/src/index.js", "README.md"]).build
    only_docs = include.decide(["sub-project/docs/readme.md"])
    assert not only_docs.build
    assert only_docs.reason == "none of the 1 changed paths match PREVIEWS_PATHS"


def test_an_empty_filter_builds_everything() -> None:
    assert choose_filter(paths=None, paths_ignore="").decide(["docs/a.md"]).build
    assert choose_filter(paths="", paths_ignore=None).decide(["docs/a.md"]).build


def test_the_default_is_the_docs_paths_ignore_list() -> None:
    chosen = choose_filter(paths=None, paths_ignore=None)
    assert chosen == DEFAULT
    assert not chosen.decide(["README.md", "docs/x/y.png", "src/NOTES.md"]).build
    assert chosen.decide(["src/app.py", "README.md"]).build


def test_both_settings_is_a_configuration_error() -> None:
    with pytest.raises(ValidationError, match="PREVIEWS_PATHS and PREVIEWS_PATHS_IGNORE are both set"):
        choose_filter(paths="src/**", paths_ignore="docs/**")


def test_paths_needs_a_positive_pattern() -> None:
    with pytest.raises(ValidationError, match="PREVIEWS_PATHS: has only '!' patterns"):
        choose_filter(paths="!docs/**", paths_ignore=None)


def test_settings_split_on_commas() -> None:
    chosen = choose_filter(paths=" src/** , ,!src/docs/** ", paths_ignore=None)
    assert [p.text for p in chosen.patterns] == ["src/**", "!src/docs/**"]
    assert chosen.mode == "paths"


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("a[b", "unclosed"),
        ("a[]", "may hold only"),
        ("a[!b]", "may hold only"),
        ("a[a-Z]", "may hold only"),
        ("a[_]", "may hold only"),
        ("*+", "must follow a character"),
        ("**?", "must follow a character"),
        ("a?+", "must follow a character"),
        ("a\\", "lone backslash"),
        ("!", "empty pattern"),
    ],
)
def test_malformed_patterns_are_refused_naming_the_setting(pattern: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason) as caught:
        compile_pattern(pattern, setting="PREVIEWS_PATHS")
    assert caught.value.field == "PREVIEWS_PATHS"


def test_a_single_string_is_refused_instead_of_iterated_by_character() -> None:
    with pytest.raises(ValidationError):
        PathFilter.of("paths-ignore", "docs/**")


# --- real diffs -------------------------------------------------------------------------------------------


def _changed(repo: Path, base: str, head: str) -> list[str]:
    """What the pipeline computes from its checkout: every path touched, both sides of a rename."""
    out = git("diff", "--name-only", "--no-renames", "-z", base, head, cwd=repo)
    return [p for p in out.split("\0") if p]


def _commit(repo: Path, files: dict[str, str | None], message: str) -> str:
    for rel, content in files.items():
        if content is None:
            (repo / rel).unlink()
        else:
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / rel).write_text(content)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", message, cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git("init", "-q", "-b", "main", cwd=path)
    _commit(
        path,
        {
            "src/app.py": "print('hi')\n",
            "Dockerfile": "FROM scratch\n",
            "README.md": "# app\n",
            "docs/index.md": "docs\n",
            "docs/conf.py": "project = 'x'\n",
        },
        "base",
    )
    return path


def test_real_diff_docs_only_change_is_skipped(repo: Path) -> None:
    base = git("rev-parse", "HEAD", cwd=repo)
    head = _commit(
        repo, {"docs/index.md": "more docs\n", "README.md": "# app v2\n", "docs/new/page.md": "x\n"}, "docs"
    )
    changed = _changed(repo, base, head)
    assert sorted(changed) == ["README.md", "docs/index.md", "docs/new/page.md"]
    assert not DEFAULT.decide(changed).build


def test_real_diff_with_code_builds(repo: Path) -> None:
    base = git("rev-parse", "HEAD", cwd=repo)
    head = _commit(repo, {"docs/index.md": "more\n", "src/app.py": "print('bye')\n"}, "code and docs")
    assert DEFAULT.decide(_changed(repo, base, head)).build


def test_real_diff_moving_code_into_docs_builds(repo: Path) -> None:
    """A rename shows both paths with --no-renames, so moving code away is not a docs-only change."""
    base = git("rev-parse", "HEAD", cwd=repo)
    git("mv", "src/app.py", "docs/app.py", cwd=repo)
    git("commit", "-q", "-m", "move", cwd=repo)
    head = git("rev-parse", "HEAD", cwd=repo)
    changed = _changed(repo, base, head)
    assert sorted(changed) == ["docs/app.py", "src/app.py"]
    assert DEFAULT.decide(changed).build


def test_real_diff_deleting_docs_is_docs_only(repo: Path) -> None:
    base = git("rev-parse", "HEAD", cwd=repo)
    head = _commit(repo, {"docs/conf.py": None}, "drop sphinx conf")
    assert not DEFAULT.decide(_changed(repo, base, head)).build


def test_real_diff_over_300_files_is_complete(repo: Path) -> None:
    """The old workflow's paths filter saw at most 300 files; the checkout has no such limit."""
    base = git("rev-parse", "HEAD", cwd=repo)
    files: dict[str, str | None] = {f"docs/page{i:03}.md": f"{i}\n" for i in range(400)}
    files["zz/last.py"] = "x = 1\n"
    head = _commit(repo, files, "many")
    changed = _changed(repo, base, head)
    assert len(changed) == 401
    assert DEFAULT.decide(changed).build
    assert not DEFAULT.decide([p for p in changed if p != "zz/last.py"]).build


def test_real_diff_unusual_file_names(repo: Path) -> None:
    base = git("rev-parse", "HEAD", cwd=repo)
    head = _commit(repo, {"docs/ä b\tc.md": "x\n", "notes/ünï code.txt": "y\n"}, "odd names")
    changed = _changed(repo, base, head)
    assert sorted(changed) == ["docs/ä b\tc.md", "notes/ünï code.txt"]
    assert DEFAULT.decide(changed).build
    assert not PathFilter.of("paths-ignore", [*DEFAULT_PATHS_IGNORE, "**.txt"]).decide(changed).build
    assert PathFilter.of("paths-ignore", [*DEFAULT_PATHS_IGNORE, "*.txt"]).decide(changed).build


def test_real_diff_empty_between_equal_commits_builds(repo: Path) -> None:
    """Actions would not run with no changed file; previews builds (a wrong skip is a missing preview)."""
    head = git("rev-parse", "HEAD", cwd=repo)
    assert _changed(repo, head, head) == []
    decision = DEFAULT.decide([])
    assert decision.build
    assert decision.reason == "no changed files to filter (base and head trees are equal)"
