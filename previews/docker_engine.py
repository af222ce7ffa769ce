"""Thin adapter over the Docker engine: build with BuildKit, push one ``pr-<N>-<sha>`` tag, clean up.

Builds run the Docker CLI (``docker buildx build``, or ``docker build`` with ``DOCKER_BUILDKIT=1``), because
only the CLI drives BuildKit (cache and secret mounts, stage skipping) and docker-py speaks the classic
builder only; what to run is decided in :mod:`previews.core.buildkit`. The CLI runs in its own process group
with an argv list (no shell); a timeout or a cancelled run stops the whole group, and BuildKit cancels the
build when its client goes away. Push, inspect, pull and the login check stay on docker-py: its push stream
carries per-layer status and errors (translated here into :mod:`previews.errors`) and needs no credentials on
disk. docker-py reports push failures inside the JSON stream instead of raising; a watchdog shuts the stream's
socket at the deadline so a caller never waits past it.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from base64 import b64encode
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.auth
import docker.errors
import requests
import urllib3.exceptions
from pydantic import SecretStr

from previews.core.buildkit import (
    BuildCli,
    BuildLog,
    CliProbe,
    build_argv,
    choose_build_cli,
    secret_env_name,
)
from previews.core.tags import DEFAULT_PROTECTED, ensure_pushable
from previews.errors import (
    AuthError,
    BuildError,
    DockerUnavailableError,
    PushError,
    TransientBuildError,
    TransientPushError,
    ValidationError,
)
from previews.redact import Redactor

LOG_TAIL_LINES = 30
_ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_DIGEST_RE = re.compile(r"digest: (sha256:[0-9a-f]{64})", re.ASCII)
# registry[:port]/path without a tag or digest (the tag policy sees the tag separately)
_IMAGE_NAME_RE = re.compile(r"(?:[^/\s@]+/)*[^/:\s@]+", re.ASCII)
_HTTP_STATUS_RE = re.compile(
    r"(?:HTTP status|status code|status):? ([1-5][0-9]{2})\b", re.ASCII | re.IGNORECASE
)
_AUTH_RE = re.compile(
    r"unauthorized|authentication required|no basic auth credentials|incorrect username or password",
    re.IGNORECASE,
)
# The registry knows who we are and refuses: wrong scope, no write access, a protected repository.
_DENIED_RE = re.compile(r"\bdenied\b|\bforbidden\b", re.IGNORECASE)
# "timeout" alone proves nothing ("manifest invalid: timeout must be positive"); these are transport words.
_TRANSIENT_RE = re.compile(
    r"too many requests|toomanyrequests|service unavailable|bad gateway|gateway timeout"
    r"|internal server error|connection reset|connection refused|broken pipe|unexpected EOF|: EOF\b"
    r"|temporary failure|i/o timeout|handshake timeout|Client\.Timeout exceeded|context deadline exceeded"
    r"|timeout awaiting response headers|\btimed out\b|net/http: request canceled",
    re.IGNORECASE,
)
_STATUS_WORDS = {
    "internal server error": 500,
    "bad gateway": 502,
    "service unavailable": 503,
    "gateway timeout": 504,
    "too many requests": 429,
    "toomanyrequests": 429,
}


_CONNECTION_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    docker.errors.DockerException,
    OSError,
)
_COUNTDOWN_RE = re.compile(r"(.*?)([0-9]+)(.*)", re.ASCII)


DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


def engine_address() -> str:
    """Where docker-py looks for the engine: ``DOCKER_HOST``, else the default socket."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def _root_cause(exc: BaseException) -> str:
    """The innermost OS reason of a failed connection ("No such file or directory"), else the first line."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        item = pending.pop(0)
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.strerror:
            return item.strerror
        pending += [arg for arg in item.args if isinstance(arg, BaseException)]
        pending += [link for link in (item.__cause__, item.__context__) if link is not None]
    text = str(exc).strip().splitlines()
    return clean_line(text[0]) if text else type(exc).__name__


def engine_unavailable(exc: BaseException, *, during: str | None = None) -> DockerUnavailableError:
    """The :class:`DockerUnavailableError` for a docker-py or connection error that means no engine answers."""
    return DockerUnavailableError(engine_address(), _root_cause(exc), during=during)


def check_engine(*, timeout: float = 5.0) -> None:
    """Raise :class:`DockerUnavailableError` unless a Docker engine answers at ``DOCKER_HOST`` within ``timeout``."""
    engine = DockerEngine.from_env(timeout=timeout)
    try:
        engine.client.ping()
    except _CONNECTION_ERRORS as exc:
        raise engine_unavailable(exc) from exc
    finally:
        engine.client.close()


def _ignore(_line: str) -> None:
    """Default ``on_line``: drop the line."""


@dataclass(frozen=True, slots=True)
class BuildSpec:
    """What to build: a context directory, a Dockerfile inside it, and the production build's settings."""

    context_dir: Path
    dockerfile: str
    image_ref: str
    target: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    cache_from: Sequence[str] = ()
    timeout: float = 1800.0


