"""Pure decisions of a BuildKit build: which Docker client to use, its argv, build secrets, and reading its log.

The adapter (:mod:`previews.docker_engine`) probes the Docker clients on the machine and runs the chosen one;
everything it decides is decided here, without I/O:

- :func:`choose_build_cli`: ``docker buildx build`` where the buildx plugin exists, else a Docker client that
  still drives BuildKit with ``DOCKER_BUILDKIT=1`` (before 23.0; later clients refuse without buildx);
- :func:`build_argv`: the argv of the build (no shell), the production build's ``--file``, ``--target``,
  build args, labels, ``--cache-from`` and ``--secret id=...,env=...``; the image id comes from ``--iidfile``;
- :func:`parse_build_secrets` / :func:`resolve_build_secrets`: ``PREVIEWS_BUILD_SECRETS`` (``id=ENV_VAR,...``)
  and where each value comes from;
- :class:`BuildLog`: reads ``--progress=plain`` output line by line (steps, cached steps, the failing step)
  and turns a failed build into one sentence, and says whether the failure was the engine's (transient) or the
  Dockerfile's (permanent).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import SecretStr

from previews.errors import ValidationError

# BuildKit's `--cache-from` reads cache metadata that the image itself carries (inline cache).
INLINE_CACHE_ARG = "BUILDKIT_INLINE_CACHE"
# First Docker client release that refuses DOCKER_BUILDKIT=1 without the buildx plugin.
_FIRST_BUILDX_ONLY_MAJOR = 23
_VERSION_RE = re.compile(r"Docker version ([0-9]+)\.([0-9]+)[^,\s]*", re.ASCII)
_SECRET_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", re.ASCII)
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}", re.ASCII)
_MAX_SENTENCE = 400


@dataclass(frozen=True, slots=True)
class CliProbe:
    """What probing one ``docker`` binary found: its ``--version`` line (None if it did not run), buildx."""

    path: str
    version_line: str | None
    has_buildx: bool


@dataclass(frozen=True, slots=True)
class BuildCli:
    """The Docker client that runs builds, and how it reaches BuildKit."""

    path: str
    mode: Literal["buildx", "docker-buildkit"]
    version: str

    def describe(self) -> str:
        """One line for the run's log: which binary, which version, which way."""
        how = "docker buildx build" if self.mode == "buildx" else "docker build with DOCKER_BUILDKIT=1"
        return f"BuildKit through {self.path} ({self.version}): {how}"


