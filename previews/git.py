"""A thin adapter over GitPython: check out one commit (and sibling repositories) into a fresh workspace.

The commit is fetched by SHA, never by a branch name, and checked out detached. A token for private
repositories travels only as an HTTP header set through git's environment config (``GIT_CONFIG_COUNT``), so it
never appears in a URL, an argv, ``.git/config``, a log line or an error message. Every git call runs with
prompts disabled, protocols restricted and a timeout.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from git.cmd import Git
from git.exc import GitCommandError
from pydantic import SecretStr

from previews.core.names import (
    FULL_SHA_RE,
    SHA_RE,
    parse_dir_name,
    parse_git_ref,
    parse_pr_number,
    parse_repository,
    parse_sha,
)
from previews.core.request import Sibling
from previews.errors import AuthError, GitError, TransientGitError, ValidationError
from previews.redact import Redactor

logger = logging.getLogger(__name__)

ALLOWED_PROTOCOLS = "file:http:https"
_URL_SCHEMES = {"file", "http", "https"}
# How far a shallow history is deepened, step by step, to find the merge base of base and head.
DEEPEN_STEPS = (32, 128, 512)
_STDERR_TAIL = 600


@dataclass(frozen=True, slots=True)
class CheckoutResult:
    """What :func:`checkout` left on disk."""

    workspace: Path
    app_dir: Path
    head_sha: str
    siblings: Mapping[str, str]
    duration_s: float
    sibling_refs: Mapping[str, str] = field(default_factory=dict)  # name -> the ref fetched (default branch)


def repository_url(template: str, repository: str) -> str:
    """The clone URL of ``repository`` from ``PREVIEWS_GIT_URL_TEMPLATE`` (placeholder ``{repository}``).

    Raises :class:`ValidationError` when the template has no placeholder, or the result carries credentials
    or uses a protocol other than file, http or https.
    """
    repo = parse_repository(repository)
    if "{repository}" not in template:
        raise ValidationError("git_url_template", "must contain the placeholder '{repository}'")
    return check_url(template.replace("{repository}", repo), field="git_url_template")


def check_url(url: str, *, field: str = "url") -> str:
    """Refuse URLs git must not be given: embedded credentials, option-like text, other protocols."""
    shown = Redactor()(url)
    if not url or url.startswith("-") or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise ValidationError(field, f"{shown!r} is not a usable git URL")
    if url.startswith("/"):
        return url
    parts = urlsplit(url)
    if parts.scheme.lower() not in _URL_SCHEMES:
        raise ValidationError(field, f"{shown!r} must be a file, http or https URL or an absolute path")
    if "@" in parts.netloc:
        raise ValidationError(
            field, f"{shown!r} carries credentials; pass the token as PREVIEWS_GIT_TOKEN instead"
        )
    return url


class _Git:
    """Runs git commands in one directory with the hardened environment, a shared deadline and redaction."""

    def __init__(self, cwd: Path, *, token: SecretStr | None, deadline: float, url: str) -> None:
        self.cwd = cwd
        self.cmd = Git(str(cwd))
        self.deadline = deadline
        self.url = Redactor()(url)
        self.env = _environment(token, cwd)
        self.secrets = _secret_forms(token)

    def __call__(self, *args: str, action: str, sha: str | None = None) -> str:
        if not self.cwd.is_dir():
            raise GitError(f"git {action}: {self.cwd} is not a directory")
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TransientGitError(f"git {action} for {self.url}: the checkout timed out")
        try:
            out: str = self.cmd.execute(
                ["git", *args],
                env=self.env,
                kill_after_timeout=remaining,
                with_extended_output=False,
                stdout_as_string=True,
            )
        except GitCommandError as exc:
            raise _translate(exc, action=action, url=self.url, sha=sha, secrets=self.secrets) from exc
        return out


def _environment(token: SecretStr | None, cwd: Path) -> dict[str, str]:
    config = [
        # An empty helper list: git never asks a credential helper, nor stores anything in one.
        ("credential.helper", ""),
        ("protocol.allow", "never"),
        *[(f"protocol.{p}.allow", "always") for p in ALLOWED_PROTOCOLS.split(":")],
        ("core.hooksPath", os.devnull),
        ("advice.detachedHead", "false"),
        ("init.defaultBranch", "main"),
    ]
    if token is not None and token.get_secret_value():
        raw = f"x-access-token:{token.get_secret_value()}".encode()
        config.append(("http.extraHeader", "Authorization: Basic " + base64.b64encode(raw).decode()))
    env = {
        # Pin the repository: an inherited GIT_DIR, or a parent repository, is never used.
        "GIT_DIR": str(cwd / ".git"),
        "GIT_WORK_TREE": str(cwd),
        "GIT_CEILING_DIRECTORIES": str(cwd.parent),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "",
        "SSH_ASKPASS": "",
        "GIT_ALLOW_PROTOCOL": ALLOWED_PROTOCOLS,
        "GIT_PROTOCOL_FROM_USER": "0",
        # Traces off; should an operator's environment turn curl tracing on anyway (GIT_CURL_VERBOSE is on
        # whenever it is set, whatever its value), git redacts the Authorization header.
        "GIT_TRACE": "0",
        "GIT_TRACE_CURL": "0",
        "GIT_TRACE_PACKET": "0",
        "GIT_TRACE_REDACT": "1",
        "GIT_CONFIG_COUNT": str(len(config)),
    }
    for i, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def _secret_forms(token: SecretStr | None) -> tuple[str, ...]:
    if token is None or not token.get_secret_value():
        return ()
    value = token.get_secret_value()
    forms = {value, base64.b64encode(value.encode()).decode()}
    forms.add(base64.b64encode(f"x-access-token:{value}".encode()).decode())
    return tuple(sorted(forms, key=len, reverse=True))


def _stderr_of(exc: GitCommandError) -> str:
    raw = exc.stderr
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")
    text = text.strip()
    if text.startswith("stderr: '") and text.endswith("'"):
        text = text[len("stderr: '") : -1]
    return text.strip()


_AUTH = re.compile(
    r"could not read (username|password)|authentication failed|terminal prompts disabled"
    r"|returned error: 40[13]|invalid username or password|permission to .* denied",
    re.IGNORECASE,
)
_NOT_FOUND = re.compile(
    r"not our ref|couldn't find remote ref|no such remote ref|unadvertised object|reference is not a tree"
    r"|did not send all necessary objects",
    re.IGNORECASE,
)
_NO_REPOSITORY = re.compile(
    r"does not appear to be a git repository|repository .* not found|returned error: 404", re.IGNORECASE
)
_TRANSIENT = re.compile(
    r"returned error: (5\d\d|429)|connection refused|connection reset|failed to connect|could not resolve host"
    r"|temporary failure in name resolution|timed out|early eof|remote end hung up|rpc failed"
    r"|operation too slow|empty reply from server|recv failure|send failure|gnutls|ssl_read|unexpected disconnect",
    re.IGNORECASE,
)


def _translate(
    exc: GitCommandError, *, action: str, url: str, sha: str | None, secrets: Sequence[str]
) -> Exception:
    stderr = Redactor(secrets)(_stderr_of(exc))
    lines = stderr.splitlines()
    said = [line for line in lines if line.startswith(("fatal:", "error:", "remote:"))] or lines[-3:]
    detail = "; ".join(said)[-_STDERR_TAIL:] or f"exit status {exc.status}"
    where = f"git {action} from {url}"
    if stderr.startswith("Timeout:"):
        return TransientGitError(f"{where} timed out and was stopped")
    if _AUTH.search(stderr):
        status = 403 if re.search(r"returned error: 403|denied", stderr, re.IGNORECASE) else 401
        return AuthError(f"{where} was refused: authentication failed ({detail})", status=status)
    if _NOT_FOUND.search(stderr):
        what = "the requested ref" if not sha else f"commit {sha}" if SHA_RE.fullmatch(sha) else f"ref {sha}"
        return GitError(f"{where}: {what} was not found in the repository ({detail})")
    if _NO_REPOSITORY.search(stderr):
        return GitError(f"{where}: repository not found, or the token cannot read it ({detail})")
    match = _TRANSIENT.search(stderr)
    if match:
        code = re.search(r"returned error: (\d{3})", stderr)
        return TransientGitError(f"{where} failed: {detail}", status=int(code.group(1)) if code else None)
    return GitError(f"{where} failed: {detail}")


def _fresh_repository(path: Path, url: str, runner: _Git) -> None:
    if path.exists() and any(path.iterdir()):
        raise GitError(f"{path} already exists and is not empty; checkout needs a fresh workspace")
    path.mkdir(parents=True, exist_ok=True)
    runner("init", "-q", action="init")
    runner("config", "remote.origin.url", url, action="init")


def _checked_out(runner: _Git, expected: str | None, *, what: str) -> str:
    runner("checkout", "-q", "--detach", "FETCH_HEAD", action="checkout")
    head = runner("rev-parse", "--verify", "HEAD^{commit}", action="rev-parse").strip()
    if expected is not None and head != expected:
        raise GitError(f"{what}: checked out {head}, expected {expected}")
    return head


def _fetch_head(runner: _Git, *, sha: str, pr_number: int) -> str:
    """Fetch the PR head and check it out detached; return its full SHA."""
    if FULL_SHA_RE.fullmatch(sha):
        runner("fetch", "-q", "--depth=1", "--no-tags", "origin", "--", sha, action="fetch", sha=sha)
        return _checked_out(runner, sha, what=f"head {sha}")
    pull_ref = f"refs/pull/{pr_number}/head"
    runner("fetch", "-q", "--depth=1", "--no-tags", "origin", "--", pull_ref, action="fetch", sha=pull_ref)
    head = runner("rev-parse", "--verify", "FETCH_HEAD^{commit}", action="rev-parse").strip()
    if not head.startswith(sha):
        raise GitError(
            f"short SHA {sha} does not match the head of PR #{pr_number} ({pull_ref} is {head}); "
            "give the full SHA or the current head"
        )
    return _checked_out(runner, head, what=f"head {sha}")


def _fetch_base(runner: _Git, *, head: str, base: str) -> None:
    """Fetch ``base`` and deepen both histories until their merge base is present (or all history is)."""
    runner("fetch", "-q", "--depth=1", "--no-tags", "origin", "--", base, action="fetch", sha=base)
    for step in (*DEEPEN_STEPS, None):
        try:
            runner("merge-base", base, head, action="merge-base")
            return
        except GitError:
            pass
        if not (runner.cwd / ".git" / "shallow").exists():
            return
        depth = "--unshallow" if step is None else f"--deepen={step}"
        runner("fetch", "-q", depth, "--no-tags", "origin", "--", head, base, action="fetch", sha=base)


_SYMREF_RE = re.compile(r"^ref: (refs/heads/[^\t\n]+)\tHEAD$", re.MULTILINE)


def _default_branch(runner: _Git) -> str:
    """The branch the remote's ``HEAD`` points at (``refs/heads/<name>``); ``HEAD`` if it does not say."""
    listing = runner("ls-remote", "--symref", "origin", "HEAD", action="ls-remote")
    match = _SYMREF_RE.search(listing)
    if match is None:
        return "HEAD"
    return parse_git_ref(match.group(1), field="default branch")