@dataclass(frozen=True, slots=True)
class RegistryLogin:
    """Credentials the build's Docker CLI may use for one registry (base images, cache metadata)."""

    registry: str
    username: str
    password: SecretStr


@dataclass(frozen=True, slots=True)
class BuiltImage:
    """A successful build: the image id, its size, and how many steps ran or came from the cache."""

    image_id: str
    size_bytes: int
    steps: int
    cached_steps: int
    duration_s: float


@dataclass(frozen=True, slots=True)
class PushedImage:
    """A successful push: ``registry/image:tag`` and the manifest digest the registry reported."""

    reference: str
    digest: str
    duration_s: float


def stream_error(chunk: dict[str, Any]) -> tuple[str, int | None] | None:
    """The message and code of an ``error``/``errorDetail`` chunk of a build or push stream, else None."""
    if "error" not in chunk and "errorDetail" not in chunk:
        return None
    detail = chunk.get("errorDetail") or {}
    code = detail.get("code") if isinstance(detail.get("code"), int) else None
    return str(chunk.get("error") or detail.get("message") or ""), code


def clean_line(text: str) -> str:
    """One build/push output line without ANSI escapes, carriage-return redraws or trailing blanks."""
    text = _ANSI_RE.sub("", text)
    if "\r" in text:
        text = text.rstrip("\r").rsplit("\r", 1)[-1]
    return text.rstrip()


def classify_push_error(
    message: str, *, status: int | None = None
) -> PushError | AuthError | TransientPushError:
    """Map a registry/engine error message to the exception the flow's retry policy understands.

    A refusal (403, "denied") is permanent: the registry knew the credentials and said no. Missing or
    rejected credentials (401) are an :class:`AuthError` too (the push checks them once more, see
    :meth:`DockerEngine.push`). 5xx, 429, resets, EOF and timeouts of the transport are transient; anything
    else is a permanent :class:`PushError`.
    """
    if status is None:
        match = _HTTP_STATUS_RE.search(message)
        if match is not None:
            status = int(match.group(1))
        else:
            lowered = message.lower()
            status = next((code for words, code in _STATUS_WORDS.items() if words in lowered), None)
    if status == 403 or ((status is None or status < 500) and _DENIED_RE.search(message)):
        return AuthError(f"registry refused the push: {message}", status=403)
    if status == 401 or ((status is None or status < 500) and _AUTH_RE.search(message)):
        return AuthError(f"registry refused the credentials: {message}", status=401)
    if (status is not None and (status >= 500 or status == 429)) or _TRANSIENT_RE.search(message):
        return TransientPushError(f"registry push failed (transient): {message}", status=status)
    return PushError(f"registry refused the push: {message}", status=status)


class _LineSplitter:
    """Turns stream fragments into whole, cleaned, non-blank lines; remembers the last few."""

    def __init__(self, on_line: Callable[[str], None], redact: Callable[[str], str] = str) -> None:
        self._on_line = on_line
        self._redact = redact
        self._partial = ""
        self.tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)

    def feed(self, text: str) -> list[str]:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        return self._emit(lines)

    def flush(self) -> list[str]:
        rest, self._partial = self._partial, ""
        return self._emit([rest])

    def _emit(self, raw: list[str]) -> list[str]:
        out = []
        for item in raw:
            line = self._redact(clean_line(item))
            if line.strip():
                self.tail.append(line)
                self._on_line(line)
                out.append(line)
        return out