def _client_version(line: str | None) -> tuple[int, int] | None:
    match = _VERSION_RE.search(line or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def choose_build_cli(probes: Sequence[CliProbe]) -> tuple[BuildCli, tuple[str, ...]]:
    """The first client with buildx, else the first that still supports ``DOCKER_BUILDKIT=1``.

    Returns the choice and, for the log, why each client before it was passed over. Raises
    :class:`ValidationError` (field ``PREVIEWS_DOCKER_CLI``) when no client can build with BuildKit.
    """
    skipped: list[str] = []
    for probe in probes:
        if probe.has_buildx and probe.version_line is not None:
            return BuildCli(probe.path, "buildx", probe.version_line), tuple(skipped)
    for probe in probes:
        version = _client_version(probe.version_line)
        if version is None:
            skipped.append(f"{probe.path}: did not report a Docker version")
        elif version[0] >= _FIRST_BUILDX_ONLY_MAJOR:
            skipped.append(
                f"{probe.path} ({version[0]}.{version[1]}): no buildx plugin, and Docker {_FIRST_BUILDX_ONLY_MAJOR}+ "
                "clients refuse DOCKER_BUILDKIT=1 without it"
            )
        elif version < (18, 9):
            skipped.append(f"{probe.path} ({version[0]}.{version[1]}): older than 18.09, has no BuildKit")
        else:
            assert probe.version_line is not None
            return BuildCli(probe.path, "docker-buildkit", probe.version_line.strip()), tuple(skipped)
    raise ValidationError(
        "PREVIEWS_DOCKER_CLI",
        "no Docker client here can build with BuildKit ("
        + ("; ".join(skipped) or "no docker binary found")
        + "); install the buildx plugin, or point PREVIEWS_DOCKER_CLI at a client older than 23.0",
    )


@dataclass(frozen=True, slots=True)
class BuildSecret:
    """One ``PREVIEWS_BUILD_SECRETS`` entry: ``RUN --mount=type=secret,id=<id>`` reads ``env``'s value."""

    id: str
    env: str


def parse_build_secrets(value: str | None) -> tuple[BuildSecret, ...]:
    """Parse ``id=ENV_VAR,...`` (ids unique, both parts plain names)."""
    secrets: list[BuildSecret] = []
    for raw in (value or "").split(","):
        item = raw.strip()
        if not item:
            continue
        ident, sep, env = (part.strip() for part in item.partition("="))
        if not sep or not _SECRET_ID_RE.fullmatch(ident) or not _ENV_NAME_RE.fullmatch(env):
            raise ValidationError(
                "PREVIEWS_BUILD_SECRETS", f"{item[:80]!r} is not id=ENV_VAR (e.g. npm=NPM_TOKEN)"
            )
        if any(s.id == ident for s in secrets):
            raise ValidationError("PREVIEWS_BUILD_SECRETS", f"secret id {ident!r} is given twice")
        secrets.append(BuildSecret(ident, env))
    return tuple(secrets)


def resolve_build_secrets(
    specs: Sequence[BuildSecret], *, environ: Mapping[str, str], stored: Mapping[str, SecretStr]
) -> dict[str, SecretStr]:
    """Each secret's value by id: the credentials block's ``build_secrets[ENV_VAR]``, else the environment.

    A secret with no (or an empty) value raises :class:`ValidationError` naming the id and the variable,
    never a value.
    """
    values: dict[str, SecretStr] = {}
    for spec in specs:
        stored_value = stored.get(spec.env)
        value = stored_value.get_secret_value() if stored_value is not None else environ.get(spec.env, "")
        if not value:
            raise ValidationError(
                "PREVIEWS_BUILD_SECRETS",
                f"secret {spec.id!r} reads {spec.env}, which is set neither in the environment of the process "
                "that runs the flow nor in the credentials block's build_secrets",
            )
        values[spec.id] = SecretStr(value)
    return values


def secret_env_name(index: int) -> str:
    """The variable that carries the ``index``-th secret into the Docker client's environment (never argv)."""
    return f"PREVIEWS_BUILD_SECRET_{index}"


def build_argv(
    cli: BuildCli,
    *,
    dockerfile: str,
    image_ref: str,
    iidfile: str,
    target: str | None = None,
    build_args: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    cache_from: Sequence[str] = (),
    secret_ids: Sequence[str] = (),
    context: str = ".",
) -> list[str]:
    """The argv of one BuildKit build; secrets are named by id, their values travel in the environment.

    Images always carry inline cache metadata (``BUILDKIT_INLINE_CACHE=1``), so the next build can use them
    with ``--cache-from``.
    """
    argv = [cli.path, "buildx", "build", "--load"] if cli.mode == "buildx" else [cli.path, "build"]
    argv += ["--progress=plain", "--file", dockerfile, "--tag", image_ref, "--iidfile", iidfile]
    if target:
        argv += ["--target", target]
    for key, value in sorted((build_args or {}).items()):
        if key == INLINE_CACHE_ARG:
            continue
        argv += ["--build-arg", f"{key}={value}"]
    argv += ["--build-arg", f"{INLINE_CACHE_ARG}=1"]
    for key, value in sorted((labels or {}).items()):
        argv += ["--label", f"{key}={value}"]
    for ref in cache_from:
        argv += ["--cache-from", ref]
    for index, ident in enumerate(secret_ids):
        argv += ["--secret", f"id={ident},env={secret_env_name(index)}"]
    argv.append(context)
    return argv


# --- reading --progress=plain output ---------------------------------------------------------------------------

_VERTEX_RE = re.compile(r"#([0-9]+) (.*)", re.ASCII | re.DOTALL)
_STEP_NAME_RE = re.compile(r"\[(?:[^\]\s]+ )?[0-9]+/[0-9]+\] .+", re.ASCII | re.DOTALL)
_EXECUTOR_RE = re.compile(
    r"(?:executor failed running \[.*\]|process \".*\" did not complete successfully): (exit code: [0-9]+)",
    re.DOTALL,
)
# Transport-level failures between the client, the engine and registries: the engine went away or a remote
# did not answer. Only matched outside a RUN step's own failure (a RUN that fails to download is the PR's).
TRANSPORT_RE = re.compile(
    r"cannot connect to the docker daemon|error during connect|is the docker daemon running"
    r"|rpc error: code = (?:unavailable|canceled)|transport is closing|error reading from server"
    r"|connection reset by peer|connection refused|broken pipe|unexpected eof|: eof\b|no such host"
    r"|i/o timeout|tls handshake timeout|client\.timeout exceeded|context deadline exceeded|timed out"
    r"|status(?: code)?:? (?:5[0-9][0-9]|429)\b|too many requests|service unavailable|bad gateway"
    # the build's stream ended without a result and without any step or frontend error: the connection broke
    r"|server did not provide an image id",
    re.IGNORECASE,
)


@dataclass
class BuildLog:
    """Reads ``--progress=plain`` lines as they arrive: counts steps and cached steps, notes failures."""

    names: dict[int, str] = field(default_factory=dict)
    cached: set[int] = field(default_factory=set)
    errors: dict[int, str] = field(default_factory=dict)
    trailer: list[str] = field(default_factory=list)  # lines after the last vertex (the client's summary)

    def feed(self, line: str) -> None:
        """Take one cleaned output line."""
        match = _VERTEX_RE.fullmatch(line)
        if match is None:
            if line.strip() and line.strip() != "------":
                self.trailer.append(line.strip())
                del self.trailer[:-20]
            return
        number, text = int(match.group(1)), match.group(2)
        if number not in self.names:
            self.names[number] = text
            return
        if text == "CACHED":
            self.cached.add(number)
        elif text.startswith("ERROR"):
            self.errors[number] = text.removeprefix("ERROR").lstrip(": ").strip()

    def _steps(self) -> list[int]:
        return [
            n
            for n, name in self.names.items()
            if _STEP_NAME_RE.fullmatch(name) and not name.split("] ", 1)[1].startswith("FROM ")
        ]

    @property
    def steps(self) -> int:
        """Dockerfile steps the build ran or took from the cache (``[stage k/n] ...`` vertices, FROM aside:
        BuildKit reports a base image as DONE or CACHED at random, and it is never built)."""
        return len(self._steps())

    @property
    def cached_steps(self) -> int:
        """Steps that came from the cache (local, or an image given with ``--cache-from``)."""
        return len([n for n in self._steps() if n in self.cached])

    def failure(self) -> tuple[str, bool]:
        """One sentence saying why the build failed, and whether it is worth retrying (engine or network).

        A failing Dockerfile step is quoted with its stage and instruction and is never transient.
        """
        for number in sorted(self.errors, key=lambda n: not _STEP_NAME_RE.fullmatch(self.names.get(n, ""))):
            name, message = self.names.get(number, "a build step"), self.errors[number]
            executor = _EXECUTOR_RE.search(message)
            if _STEP_NAME_RE.fullmatch(name):
                detail = executor.group(1) if executor else message
                return _sentence(f"step {_shorten(name)} failed: {detail}"), False
            if executor is None and TRANSPORT_RE.search(message):
                return _sentence(f"{_shorten(name)} failed: {message}"), True
            return _sentence(f"{_shorten(name)} failed: {message}"), False
        summary = self._summary()
        return _sentence(summary), bool(TRANSPORT_RE.search(summary))

    def _summary(self) -> str:
        said = [line for line in self.trailer if not line.startswith(">")]
        if not said:
            return "the Docker client exited without saying why"
        last = said[-1]
        return re.sub(r"^(?:ERROR|error):\s*", "", last)


def _shorten(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_SENTENCE else text[: _MAX_SENTENCE - 3] + "..."
