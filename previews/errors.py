"""The one exception tree of `previews`.

::

    PreviewsError
    ├── ValidationError          bad input (event field, parameter, setting); never retried
    │   ├── TagPolicyError       a tag the policy refuses (protected or not pr-<N>-<sha>)
    │   └── SettingsError        an environment variable's value is refused (names it and the range)
    ├── SignatureError           a webhook delivery's signature is missing or wrong (HTTP 401)
    ├── PermanentError           a remote said no for good: auth, 4xx, missing ref; never retried
    │   ├── AuthError            401/403 from a registry, git remote or GitHub
    │   ├── CrossOriginError     a remote pointed a request at another origin (Link, Location, redirect,
    │   │                        token realm); refused, so credentials never leave the configured origin
    │   ├── BuildError           the Dockerfile failed; carries the tail of the build log
    │   ├── PushError            the registry refused the push for good
    │   ├── GitError             clone/fetch/checkout failed for good (unknown SHA, ambiguous short SHA)
    │   ├── GitHubError          a GitHub API 4xx
    │   │   ├── GitHubNotFoundError      404: no such repository, pull request or installation
    │   │   └── GitHubUnprocessableError 422: GitHub refused the request body; carries ``errors``
    │   ├── InfraNotifyError     the infra webhook target refused the notification for good
    │   ├── PrefectError         the Prefect API refused a request for good (4xx, no such run)
    │   └── RegistryError        a registry API 4xx other than auth (e.g. 405 deletion disabled)
    │       └── RegistryNotFoundError  404: no such repository, tag or manifest
    └── TransientError           worth retrying: 5xx, 429, timeouts, connection resets
        ├── DockerUnavailableError   no Docker engine answers at DOCKER_HOST (absent, stopped or lost)
        ├── TransientBuildError  the Docker engine went away mid-build (not the Dockerfile's fault)
        ├── TransientPushError
        ├── TransientGitError
        ├── TransientGitHubError
        ├── TransientInfraNotifyError
        ├── TransientPrefectError    the Prefect API failed (5xx, 429, timeout, connection)
        └── TransientRegistryError   registry 5xx, 429, timeouts, connection resets

Adapters translate library errors with ``raise ... from exc`` and keep context as attributes.
Messages never contain a secret: callers pass redacted text only.
"""

from __future__ import annotations


class PreviewsError(Exception):
    """Root of every error `previews` raises on purpose."""


class ValidationError(PreviewsError, ValueError):
    """An input failed validation. ``field`` names the input that was wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class TagPolicyError(ValidationError):
    """The tag policy refused a tag before any network call."""

    def __init__(self, tag: str, message: str) -> None:
        super().__init__("tag", f"{tag!r} refused: {message}")
        self.tag = tag


class SettingsError(ValidationError):
    """A setting's value was refused: ``PREVIEWS_RETRIES=99: must be at most 10 (allowed: 0 to 10)``.

    ``variable`` is the environment variable; ``shown`` the value as it may be printed (secrets are hidden).
    """

    def __init__(self, variable: str, shown: str, problem: str) -> None:
        super().__init__(variable, problem)
        self.variable = variable
        self.shown = shown
        self.args = (f"{variable}={shown}: {problem}",)

    def __str__(self) -> str:
        return str(self.args[0])


class PermanentError(PreviewsError):
    """A remote refused for good. Retrying would give the same answer. ``status`` when it answered one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(PermanentError):
    """Credentials were missing, wrong or lacked permission."""


class CrossOriginError(PermanentError):
    """A remote's ``Link``, ``Location``, redirect or token ``realm`` named an origin we must not follow.

    ``origin`` is the foreign ``scheme://host:port``; ``allowed`` the origin the client was configured for.
    """

    def __init__(self, message: str, *, origin: str, allowed: str) -> None:
        super().__init__(message)
        self.origin = origin
        self.allowed = allowed


class BuildError(PermanentError):
    """``docker build`` failed. ``log_tail`` holds the last lines of the build output."""

    def __init__(self, message: str, *, log_tail: list[str] | None = None) -> None:
        tail = list(log_tail or [])
        text = message if not tail else message + "\n--- last build output ---\n" + "\n".join(tail)
        super().__init__(text)
        self.reason = message
        self.log_tail = tail


class PushError(PermanentError):
    """The registry refused the push for good."""


class GitError(PermanentError):
    """A git operation failed for good."""


class GitHubError(PermanentError):
    """The GitHub API answered with a permanent error."""


class TransientError(PreviewsError):
    """A failure worth retrying. ``retry_after`` (seconds) when the remote said how long to wait."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class DockerUnavailableError(TransientError):
    """No Docker engine answers at ``address`` (``DOCKER_HOST``): it is absent, stopped, or was lost mid-call."""

    def __init__(self, address: str, reason: str, *, during: str | None = None) -> None:
        where = f" during {during}" if during else ""
        super().__init__(f"no Docker engine answers at {address}{where} ({reason})")
        self.address = address
        self.reason = reason


class TransientBuildError(TransientError):
    """The build failed for a reason outside the Dockerfile: the engine or the network went away.

    ``log_tail`` holds the last lines of the build output.
    """

    def __init__(self, message: str, *, log_tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.log_tail = list(log_tail or [])


class TransientPushError(TransientError):
    """The registry failed in a way worth retrying (5xx, 429, reset)."""


class TransientGitError(TransientError):
    """The git remote failed in a way worth retrying."""


class TransientGitHubError(TransientError):
    """GitHub failed in a way worth retrying (5xx, 429, secondary rate limit)."""


class GitHubNotFoundError(GitHubError):
    """GitHub answered 404: the repository, pull request or installation does not exist or is not visible."""


class GitHubUnprocessableError(GitHubError):
    """GitHub answered 422. ``errors`` holds GitHub's per-field details (resource, field, code, message)."""

    def __init__(
        self, message: str, *, status: int | None = 422, errors: list[dict[str, object]] | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.errors = list(errors or [])


class InfraNotifyError(PermanentError):
    """The infra webhook target refused the notification for good (4xx)."""


class TransientInfraNotifyError(TransientError):
    """The infra webhook target failed in a way worth retrying (5xx, 429, timeout, connection reset)."""


class PrefectError(PermanentError):
    """The Prefect API refused a request for good (4xx, no such flow run)."""


class TransientPrefectError(TransientError):
    """The Prefect API failed in a way worth retrying (5xx, 429, timeout, connection reset)."""


class RegistryError(PermanentError):
    """A registry API refused a request for good (4xx other than 401/403)."""


class RegistryNotFoundError(RegistryError):
    """The registry has no such repository, tag or manifest (404)."""


class TransientRegistryError(TransientError):
    """The registry failed in a way worth retrying (5xx, 429, timeout, connection reset)."""


class SignatureError(PreviewsError):
    """A webhook delivery's signature header is missing, malformed or does not match the secret."""