class _Countdown:
    """Recognises the engine's per-second countdowns ("Retrying in 4 seconds") so each is shown once."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, int]] = {}

    def repeats(self, layer: str, status: str) -> bool:
        match = _COUNTDOWN_RE.fullmatch(status)
        if match is None:
            self._last.pop(layer, None)
            return False
        shape, number = match.group(1) + "#" + match.group(3).rstrip("s"), int(match.group(2))
        previous = self._last.get(layer)
        self._last[layer] = (shape, number)
        return previous is not None and previous[0] == shape and number < previous[1]


class _Watchdog:
    """Shuts down the socket of a streaming Docker response when the deadline passes."""

    def __init__(self, api: Any, timeout: float, on_expire: Callable[[], None] | None = None) -> None:
        self._api = api
        self._timeout = timeout
        self._on_expire = on_expire
        self._response: requests.Response | None = None
        self._lock = threading.Lock()
        self.expired = threading.Event()
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True

    def _capture(self, response: requests.Response, *_args: Any, **_kwargs: Any) -> requests.Response:
        with self._lock:
            self._response = response
            if self.expired.is_set():
                self._shutdown(response)
        return response

    @staticmethod
    def _shutdown(response: requests.Response) -> None:
        conn = getattr(response.raw, "connection", None) or getattr(response.raw, "_connection", None)
        sock = getattr(conn, "sock", None)
        if isinstance(sock, socket.socket):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _fire(self) -> None:
        self.expired.set()
        if self._on_expire is not None:
            with suppress(Exception):
                self._on_expire()
        with self._lock:
            if self._response is not None:
                self._shutdown(self._response)

    def __enter__(self) -> _Watchdog:
        self._api.hooks["response"].append(self._capture)
        self._timer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._timer.cancel()
        with suppress(ValueError):
            self._api.hooks["response"].remove(self._capture)


@contextmanager
def _read_timeout(api: Any, timeout: float) -> Iterator[None]:
    """Use ``timeout`` as the HTTP timeout of calls that take none of their own (push)."""
    previous = api.timeout
    api.timeout = timeout
    try:
        yield
    finally:
        api.timeout = previous


def _context_and_dockerfile(spec: BuildSpec) -> tuple[Path, str]:
    """Validate that the context is a directory and the Dockerfile a file inside it; return both."""
    if not spec.context_dir.is_absolute():
        raise ValidationError("context_dir", f"{str(spec.context_dir)!r} must be an absolute path")
    context = spec.context_dir.resolve()
    if not context.is_dir():
        raise ValidationError("context_dir", f"{str(spec.context_dir)!r} is not a directory")
    relative = Path(spec.dockerfile)
    if not spec.dockerfile or relative.is_absolute():
        raise ValidationError(
            "dockerfile", f"{spec.dockerfile!r} must be a path relative to the build context"
        )
    dockerfile = (context / relative).resolve()
    if not dockerfile.is_relative_to(context):
        raise ValidationError("dockerfile", f"{spec.dockerfile!r} leaves the build context")
    if not dockerfile.is_file():
        raise ValidationError("dockerfile", f"{spec.dockerfile!r} is not a file in the build context")
    if spec.timeout <= 0:
        raise ValidationError("timeout", f"{spec.timeout} must be positive")
    return context, dockerfile.relative_to(context).as_posix()


# --- the BuildKit client -----------------------------------------------------------------------------------------

_STOP_GRACE_S = 5.0
_PROBE_TIMEOUT_S = 20.0
_DEFAULT_CLIS = ("/usr/bin/docker", "/usr/local/bin/docker")
_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_resolved: dict[tuple[str | None, str], tuple[BuildCli, tuple[str, ...]]] = {}
_resolve_lock = threading.Lock()


def _probe(path: str) -> CliProbe:
    """Ask one ``docker`` binary for its version and whether it has the buildx plugin (no engine needed)."""

    def run(*args: str) -> str | None:
        try:
            done = subprocess.run(
                [path, *args],
                capture_output=True,
                text=True,
                timeout=_PROBE_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    return CliProbe(path=path, version_line=run("--version"), has_buildx=run("buildx", "version") is not None)


def docker_cli_candidates(explicit: str | None = None) -> list[str]:
    """``explicit`` alone if given; else every ``docker`` on ``PATH``, then the usual install locations."""
    if explicit:
        return [explicit]
    found: list[str] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = shutil.which("docker", path=directory) if directory else None
        if candidate and os.path.realpath(candidate) not in {os.path.realpath(f) for f in found}:
            found.append(candidate)
    for path in _DEFAULT_CLIS:
        if os.access(path, os.X_OK) and os.path.realpath(path) not in {os.path.realpath(f) for f in found}:
            found.append(path)
    return found


def resolve_build_cli(explicit: str | None = None) -> tuple[BuildCli, tuple[str, ...]]:
    """The Docker client that builds with BuildKit here, and why others were passed over (cached per PATH)."""
    key = (explicit, os.environ.get("PATH", ""))
    with _resolve_lock:
        if key not in _resolved:
            _resolved[key] = choose_build_cli([_probe(path) for path in docker_cli_candidates(explicit)])
        return _resolved[key]


def _private_docker_config(directory: Path, login: RegistryLogin, env: Mapping[str, str]) -> Path:
    """A ``DOCKER_CONFIG`` holding only ``login`` (mode 0600 in a 0700 directory).

    The user's plugins, buildx builders and contexts stay reachable through symlinks.
    """
    directory.mkdir(mode=0o700)
    original = Path(env.get("DOCKER_CONFIG") or Path.home() / ".docker")
    for name in ("cli-plugins", "buildx", "contexts"):
        if (original / name).is_dir():
            (directory / name).symlink_to(original / name)
    token = b64encode(f"{login.username}:{login.password.get_secret_value()}".encode()).decode()
    # Docker Hub's credentials live under its legacy index address; every other registry under its host.
    key = _DOCKER_HUB_KEY if login.registry in _DOCKER_HUB_HOSTS else login.registry
    path = directory / "config.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"auths": {key: {"auth": token}}}, out)
    return directory


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the CLI's process group (it cancels the build), then SIGKILL whatever is left."""
    for sig, wait in ((signal.SIGTERM, _STOP_GRACE_S), (signal.SIGKILL, 10.0)):
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # children the CLI left behind (a plugin)


