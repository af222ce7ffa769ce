"""Thin adapter over docker-py: build an image, push one ``pr-<N>-<sha>`` tag, clean up.

docker-py reports build and push failures inside the JSON stream instead of raising, so both streams are
consumed here and translated into the exception tree of :mod:`previews.errors`. Timeouts are enforced on the
Docker call itself: the HTTP read timeout bounds a silent engine, and a watchdog shuts the stream's socket
at the deadline (the engine then cancels the build or push) so a caller never waits past it.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.auth
import docker.errors
import requests
import urllib3.exceptions
from pydantic import SecretStr

from previews.core.plan import BuildSpec
from previews.core.tags import DEFAULT_PROTECTED, ensure_pushable
from previews.errors import (
    AuthError,
    BuildError,
    DockerUnavailableError,
    PreviewsError,
    PushError,
    TransientPushError,
    ValidationError,
)
from previews.redact import Redactor

LOG_TAIL_LINES = 30
_ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_STEP_RE = re.compile(r"Step [0-9]+/[0-9]+ : ", re.ASCII)
_RUNNING_RE = re.compile(r" ---> Running in ([0-9a-f]{12,64})", re.ASCII)
_DIGEST_RE = re.compile(r"digest: (sha256:[0-9a-f]{64})", re.ASCII)
_BUILT_RE = re.compile(r"Successfully built ([0-9a-f]{12,64})", re.ASCII)
# registry[:port]/path without a tag or digest (the tag policy sees the tag separately)
_IMAGE_NAME_RE = re.compile(r"(?:[^/\s@]+/)*[^/:\s@]+", re.ASCII)
_HTTP_STATUS_RE = re.compile(
    r"(?:HTTP status|status code|status):? ([1-5][0-9]{2})\b", re.ASCII | re.IGNORECASE
)
_AUTH_RE = re.compile(
    r"unauthorized|authentication required|denied|no basic auth credentials|incorrect username or password",
    re.IGNORECASE,
)
_TRANSIENT_RE = re.compile(
    r"too many requests|toomanyrequests|service unavailable|bad gateway|gateway timeout"
    r"|internal server error|connection reset|connection refused|broken pipe|\bEOF\b|timeout|timed out"
    r"|temporary failure|i/o timeout",
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
    queue: list[BaseException] = [exc]
    seen: set[int] = set()
    while queue:
        item = queue.pop(0)
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.strerror:
            return item.strerror
        queue += [arg for arg in item.args if isinstance(arg, BaseException)]
        queue += [link for link in (item.__cause__, item.__context__) if link is not None]
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

    Authentication failures come first and are never retried; 5xx, 429, resets, EOF and timeouts are
    transient; anything else is a permanent :class:`PushError`.
    """
    if status is None:
        match = _HTTP_STATUS_RE.search(message)
        if match is not None:
            status = int(match.group(1))
        else:
            lowered = message.lower()
            status = next((code for words, code in _STATUS_WORDS.items() if words in lowered), None)
    if status in (401, 403) or ((status is None or status < 500) and _AUTH_RE.search(message)):
        return AuthError(f"registry refused the credentials: {message}", status=status or 401)
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


