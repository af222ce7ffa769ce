"""The git adapter against real repositories: bare remotes on disk, and an authenticated smart-HTTP server."""

from __future__ import annotations

import base64
import json
import logging
import stat
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from previews.core.request import Sibling
from previews.errors import AuthError, GitError, TransientGitError, ValidationError
from previews.git import changed_files, checkout, remove_workspace, repository_url
from tests.support.fixtures import FIXTURES
from tests.support.git_http import run_git_http
from tests.support.services import Remote, free_port, git, make_remote


def _remote(root: Path, kind: str = "app") -> Remote:
    return make_remote(root, f"git-adapter/{kind}-{uuid.uuid4().hex[:10]}")


def _url(remote: Remote) -> str:
    return f"file://{remote.bare}"


def _commit(remote: Remote, files: dict[str, str | None], message: str = "change") -> str:
    """Commit in the work tree without pushing (for building PR branches quickly)."""
    for rel, content in files.items():
        if content is None:
            git("rm", "-q", rel, cwd=remote.work)
            continue
        path = remote.work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        git("add", rel, cwd=remote.work)
    git("commit", "-q", "--allow-empty", "-m", message, cwd=remote.work)
    return git("rev-parse", "HEAD", cwd=remote.work)


def _is_detached(path: Path) -> bool:
    return subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=path, check=False).returncode == 1


# --- checkout by SHA ------------------------------------------------------------------------------------


def test_checkout_full_sha_is_detached_at_that_commit(remotes_root: Path, tmp_path: Path) -> None:
    remote = _remote(remotes_root)
    first = remote.commit({"Dockerfile": "FROM scratch\n", "VERSION": "1\n"})
    remote.commit({"VERSION": "2\n"})  # main moves on; the old SHA is still what we get

    workspace = tmp_path / "ws"
    result = checkout(workspace=workspace, url=_url(remote), sha=first, pr_number=1)

    assert result.workspace == workspace
    assert result.app_dir == workspace / "app"
    assert result.head_sha == first
    assert result.siblings == {}
    assert result.duration_s > 0
    assert (result.app_dir / "VERSION").read_text() == "1\n"
    assert git("rev-parse", "HEAD", cwd=result.app_dir) == first
    assert _is_detached(result.app_dir)
    assert git("for-each-ref", "refs/heads", cwd=result.app_dir) == ""
    assert git("rev-list", "--count", "HEAD", cwd=result.app_dir) == "1"  # shallow: one commit fetched
    assert git("status", "--porcelain", cwd=result.app_dir) == ""


def test_checkout_into_custom_app_name(remotes_root: Path, tmp_path: Path) -> None:
    remote = _remote(remotes_root)
    sha = remote.commit({"a.txt": "a\n"})
    result = checkout(
        workspace=tmp_path / "ws", url=str(remote.bare), sha=sha, pr_number=3, app_name="service"
    )
    assert result.app_dir == tmp_path / "ws" / "service"
    assert (result.app_dir / "a.txt").read_text() == "a\n"


def test_siblings_are_checked_out_beside_the_app(remotes_root: Path, tmp_path: Path) -> None:
    app = _remote(remotes_root)
    head = app.commit({"Dockerfile": "FROM scratch\nCOPY ../common /common\n"})

    common = _remote(remotes_root, "common")
    common.commit({"lib.txt": "common v1\n"})
    common_tip = common.commit({"lib.txt": "common v2\n"})

    proto = _remote(remotes_root, "proto")
    tagged = proto.commit({"api.proto": "v1\n"})
    git("tag", "-a", "v1.0.0", "-m", "release", cwd=proto.work)
    git("push", "-q", "origin", "v1.0.0", cwd=proto.work)
    proto.commit({"api.proto": "v2\n"})

    pinned = _remote(remotes_root, "pinned")
    pinned_sha = pinned.commit({"p.txt": "pinned\n"})
    pinned.commit({"p.txt": "later\n"})

    siblings = [
        (Sibling("common", common.repository, "main"), _url(common)),
        (Sibling("proto", proto.repository, "v1.0.0"), _url(proto)),
        (Sibling("pinned", pinned.repository, pinned_sha), _url(pinned)),
    ]
    workspace = tmp_path / "ws"
    result = checkout(workspace=workspace, url=_url(app), sha=head, pr_number=2, siblings=siblings)

    assert result.head_sha == head
    assert dict(result.siblings) == {"common": common_tip, "proto": tagged, "pinned": pinned_sha}
    assert sorted(p.name for p in workspace.iterdir()) == ["app", "common", "pinned", "proto"]
    assert (workspace / "common" / "lib.txt").read_text() == "common v2\n"
    assert (workspace / "proto" / "api.proto").read_text() == "v1\n"
    assert (workspace / "pinned" / "p.txt").read_text() == "pinned\n"
    for name in ("common", "proto", "pinned"):
        assert _is_detached(workspace / name)
        assert git("rev-parse", "HEAD", cwd=workspace / name) == result.siblings[name]