def checkout(
    *,
    workspace: Path,
    url: str,
    sha: str,
    pr_number: int,
    siblings: Sequence[tuple[Sibling, str]] = (),
    token: SecretStr | None = None,
    siblings_token: SecretStr | None = None,
    app_name: str = "app",
    timeout: float = 600.0,
    fetch_base: str | None = None,
) -> CheckoutResult:
    """Check out ``sha`` of the PR into ``workspace/app_name`` and each sibling into ``workspace/<name>``.

    A 40-hex ``sha`` is fetched directly; a short one is resolved against ``refs/pull/<pr_number>/head``
    and must be a prefix of that commit. ``token`` is sent to the app's remote only; siblings get
    ``siblings_token`` (``token`` when None). A sibling without a ref gets its remote's default branch.
    ``fetch_base`` (a full SHA) is fetched with enough history for :func:`changed_files` to diff from the
    merge base. ``timeout`` bounds the whole checkout.
    Everything is validated before anything is created.
    """
    started = time.monotonic()
    head_sha = parse_sha(sha, field="head_sha")
    number = parse_pr_number(pr_number)
    app = parse_dir_name(app_name, field="app_dir")
    base_sha = parse_sha(fetch_base, field="base_sha", full=True) if fetch_base is not None else None
    app_url = check_url(url)
    planned: list[tuple[str, str | None, str]] = []
    for sibling, sibling_url in siblings:
        name = parse_dir_name(sibling.name, field="siblings")
        if name in {app, *(p[0] for p in planned)}:
            raise ValidationError("siblings", f"{name!r} is used twice in the workspace")
        ref = parse_git_ref(sibling.ref, field="siblings") if sibling.ref is not None else None
        planned.append((name, ref, check_url(sibling_url)))
    if timeout <= 0:
        raise ValidationError("timeout", f"must be positive, got {timeout}")

    deadline = started + timeout
    workspace.mkdir(parents=True, exist_ok=True)
    app_dir = workspace / app
    runner = _Git(app_dir, token=token, deadline=deadline, url=app_url)
    _fresh_repository(app_dir, app_url, runner)
    logger.info("Fetching %s at %s into %s", runner.url, head_sha, app_dir)
    head = _fetch_head(runner, sha=head_sha, pr_number=number)
    if base_sha is not None:
        logger.info("Fetching base %s for the diff", base_sha)
        _fetch_base(runner, head=head, base=base_sha)

    checked: dict[str, str] = {}
    refs: dict[str, str] = {}
    for name, wanted, sibling_url in planned:
        target = workspace / name
        sib = _Git(
            target,
            token=siblings_token if siblings_token is not None else token,
            deadline=deadline,
            url=sibling_url,
        )
        _fresh_repository(target, sibling_url, sib)
        ref = refs[name] = wanted if wanted is not None else _default_branch(sib)
        logger.info("Fetching sibling %s from %s at %s", name, sib.url, ref)
        sib("fetch", "-q", "--depth=1", "--no-tags", "origin", "--", ref, action="fetch", sha=ref)
        checked[name] = _checked_out(sib, ref if FULL_SHA_RE.fullmatch(ref) else None, what=f"sibling {name}")
    return CheckoutResult(
        workspace=workspace,
        app_dir=app_dir,
        head_sha=head,
        siblings=checked,
        duration_s=time.monotonic() - started,
        sibling_refs=refs,
    )


