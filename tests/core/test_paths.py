"""The docs-only filter: gitignore-style globs, checked by tables and by real ``git diff`` output."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from previews.core.paths import DEFAULT_PATHS_IGNORE, PathFilter, docs_only, parse_globs
from previews.errors import ValidationError
from tests.support.services import git

DEFAULT = list(DEFAULT_PATHS_IGNORE)


@pytest.mark.parametrize(
    ("globs", "path", "ignored"),
    [
        # the defaults
        (DEFAULT, "docs/index.md", True),
        (DEFAULT, "docs/img/arch.png", True),
        (DEFAULT, "README.md", True),
        (DEFAULT, "src/pkg/NOTES.md", True),
        (DEFAULT, "src/app.py", False),
        (DEFAULT, "Dockerfile", False),
        (DEFAULT, "documentation/x.txt", False),
        (DEFAULT, "src/docs/guide.rst", False),  # docs/** is anchored: it has a slash in the middle
        (DEFAULT, "README.markdown", False),
        (DEFAULT, "docs", False),  # a file named docs, not the directory's contents
        # no slash: matches at any depth
        (["*.txt"], "notes.txt", True),
        (["*.txt"], "a/b/c.txt", True),
        (["*.txt"], "a/b/c.txt.bak", False),
        (["docs"], "docs/a.md", True),  # a directory name covers everything below it
        (["docs"], "pkg/docs/a.md", True),
        (["docs"], "pkg/docsite/a.md", False),
        # leading slash anchors
        (["/CHANGELOG"], "CHANGELOG", True),
        (["/CHANGELOG"], "sub/CHANGELOG", False),
        (["/docs/*.md"], "docs/a.md", True),
        (["/docs/*.md"], "docs/deep/a.md", False),
        (["docs/*.md"], "docs/deep/a.md", False),
        # trailing slash: directories only
        (["docs/"], "docs/a.md", True),
        (["docs/"], "src/docs/a.md", True),
        (["docs/"], "docs", False),
        # ** forms
        (["**/*.md"], "a.md", True),
        (["**/*.md"], "x/y/z.md", True),
        (["**/fixtures/**"], "tests/fixtures/data.json", True),
        (["**/fixtures/**"], "fixtures/data.json", True),
        (["a/**/b.txt"], "a/b.txt", True),
        (["a/**/b.txt"], "a/x/y/b.txt", True),
        (["a/**/b.txt"], "z/a/b.txt", False),
        (["**"], "anything/at/all.py", True),
        # ? and classes never cross a slash
        (["doc?.md"], "docs.md", True),
        (["doc?/x"], "doc/x", False),
        (["*.[ch]"], "src/main.c", True),
        (["*.[!ch]"], "src/main.c", False),
        (["*.[!ch]"], "src/main.o", True),
        (["a*"], "a/b", True),  # matches the directory "a"
        (["*"], "x/y", True),
        # negation re-includes; the last match wins
        (["docs/**", "!docs/Dockerfile"], "docs/Dockerfile", False),
        (["docs/**", "!docs/Dockerfile"], "docs/index.md", True),
        (["**/*.md", "!CHANGELOG.md"], "CHANGELOG.md", False),
        (["**/*.md", "!CHANGELOG.md", "CHANGELOG.md"], "CHANGELOG.md", True),
        (["!src/a.py"], "src/a.py", False),
        # escapes, comments, blanks
        ([r"\!important.txt"], "!important.txt", True),
        ([r"\#notes"], "#notes", True),
        (["# a comment", "", "  "], "# a comment", False),
        (["*.md"], "./docs/a.md", True),
        (["file with spaces.txt"], "dir/file with spaces.txt", True),
        (["*.md"], "docs/ünïcode.md", True),
    ],
)
def test_gitignore_semantics(globs: list[str], path: str, ignored: bool) -> None:
    assert PathFilter(globs).ignores(path) is ignored


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        ([], False),  # nothing to compare: build
        (["docs/a.md"], True),
        (["docs/a.md", "README.md", "pkg/CHANGES.md"], True),
        (["docs/a.md", "src/app.py"], False),
        (["Dockerfile"], False),
    ],
)
def test_docs_only_with_defaults(changed: list[str], expected: bool) -> None:
    assert docs_only(changed, DEFAULT) is expected


def test_no_globs_means_every_change_builds() -> None:
    assert docs_only(["docs/a.md"], []) is False


def test_relevant_lists_the_paths_that_force_a_build() -> None:
    assert PathFilter(DEFAULT).relevant(["docs/a.md", "src/app.py", "x.md", "Dockerfile"]) == [
        "src/app.py",
        "Dockerfile",
    ]


def test_parse_globs_from_the_environment_value() -> None:
    assert parse_globs(" docs/** , **/*.md,,*.txt ") == ("docs/**", "**/*.md", "*.txt")
    assert parse_globs(None) == ()
    assert parse_globs(["a", " ", "b "]) == ("a", "b")


def test_a_single_string_is_refused_instead_of_iterated_by_character() -> None:
    with pytest.raises(ValidationError) as info:
        PathFilter("docs/**")
    assert info.value.field == "paths_ignore"


@pytest.mark.parametrize("glob", ["/", "a[b", "docs/[!"])
def test_unusable_globs_are_refused(glob: str) -> None:
    with pytest.raises(ValidationError, match="paths_ignore"):
        PathFilter([glob])


def test_the_table_agrees_with_git_check_ignore(tmp_path: Path) -> None:
    """Every row of the semantics table gives the answer git itself gives for a .gitignore."""
    git("init", "-q", str(tmp_path))
    table = test_gitignore_semantics.pytestmark[0].args[1]
    disagreements = []
    for globs, path, ignored in table:
        (tmp_path / ".gitignore").write_text("\n".join(globs) + "\n")
        proc = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=tmp_path, check=False)
        if (proc.returncode == 0) is not ignored:
            disagreements.append((globs, path, ignored))
    assert len(table) > 40
    assert disagreements == []


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
    assert docs_only(changed, DEFAULT) is True


def test_real_diff_with_code_builds(repo: Path) -> None:
    base = git("rev-parse", "HEAD", cwd=repo)
    head = _commit(repo, {"docs/index.md": "more\n", "src/app.py": "print('bye')\n"}, "code and docs")
    assert docs_only(_changed(repo, base, head), DEFAULT) is False


def test_real_diff_moving_code_into_docs_builds(repo: Path) -> None:
    """A rename shows both paths with --no-renames, so moving code away is not a docs-only change."""
    base = git("rev-parse", "HEAD", cwd=repo)
    git("mv", "src/app.py", "docs/app.py", cwd=repo)
    git("commit", "-q", "-m", "move", cwd=repo)
    head = git("rev-parse", "HEAD", cwd=repo)
    changed = _changed(repo, base, head)
    assert sorted(changed) == ["docs/app.py", "src/app.py"]
    assert docs_only(changed, DEFAULT) is False


def test_real_diff_deleting_docs_is_docs_only(repo: Path) -> None:
    base = git("rev-parse", "HEAD", cwd=repo)
    head = _commit(repo, {"docs/conf.py": None}, "drop sphinx conf")
    assert docs_only(_changed(repo, base, head), DEFAULT) is True


def test_real_diff_over_300_files_is_complete(repo: Path) -> None:
    """The old workflow's paths filter saw at most 300 files; the checkout has no such limit."""
    base = git("rev-parse", "HEAD", cwd=repo)
    files: dict[str, str | None] = {f"docs/page{i:03}.md": f"{i}\n" for i in range(400)}
    files["zz/last.py"] = "x = 1\n"
    head = _commit(repo, files, "many")
    changed = _changed(repo, base, head)
    assert len(changed) == 401
    assert docs_only(changed, DEFAULT) is False
    assert docs_only([p for p in changed if p != "zz/last.py"], DEFAULT) is True


def test_real_diff_unusual_file_names(repo: Path) -> None:
    base = git("rev-parse", "HEAD", cwd=repo)
    head = _commit(repo, {"docs/ä b\tc.md": "x\n", "notes/ünï code.txt": "y\n"}, "odd names")
    changed = _changed(repo, base, head)
    assert sorted(changed) == ["docs/ä b\tc.md", "notes/ünï code.txt"]
    assert docs_only(changed, DEFAULT) is False
    assert docs_only(changed, [*DEFAULT, "*.txt"]) is True


def test_real_diff_empty_between_equal_commits_builds(repo: Path) -> None:
    head = git("rev-parse", "HEAD", cwd=repo)
    assert _changed(repo, head, head) == []
    assert docs_only([], DEFAULT) is False