def _run_streaming(
    argv: list[str], *, cwd: Path, env: Mapping[str, str], timeout: float, feed: Callable[[str], object]
) -> bool:
    """Run ``argv`` in its own process group, feeding its output as it comes; True if it timed out.

    The caller's thread does the feeding (so ``feed`` may log through Prefect); a reader thread only moves
    bytes. Any exception here (a cancelled run's TerminationSignal, KeyboardInterrupt) stops the group first.
    """
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    chunks: queue.Queue[bytes | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            chunks.put(raw)
        chunks.put(None)

    reader = threading.Thread(target=pump, name="docker-build-output", daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _stop_group(proc)
                return True
            try:
                raw = chunks.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if raw is None:
                break
            feed(raw.decode("utf-8", "replace"))
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        return False
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        return True
    except BaseException:
        _stop_group(proc)
        raise
    finally:
        if proc.poll() is None:
            _stop_group(proc)
        reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


class DockerEngine:
    """Builds, pushes and removes images through one docker-py client (one engine per task; not thread-safe)."""

    def __init__(self, client: docker.DockerClient, *, docker_host: str | None = None) -> None:
        self._client = client
        # The build's CLI must reach the engine this client talks to: DOCKER_HOST unless told otherwise.
        self._docker_host = docker_host

    @classmethod
    def from_env(cls, *, timeout: float = 1800.0) -> DockerEngine:
        """An engine for the daemon at ``DOCKER_HOST`` (or the default socket).

        Raises :class:`DockerUnavailableError` when no engine answers there (docker-py asks for its version).
        """
        try:
            return cls(docker.from_env(timeout=max(1, int(timeout))))
        except _CONNECTION_ERRORS as exc:
            raise engine_unavailable(exc) from exc

    @property
    def client(self) -> docker.DockerClient:
        """The underlying docker-py client."""
        return self._client

    def build(
        self,
        spec: BuildSpec,
        *,
        on_line: Callable[[str], None] = _ignore,
        secrets: Mapping[str, SecretStr] | None = None,
        login: RegistryLogin | None = None,
        docker_cli: str | None = None,
    ) -> BuiltImage:
        """Build ``spec`` with BuildKit through the Docker CLI, streaming each output line to ``on_line``.

        ``secrets`` (id -> value) reach ``RUN --mount=type=secret,id=<id>`` through the CLI's environment,
        never its argv; their values are masked in every line that leaves this method. ``login`` gives the CLI
        credentials for one registry (base images, cache metadata) through a private ``DOCKER_CONFIG`` that is
        removed afterwards. ``docker_cli`` forces a client (else :func:`resolve_build_cli` picks one).

        Raises :class:`BuildError` (one sentence quoting the failing step, plus the last lines of output) when
        the Dockerfile fails or the timeout passes, :class:`TransientBuildError` when the engine goes away.
        A timeout, a cancellation or any exception in the caller's thread stops the CLI's process group, and
        BuildKit cancels the build with it.
        """
        context, dockerfile = _context_and_dockerfile(spec)
        cli, skipped = resolve_build_cli(docker_cli)
        secret_values = dict(secrets or {})
        redact = Redactor(
            [v.get_secret_value() for v in secret_values.values()]
            + ([login.password.get_secret_value()] if login is not None else [])
        )
        log = BuildLog()

        def take(line: str) -> None:
            log.feed(line)
            on_line(line)

        lines = _LineSplitter(take, redact)
        for reason in skipped:
            on_line(f"not using {reason}")
        on_line(cli.describe())
        start = time.monotonic()
        workdir = Path(tempfile.mkdtemp(prefix="previews-build-"))
        try:
            iidfile = workdir / "iid"
            argv = build_argv(
                cli,
                dockerfile=dockerfile,
                image_ref=spec.image_ref,
                iidfile=str(iidfile),
                target=spec.target,
                build_args=spec.build_args,
                labels=spec.labels,
                cache_from=spec.cache_from,
                secret_ids=list(secret_values),
            )
            env = self._cli_environment(workdir, secret_values, login)
            timed_out = _run_streaming(argv, cwd=context, env=env, timeout=spec.timeout, feed=lines.feed)
            lines.flush()
            if timed_out:
                raise BuildError(f"docker build timed out after {spec.timeout:g}s", log_tail=list(lines.tail))
            image_id = iidfile.read_text().strip() if iidfile.is_file() else ""
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if not image_id:
            sentence, transient = log.failure()
            sentence = redact(sentence)
            if not self._engine_answers():
                raise TransientBuildError(
                    f"lost the Docker engine during the build: {sentence}", log_tail=list(lines.tail)
                )
            if transient:
                raise TransientBuildError(
                    f"docker build failed (transient): {sentence}", log_tail=list(lines.tail)
                )
            raise BuildError(f"docker build failed: {sentence}", log_tail=list(lines.tail))
        try:
            size = int(self._client.images.get(image_id).attrs.get("Size") or 0)
        except docker.errors.NotFound as exc:
            raise BuildError(f"built image {image_id} is not in the engine: {exc}") from exc
        except _CONNECTION_ERRORS as exc:
            raise TransientBuildError(f"built image {image_id} cannot be inspected: {exc}") from exc
        return BuiltImage(
            image_id=image_id,
            size_bytes=size,
            steps=log.steps,
            cached_steps=log.cached_steps,
            duration_s=round(time.monotonic() - start, 3),
        )

    def _cli_environment(
        self,
        workdir: Path,
        secrets: Mapping[str, SecretStr],
        login: RegistryLogin | None,
    ) -> dict[str, str]:
        """The Docker CLI's environment: this process's, without our own settings, plus BuildKit's switches."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREVIEWS_")}
        env["DOCKER_BUILDKIT"] = "1"
        env["BUILDKIT_PROGRESS"] = "plain"
        if self._docker_host:
            env["DOCKER_HOST"] = self._docker_host
        for index, value in enumerate(secrets.values()):
            env[secret_env_name(index)] = value.get_secret_value()
        if login is not None:
            env["DOCKER_CONFIG"] = str(_private_docker_config(workdir / "config", login, env))
        return env

    def _engine_answers(self) -> bool:
        """Whether the engine still answers a ping within a few seconds."""
        api = self._client.api
        try:
            with _read_timeout(api, 5):
                return bool(api.ping())
        except _CONNECTION_ERRORS:
            return False

    def push(
        self,
        image_name: str,
        tag: str,
        *,
        username: str,
        password: SecretStr,
        protected: Iterable[str] = DEFAULT_PROTECTED,
        timeout: float = 900.0,
        on_line: Callable[[str], None] = _ignore,
    ) -> PushedImage:
        """Push ``image_name:tag`` and return the manifest digest the registry reported.

        The tag policy is checked first: a protected tag or anything but ``pr-<N>-<sha>`` raises
        :class:`previews.errors.TagPolicyError` before any network call. Errors in the push stream become
        :class:`AuthError` (never retry), :class:`TransientPushError` (retry) or :class:`PushError`.
        """
        ensure_pushable(tag, protected=protected)
        if not _IMAGE_NAME_RE.fullmatch(image_name):
            raise ValidationError("image_name", f"{image_name!r} must be registry/repository without a tag")
        if timeout <= 0:
            raise ValidationError("timeout", f"{timeout} must be positive")
        secret = password.get_secret_value()
        redact = Redactor([secret])
        lines = _LineSplitter(on_line, redact)
        reference = f"{image_name}:{tag}"
        digest: str | None = None
        api = self._client.api
        start = time.monotonic()
        watchdog = _Watchdog(api, timeout)
        countdown = _Countdown()
        try:
            with watchdog, _read_timeout(api, timeout):
                stream = api.push(
                    image_name,
                    tag=tag,
                    stream=True,
                    decode=True,
                    auth_config={"username": username, "password": secret},
                )
                for chunk in stream:
                    if not isinstance(chunk, dict):
                        continue
                    if (failure := stream_error(chunk)) is not None:
                        lines.flush()
                        message = redact(clean_line(failure[0]))
                        code = failure[1]
                        error = classify_push_error(message or "unknown push error", status=code)
                        if isinstance(error, AuthError) and error.status == 401:
                            error = self._confirm_auth(image_name, username, secret, error, redact)
                        raise error
                    aux = chunk.get("aux")
                    if isinstance(aux, dict) and isinstance(aux.get("Digest"), str):
                        digest = aux["Digest"]
                    status = chunk.get("status")
                    if isinstance(status, str):
                        if digest is None and (found := _DIGEST_RE.search(status)) is not None:
                            digest = found.group(1)
                        if chunk.get("progressDetail") and chunk.get("progress"):
                            continue  # byte counters: one line per layer state is enough
                        layer = chunk.get("id")
                        if isinstance(layer, str) and countdown.repeats(layer, status):
                            continue
                        lines.feed(f"{layer}: {status}\n" if layer else status + "\n")
                lines.flush()
        except docker.errors.APIError as exc:
            lines.flush()
            message = redact(str(exc.explanation or exc))
            if exc.status_code == 404:
                raise PushError(f"the Docker engine has no image {reference}: {message}", status=404) from exc
            raise classify_push_error(message) from exc
        except _CONNECTION_ERRORS as exc:
            lines.flush()
            if watchdog.expired.is_set():
                raise TransientPushError(f"push of {reference} timed out after {timeout:g}s") from exc
            raise DockerUnavailableError(
                engine_address(), redact(_root_cause(exc)), during=f"the push of {reference}"
            ) from exc
        if watchdog.expired.is_set():
            raise TransientPushError(f"push of {reference} timed out after {timeout:g}s")
        if digest is None:
            raise PushError(f"push of {reference} ended without a manifest digest")
        return PushedImage(reference=reference, digest=digest, duration_s=round(time.monotonic() - start, 3))

    def _confirm_auth(
        self, image_name: str, username: str, secret: str, error: AuthError, redact: Redactor
    ) -> AuthError | TransientPushError:
        """Tell wrong credentials from a registry hiccup, for a 401 only.

        When the registry's ``/v2/`` ping fails (a 503), the engine pushes without credentials and the
        registry then answers "unauthorized" even for good ones. So a 401 is confirmed by logging in through
        the engine with the same credentials: if that works, the credentials were never sent, and the push is
        worth retrying. A 403 ("denied") is never confirmed this way: the registry saw the credentials and
        refused them for this repository, which a successful login does not contradict.
        """
        registry = docker.auth.resolve_repository_name(image_name)[0]
        try:
            self._client.api.login(username=username, password=secret, registry=registry, reauth=True)
        except docker.errors.APIError as exc:
            confirmed = classify_push_error(redact(str(exc.explanation or exc)))
            if isinstance(confirmed, AuthError):
                return AuthError(str(error), status=confirmed.status or error.status)
            return TransientPushError(
                f"{error}; checking the credentials failed too: {confirmed}", status=confirmed.status
            )
        except _CONNECTION_ERRORS as exc:
            return TransientPushError(f"{error}; the credentials could not be checked: {redact(str(exc))}")
        return TransientPushError(
            f"registry push failed (transient): the registry answered unauthorized, but the same credentials "
            f"log in to {registry}, so its auth check failed transiently (was: {error})"
        )

    def tag(self, image: str, reference: str) -> None:
        """Tag a local image as ``reference`` (``registry/repository:tag``)."""
        repository, _, tag = reference.rpartition(":")
        if not repository or "/" in tag:
            raise ValidationError("reference", f"{reference!r} must be repository:tag")
        self._client.api.tag(image, repository, tag)

    def remove(self, image_ref: str) -> None:
        """Remove a local image reference, best effort (a missing or in-use image is left alone)."""
        with suppress(docker.errors.DockerException, requests.RequestException):
            self._client.api.remove_image(image_ref, noprune=False)