def test_unknown_sha_is_a_permanent_git_error_naming_it(remotes_root: Path, tmp_path: Path) -> None:
    remote = _remote(remotes_root)
    remote.commit({"a.txt": "a\n"})
    missing = "deadbeef" * 5
    with pytest.raises(GitError) as info:
        checkout(workspace=tmp_path / "ws", url=_url(remote), sha=missing, pr_number=1)
    assert type(info.value) is GitError
    assert missing in str(info.value)


def test_unknown_sibling_branch_is_a_git_error(remotes_root: Path, tmp_path: Path) -> None:
    app, common = _remote(remotes_root), _remote(remotes_root, "common")
    head = app.commit({"a.txt": "a\n"})
    common.commit({"lib.txt": "x\n"})
    sibling = (Sibling("common", common.repository, "no-such-branch"), _url(common))
    with pytest.raises(GitError, match="no-such-branch"):
        checkout(workspace=tmp_path / "ws", url=_url(app), sha=head, pr_number=1, siblings=[sibling])


def test_missing_repository_is_a_git_error(remotes_root: Path, tmp_path: Path) -> None:
    url = f"file://{remotes_root}/git-adapter/never-created-{uuid.uuid4().hex[:8]}.git"
    with pytest.raises(GitError, match="repository not found") as info:
        checkout(workspace=tmp_path / "ws", url=url, sha="a" * 40, pr_number=1)
    assert type(info.value) is GitError


def test_short_sha_is_resolved_against_the_pr_head(remotes_root: Path, tmp_path: Path) -> None:
    remote = _remote(remotes_root)
    remote.commit({"a.txt": "1\n"})
    head = remote.commit({"a.txt": "2\n"})
    remote.push_pr_ref(5, head)
    remote.commit({"a.txt": "3 on main\n"})

    result = checkout(workspace=tmp_path / "ws", url=_url(remote), sha=head[:7], pr_number=5)

    assert result.head_sha == head
    assert git("rev-parse", "HEAD", cwd=result.app_dir) == head
    assert (result.app_dir / "a.txt").read_text() == "2\n"
    assert _is_detached(result.app_dir)


def test_short_sha_not_matching_the_pr_head_is_refused(remotes_root: Path, tmp_path: Path) -> None:
    remote = _remote(remotes_root)
    old = remote.commit({"a.txt": "1\n"})
    head = remote.commit({"a.txt": "2\n"})
    remote.push_pr_ref(6, head)
    with pytest.raises(GitError) as info:
        checkout(workspace=tmp_path / "ws", url=_url(remote), sha=old[:9], pr_number=6)
    assert old[:9] in str(info.value)
    assert head in str(info.value)
    assert not (tmp_path / "ws" / "app" / "a.txt").exists()


def test_short_sha_without_a_pr_ref_is_a_git_error(remotes_root: Path, tmp_path: Path) -> None:
    remote = _remote(remotes_root)
    sha = remote.commit({"a.txt": "1\n"})
    with pytest.raises(GitError, match="refs/pull/77/head"):
        checkout(workspace=tmp_path / "ws", url=_url(remote), sha=sha[:7], pr_number=77)