class DockerEngine:
    """Builds, pushes and removes images through one docker-py client (one engine per task; not thread-safe)."""

    def __init__(self, client: docker.DockerClient) -> None:
        self._client = client

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

    def build(self, spec: BuildSpec, *, on_line: Callable[[str], None] = _ignore) -> BuiltImage:
        """Build ``spec`` with the engine's builder, streaming each output line to ``on_line`` as it arrives.

        Raises :class:`BuildError` (with the last lines of output) when a step fails, the engine refuses the
        build or the timeout passes; intermediate containers are removed in every case.
        """
        context, dockerfile = _context_and_dockerfile(spec)
        api = self._client.api
        lines = _LineSplitter(on_line)
        running: list[str] = []
        image_id: str | None = None
        steps = cached = 0
        start = time.monotonic()
        watchdog = _Watchdog(api, spec.timeout, on_expire=lambda: self._kill_step(running))
        try:
            with watchdog:
                stream = api.build(
                    path=str(context),
                    dockerfile=dockerfile,
                    tag=spec.image_ref,
                    target=spec.target,
                    buildargs=dict(spec.build_args),
                    labels=dict(spec.labels),
                    cache_from=list(spec.cache_from) or None,
                    rm=True,
                    forcerm=True,
                    pull=False,
                    decode=True,
                    timeout=spec.timeout,
                    use_config_proxy=False,
                )
                for chunk in stream:
                    if not isinstance(chunk, dict):
                        continue
                    if (failure := stream_error(chunk)) is not None:
                        lines.flush()
                        message = failure[0] or "unknown error"
                        if watchdog.expired.is_set():
                            message = f"timed out after {spec.timeout:g}s ({message})"
                        raise BuildError(
                            f"docker build failed: {clean_line(message)}", log_tail=list(lines.tail)
                        )
                    aux = chunk.get("aux")
                    if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
                        image_id = aux["ID"]
                    text = chunk.get("stream")
                    if text is None and "status" in chunk:
                        text = " ".join(str(chunk[k]) for k in ("status", "id") if chunk.get(k)) + "\n"
                    if isinstance(text, str):
                        for line in lines.feed(text):
                            if _STEP_RE.match(line):
                                steps += 1
                            elif line.strip() == "---> Using cache":
                                cached += 1
                            elif (running_match := _RUNNING_RE.match(line)) is not None:
                                running.append(running_match.group(1))
                            elif image_id is None and (built := _BUILT_RE.match(line)) is not None:
                                image_id = built.group(1)
                lines.flush()
        except docker.errors.APIError as exc:
            lines.flush()
            raise BuildError(
                f"the Docker engine refused the build: {exc.explanation or exc}", log_tail=list(lines.tail)
            ) from exc
        except _CONNECTION_ERRORS as exc:
            lines.flush()
            if watchdog.expired.is_set():
                raise BuildError(
                    f"docker build timed out after {spec.timeout:g}s", log_tail=list(lines.tail)
                ) from exc
            raise BuildError(
                f"lost the Docker engine during the build: {exc}", log_tail=list(lines.tail)
            ) from exc
        if watchdog.expired.is_set():
            raise BuildError(f"docker build timed out after {spec.timeout:g}s", log_tail=list(lines.tail))
        if image_id is None:
            raise BuildError("docker build ended without an image id", log_tail=list(lines.tail))
        try:
            size = int(self._client.images.get(image_id).attrs.get("Size") or 0)
        except docker.errors.DockerException as exc:
            raise BuildError(f"built image {image_id} cannot be inspected: {exc}") from exc
        return BuiltImage(
            image_id=image_id,
            size_bytes=size,
            steps=steps,
            cached_steps=cached,
            duration_s=round(time.monotonic() - start, 3),
        )

    def _kill_step(self, running: list[str]) -> None:
        """Stop the container of the step that is running at the deadline (our own, named in the stream)."""
        if running:
            with suppress(docker.errors.DockerException):
                self._client.api.kill(running[-1])

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
                        if isinstance(error, AuthError):
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
        """Tell wrong credentials from a registry hiccup.

        When the registry's ``/v2/`` ping fails (a 503), the engine pushes without credentials and the
        registry then answers "unauthorized" even for good ones. So an auth failure is confirmed by logging
        in through the engine with the same credentials: if that works, the failure was transient.
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

    def pull(
        self,
        reference: str,
        *,
        username: str | None = None,
        password: SecretStr | None = None,
        timeout: float = 900.0,
    ) -> str | None:
        """Pull ``registry/repository:tag``; None when it arrived, else why not (redacted; never raises).

        Used to warm the build cache: an image that cannot be pulled only costs the build time.
        """
        repository, _, tag = reference.rpartition(":")
        if not repository or "/" in tag:
            return f"{reference!r} is not registry/repository:tag"
        secret = password.get_secret_value() if password is not None else ""
        auth = {"username": username, "password": secret} if username and secret else None
        redact = Redactor([secret])
        api = self._client.api
        try:
            with _read_timeout(api, timeout):
                for chunk in api.pull(repository, tag=tag, stream=True, decode=True, auth_config=auth):
                    if isinstance(chunk, dict) and (failure := stream_error(chunk)) is not None:
                        return redact(clean_line(failure[0]) or "unknown pull error")
        except (docker.errors.APIError, PreviewsError) as exc:
            return redact(str(exc))
        except _CONNECTION_ERRORS as exc:
            return redact(str(engine_unavailable(exc)))
        return None

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