def changed_files(app_dir: Path, base_sha: str, head_sha: str, *, timeout: float = 120.0) -> list[str]:
    """Paths changed by the PR: ``git diff --name-only`` from the merge base of base and head to head.

    Renames are reported as both paths (old and new); there is no file-count limit. When base and head share
    no history, the two trees are compared directly.
    """
    base = parse_sha(base_sha, field="base_sha")
    head = parse_sha(head_sha, field="head_sha")
    if not (app_dir / ".git").is_dir():
        raise GitError(f"{app_dir} is not a git checkout")
    runner = _Git(app_dir, token=None, deadline=time.monotonic() + timeout, url=str(app_dir))
    diff = ("diff", "--name-only", "--no-renames", "--no-ext-diff", "--no-textconv", "-z")
    try:
        runner("merge-base", base, head, action="merge-base")
        revisions = f"{base}...{head}"
    except GitError:
        logger.info("No merge base of %s and %s; comparing the two trees", base, head)
        revisions = f"{base}..{head}"
    out = runner(*diff, revisions, "--", action="diff")
    return sorted({path for path in out.split("\0") if path})


def remove_workspace(workspace: Path) -> None:
    """Delete ``workspace`` and everything in it, read-only files and directories included. Idempotent."""
    path = Path(workspace)
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if not path.exists():
        return
    _make_writable(path)
    for root, dirs, _files in os.walk(path):
        for name in dirs:
            _make_writable(Path(root) / name)
    shutil.rmtree(path)


def _make_writable(path: Path) -> None:
    if path.is_symlink():
        return
    mode = path.stat().st_mode
    if mode & stat.S_IRWXU != stat.S_IRWXU:
        path.chmod(mode | stat.S_IRWXU)