def test_app_directory_must_be_fresh(remotes_root: Path, tmp_path: Path) -> None:
    remote = _remote(remotes_root)
    sha = remote.commit({"a.txt": "1\n"})
    (tmp_path / "ws" / "app").mkdir(parents=True)
    (tmp_path / "ws" / "app" / "stale.txt").write_text("left over")
    with pytest.raises(GitError, match="fresh workspace"):
        checkout(workspace=tmp_path / "ws", url=_url(remote), sha=sha, pr_number=1)


# --- hostile input never reaches git ---------------------------------------------------------------------


_INJECT = "--upload-pack=touch {marker}"
HOSTILE: list[tuple[str, str, object]] = [
    *[
        ("head_sha", "sha", v)
        for v in [_INJECT, "main;rm -rf /", "../x", "HEAD", "main", "ABCDEF1", "a" * 41, "abcdef1\n", ""]
    ],
    *[
        ("siblings", "sibling_ref", v)
        for v in [
            _INJECT,
            "main;rm -rf /",
            "../x",
            "a..b",
            "x^{}",
            "@{-1}",
            "-b",
            "refs/heads/x.lock",
            "$(id)",
        ]
    ],
    *[("siblings", "sibling_name", v) for v in ["../x", "-x", ".git", "a/b", "..", "app"]],
    *[("app_dir", "app_name", v) for v in ["../x", "..", "-x", "a/b"]],
    *[
        ("url", "url", v)
        for v in [
            _INJECT,
            "ext::sh -c touch% {marker}",
            "https://user:pw@example.invalid/o/r.git",
            "http://x-access-token:ghs_secret@127.0.0.1/o/r.git",
            "relative/path.git",
            "ssh://example.invalid/o/r.git",
            "fd::17",
        ]
    ],
    *[("pr_number", "pr_number", v) for v in [0, 100000, "1; rm -rf /", -1, True]],
    ("base_sha", "fetch_base", "abcdef1"),  # a base must be a full SHA
    ("base_sha", "fetch_base", _INJECT),
]


@pytest.mark.parametrize(("field", "key", "value"), HOSTILE)
def test_hostile_values_are_refused_before_git_runs(
    remotes_root: Path, tmp_path: Path, field: str, key: str, value: object
) -> None:
    marker = tmp_path / "pwned"
    if isinstance(value, str):
        value = value.replace("{marker}", str(marker))
    remote = _remote(remotes_root)
    sha = remote.commit({"a.txt": "a\n"})
    args: dict[str, Any] = {
        "sha": sha,
        "pr_number": 1,
        "url": _url(remote),
        "app_name": "app",
        "fetch_base": None,
        "sibling_name": "common",
        "sibling_ref": "main",
        key: value,
    }
    sibling = Sibling(args.pop("sibling_name"), remote.repository, args.pop("sibling_ref"))
    workspace = tmp_path / "ws"
    with pytest.raises(ValidationError) as info:
        checkout(workspace=workspace, siblings=[(sibling, _url(remote))], **args)
    assert info.value.field == field
    assert not marker.exists()
    assert not workspace.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_hostile_branch_names_from_fixtures_are_refused(remotes_root: Path, tmp_path: Path) -> None:
    cases = json.loads((FIXTURES / "security" / "hostile-inputs.json").read_text())["branch_names"]
    remote = _remote(remotes_root)
    sha = remote.commit({"a.txt": "a\n"})
    for i, case in enumerate(cases):
        workspace = tmp_path / f"ws{i}"
        sibling = Sibling("common", remote.repository, case["value"])
        with pytest.raises(ValidationError) as info:
            checkout(
                workspace=workspace,
                url=_url(remote),
                sha=sha,
                pr_number=1,
                siblings=[(sibling, _url(remote))],
            )
        assert info.value.field == "siblings"
        assert not workspace.exists()


# --- changed files ---------------------------------------------------------------------------------------


def test_changed_files_of_a_multi_commit_pr_after_main_moved_on(remotes_root: Path, tmp_path: Path) -> None:
    remote = _remote(remotes_root)
    long_text = "".join(f"line {i} of a file long enough to be detected as a rename\n" for i in range(20))
    fork_point = remote.commit(
        {
            "keep.txt": "unchanged\n",
            "mod.txt": "v1\n",
            "gone.txt": "deleted by the PR\n",
            "old/name.txt": long_text,
            "docs/guide.md": "guide\n",
        }
    )
    _commit(remote, {"added.txt": "new\n"}, "add")
    _commit(remote, {"mod.txt": "v2\n"}, "modify")
    _commit(remote, {"gone.txt": None}, "delete")
    (remote.work / "new").mkdir()
    git("mv", "old/name.txt", "new/name.txt", cwd=remote.work)
    _commit(remote, {}, "rename")
    for i in range(40):  # more commits than the first deepening step
        _commit(remote, {"docs/log.md": f"entry {i}\n"}, f"log {i}")
    head = git("rev-parse", "HEAD", cwd=remote.work)
    remote.push_pr_ref(9, head)

    # main moves on after the fork point: its changes are not the PR's
    git("reset", "-q", "--hard", fork_point, cwd=remote.work)
    _commit(remote, {"main-only.txt": "on main\n", "keep.txt": "changed on main\n"}, "main work")
    git("push", "-q", "-f", "origin", "HEAD:main", cwd=remote.work)
    base = git("rev-parse", "HEAD", cwd=remote.work)

    result = checkout(workspace=tmp_path / "ws", url=_url(remote), sha=head, pr_number=9, fetch_base=base)

    assert result.head_sha == head
    assert git("rev-parse", "HEAD", cwd=result.app_dir) == head
    assert (result.app_dir / "new" / "name.txt").read_text() == long_text
    assert not (result.app_dir / "gone.txt").exists()
    files = changed_files(result.app_dir, base, head)
    assert files == ["added.txt", "docs/log.md", "gone.txt", "mod.txt", "new/name.txt", "old/name.txt"]
    # the shallow history was deepened until the merge base was present locally
    assert git("merge-base", base, head, cwd=result.app_dir) == fork_point


def test_changed_files_of_a_docs_only_pr(remotes_root: Path, tmp_path: Path) -> None:
    remote = _remote(remotes_root)
    base = remote.commit({"src/app.py": "print(1)\n", "README.md": "hi\n"})
    head = remote.commit({"README.md": "hello\n", "docs/a b/ü.md": "quoted path\n"})
    result = checkout(workspace=tmp_path / "ws", url=_url(remote), sha=head, pr_number=4, fetch_base=base)
    assert changed_files(result.app_dir, base, head) == ["README.md", "docs/a b/ü.md"]


def test_changed_files_without_shared_history_compares_the_trees(remotes_root: Path, tmp_path: Path) -> None:
    remote = _remote(remotes_root)
    base = remote.commit({"same.txt": "same\n", "old.txt": "old\n"})
    git("checkout", "-q", "--orphan", "rewrite", cwd=remote.work)
    git("rm", "-q", "-r", "--cached", ".", cwd=remote.work)
    (remote.work / "old.txt").unlink()
    head = _commit(remote, {"same.txt": "same\n", "new.txt": "new\n"}, "unrelated root")
    remote.push_pr_ref(12, head)
    result = checkout(workspace=tmp_path / "ws", url=_url(remote), sha=head, pr_number=12, fetch_base=base)
    assert changed_files(result.app_dir, base, head) == ["new.txt", "old.txt"]


def test_inherited_git_environment_does_not_redirect_the_checkout(
    remotes_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = _remote(remotes_root)
    sha = remote.commit({"a.txt": "a\n"})
    decoy = tmp_path / "decoy"
    git("init", "-q", str(decoy))
    monkeypatch.setenv("GIT_DIR", str(decoy / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(decoy))
    result = checkout(workspace=tmp_path / "ws", url=_url(remote), sha=sha, pr_number=1)
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_WORK_TREE")
    assert git("rev-parse", "HEAD", cwd=result.app_dir) == sha
    assert (result.app_dir / "a.txt").exists()
    assert not (decoy / "a.txt").exists()
    assert git("for-each-ref", cwd=decoy) == ""


def test_changed_files_needs_a_checkout(tmp_path: Path) -> None:
    with pytest.raises(GitError, match="not a git checkout"):
        changed_files(tmp_path, "a" * 40, "b" * 40)
    with pytest.raises(ValidationError, match="base_sha"):
        changed_files(tmp_path, "--output=/tmp/x", "b" * 40)


# --- workspace removal -----------------------------------------------------------------------------------


def test_remove_workspace_handles_read_only_trees_and_is_idempotent(
    remotes_root: Path, tmp_path: Path
) -> None:
    remote = _remote(remotes_root)
    sha = remote.commit({"a.txt": "a\n"})
    workspace = tmp_path / "ws"
    checkout(workspace=workspace, url=_url(remote), sha=sha, pr_number=1)
    locked = workspace / "locked"
    (locked / "inner").mkdir(parents=True)
    (locked / "inner" / "file.txt").write_text("x")
    (locked / "inner" / "file.txt").chmod(0o444)
    (locked / "inner").chmod(0o500)
    (locked / "sealed").mkdir()
    (locked / "sealed").chmod(0o000)
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    outside.chmod(0o444)
    (locked / "link").symlink_to(outside)
    (locked / "dirlink").symlink_to(tmp_path)
    locked.chmod(0o500)

    remove_workspace(workspace)

    assert not workspace.exists()
    assert outside.read_text() == "keep me"
    assert stat.S_IMODE(outside.stat().st_mode) == 0o444
    remove_workspace(workspace)  # idempotent
    remove_workspace(tmp_path / "never-existed")


# --- URLs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "repository", "expected"),
    [
        (
            "https://github.com/{repository}.git",
            "Octo-Org/Hello-World",
            "https://github.com/Octo-Org/Hello-World.git",
        ),
        ("file:///srv/git/{repository}.git", "a/b", "file:///srv/git/a/b.git"),
        ("/srv/git/{repository}.git", "a/b", "/srv/git/a/b.git"),
        ("http://127.0.0.1:8080/{repository}", "a/b.c", "http://127.0.0.1:8080/a/b.c"),
    ],
)
def test_repository_url(template: str, repository: str, expected: str) -> None:
    assert repository_url(template, repository) == expected


@pytest.mark.parametrize(
    ("template", "repository", "field"),
    [
        ("https://x-access-token:ghs_abc@github.com/{repository}.git", "a/b", "git_url_template"),
        ("https://user@github.com/{repository}.git", "a/b", "git_url_template"),
        ("https://github.com/owner/fixed.git", "a/b", "git_url_template"),
        ("ext::sh -c {repository}", "a/b", "git_url_template"),
        ("git@github.com:{repository}.git", "a/b", "git_url_template"),
        ("https://github.com/{repository}.git", "../etc", "repository"),
        ("https://github.com/{repository}.git", "a/b --upload-pack=x", "repository"),
    ],
)
def test_repository_url_refuses(template: str, repository: str, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        repository_url(template, repository)
    assert info.value.field == field
    assert "ghs_abc" not in str(info.value)


# --- token over real HTTP --------------------------------------------------------------------------------

TOKEN = "ghs_" + uuid.uuid4().hex + "Zz9"


def _secret_forms(token: str) -> list[str]:
    return [
        token,
        base64.b64encode(token.encode()).decode(),
        base64.b64encode(f"x-access-token:{token}".encode()).decode(),
    ]


@pytest.fixture
def http_git(remotes_root: Path) -> tuple[Path, Remote, str]:
    root = remotes_root / f"http-{uuid.uuid4().hex[:8]}"
    remote = make_remote(root, "git-adapter/private-app")
    sha = remote.commit({"secret-app.txt": "private\n"})
    return root, remote, sha


def _assert_no_secret(text: str, token: str = TOKEN) -> None:
    for form in _secret_forms(token):
        assert form not in text


def _assert_no_secret_on_disk(workspace: Path, token: str = TOKEN) -> None:
    forms = [f.encode() for f in _secret_forms(token)]
    for path in workspace.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert not any(form in data for form in forms), path


def test_token_checkout_over_http(
    http_git: tuple[Path, Remote, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, remote, sha = http_git
    caplog.set_level(logging.DEBUG)
    common = make_remote(root, "git-adapter/private-common")
    common_sha = common.commit({"lib.txt": "lib\n"})
    with run_git_http(root, TOKEN) as server:
        template = server.url_template()
        workspace = tmp_path / "ws"
        result = checkout(
            workspace=workspace,
            url=repository_url(template, remote.repository),
            sha=sha,
            pr_number=1,
            siblings=[
                (Sibling("common", common.repository, "main"), repository_url(template, common.repository))
            ],
            token=SecretStr(TOKEN),
            fetch_base=sha,
        )
    assert result.head_sha == sha
    assert result.siblings == {"common": common_sha}
    assert (result.app_dir / "secret-app.txt").read_text() == "private\n"
    assert server.requests
    assert all(r.authorized for r in server.requests)
    config = (result.app_dir / ".git" / "config").read_text()
    assert f"url = {server.url}/{remote.repository}.git" in config
    assert "extraheader" not in config.lower()
    _assert_no_secret_on_disk(workspace)
    _assert_no_secret(caplog.text)
    assert "Popen" in caplog.text  # GitPython's argv log was captured, and holds no token


@pytest.mark.parametrize("token", [SecretStr("ghs_wrong" + uuid.uuid4().hex), None])
def test_wrong_or_missing_token_is_an_auth_error(
    http_git: tuple[Path, Remote, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    token: SecretStr | None,
) -> None:
    root, remote, sha = http_git
    caplog.set_level(logging.DEBUG)
    with run_git_http(root, TOKEN) as server, pytest.raises(AuthError) as info:
        checkout(
            workspace=tmp_path / "ws",
            url=repository_url(server.url_template(), remote.repository),
            sha=sha,
            pr_number=1,
            token=token,
            timeout=60,
        )
    assert info.value.status == 401
    assert server.requests
    assert not any(r.authorized for r in server.requests)
    texts = [str(info.value), repr(info.value), str(info.value.__cause__), caplog.text]
    for text in texts:
        _assert_no_secret(text)
        if token is not None:
            _assert_no_secret(text, token.get_secret_value())
    if token is not None:
        _assert_no_secret_on_disk(tmp_path / "ws", token.get_secret_value())


def test_server_errors_are_transient(http_git: tuple[Path, Remote, str], tmp_path: Path) -> None:
    root, remote, sha = http_git
    with run_git_http(root, TOKEN) as server:
        server.fail_next(503, 10)
        with pytest.raises(TransientGitError) as info:
            checkout(
                workspace=tmp_path / "ws",
                url=repository_url(server.url_template(), remote.repository),
                sha=sha,
                pr_number=1,
                token=SecretStr(TOKEN),
            )
    assert info.value.status == 503
    _assert_no_secret(str(info.value))


def test_connection_refused_is_transient(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/git-adapter/nothing.git"
    with pytest.raises(TransientGitError):
        checkout(workspace=tmp_path / "ws", url=url, sha="a" * 40, pr_number=1, token=SecretStr(TOKEN))


def test_a_stalled_remote_is_killed_at_the_timeout(
    http_git: tuple[Path, Remote, str], tmp_path: Path
) -> None:
    root, remote, sha = http_git
    with run_git_http(root, TOKEN) as server:
        server.stall_seconds = 60
        started = time.monotonic()
        with pytest.raises(TransientGitError, match="timed out"):
            checkout(
                workspace=tmp_path / "ws",
                url=repository_url(server.url_template(), remote.repository),
                sha=sha,
                pr_number=1,
                token=SecretStr(TOKEN),
                timeout=2,
            )
        elapsed = time.monotonic() - started
    assert elapsed < 15


SIBLINGS_TOKEN = "ghs_siblings-token-must-not-leak-9876543210"


def test_each_repository_receives_its_own_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The app is fetched with PREVIEWS_GIT_TOKEN, the siblings with PREVIEWS_SIBLINGS_GIT_TOKEN, as the
    workflow's REPO_ACCESS_TOKEN checkouts do; the server refuses any other pairing."""
    caplog.set_level(logging.DEBUG)
    root = tmp_path / "remotes"
    app = make_remote(root, "seed/app")
    sha = app.commit({"Dockerfile": "FROM scratch\n"})
    common = make_remote(root, "seed/common")
    common_sha = common.commit({"lib.txt": "lib\n"})
    proto = make_remote(root, "seed/proto")
    proto_sha = proto.commit({"api.proto": "syntax = 1;\n"})
    tokens = {"seed/common": SIBLINGS_TOKEN, "seed/proto": SIBLINGS_TOKEN}
    with run_git_http(root, TOKEN, repo_tokens=tokens) as server:
        template = server.url_template()
        siblings = [
            (Sibling("common", "seed/common", "main"), repository_url(template, "seed/common")),
            (Sibling("proto", "seed/proto"), repository_url(template, "seed/proto")),
        ]
        workspace = tmp_path / "ws"
        result = checkout(
            workspace=workspace,
            url=repository_url(template, "seed/app"),
            sha=sha,
            pr_number=1,
            siblings=siblings,
            token=SecretStr(TOKEN),
            siblings_token=SecretStr(SIBLINGS_TOKEN),
        )
        known = {"default": TOKEN, **tokens}
        sent = {
            repo: {known[name] for name in names if name}
            for repo, names in server.seen_by_repository().items()
        }
        assert sent == {"seed/app": {TOKEN}, "seed/common": {SIBLINGS_TOKEN}, "seed/proto": {SIBLINGS_TOKEN}}
        assert all(r.authorized for r in server.requests)

        # one token for everything is refused by the siblings' server: the tokens really are separate
        with pytest.raises(AuthError):
            checkout(
                workspace=tmp_path / "ws2",
                url=repository_url(template, "seed/app"),
                sha=sha,
                pr_number=1,
                siblings=siblings,
                token=SecretStr(TOKEN),
            )
    assert result.siblings == {"common": common_sha, "proto": proto_sha}
    _assert_no_secret_on_disk(workspace)
    _assert_no_secret_on_disk(workspace, SIBLINGS_TOKEN)
    _assert_no_secret(caplog.text)
    _assert_no_secret(caplog.text, SIBLINGS_TOKEN)


def test_a_sibling_without_ref_uses_the_remotes_default_branch(tmp_path: Path) -> None:
    root = tmp_path / "remotes"
    app = make_remote(root, "seed/app")
    sha = app.commit({"Dockerfile": "FROM scratch\n"})
    proto = make_remote(root, "seed/proto")
    proto.commit({"api.proto": "v1 on main\n"})
    git("checkout", "-q", "-b", "trunk", cwd=proto.work)
    trunk_sha = proto.commit({"api.proto": "v2 on trunk\n"})
    git("push", "-q", "origin", "HEAD:trunk", cwd=proto.work)
    git("symbolic-ref", "HEAD", "refs/heads/trunk", cwd=proto.bare)  # the remote's default branch
    with run_git_http(root, TOKEN) as server:
        template = server.url_template()
        result = checkout(
            workspace=tmp_path / "ws",
            url=repository_url(template, "seed/app"),
            sha=sha,
            pr_number=1,
            siblings=[(Sibling("proto", "seed/proto"), repository_url(template, "seed/proto"))],
            token=SecretStr(TOKEN),
        )
    assert result.siblings == {"proto": trunk_sha}
    assert (tmp_path / "ws" / "proto" / "api.proto").read_text() == "v2 on trunk\n"
