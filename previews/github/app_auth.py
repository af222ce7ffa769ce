"""GitHub App authentication: an RS256 JWT for the App, exchanged for a cached installation token.

https://docs.github.com/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-json-web-token-jwt-for-a-github-app
The JWT's ``iat`` is 60 s in the past (clock drift) and it expires at most 10 minutes after it was issued.
An installation token lives one hour; it is reused until ``refresh_margin`` seconds before ``expires_at``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import jwt
from pydantic import SecretStr

from previews.errors import AuthError, GitHubError, ValidationError

JWT_BACKDATE_SECONDS = 60
JWT_MAX_LIFETIME_SECONDS = 600
DEFAULT_JWT_LIFETIME_SECONDS = 540
DEFAULT_REFRESH_MARGIN_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class AppCredentials:
    """A GitHub App's id, private key (PEM) and the installation the pipeline acts as."""

    app_id: int
    private_key: SecretStr
    installation_id: int

    def __post_init__(self) -> None:
        if isinstance(self.app_id, bool) or not isinstance(self.app_id, int) or self.app_id <= 0:
            raise ValidationError("PREVIEWS_GITHUB_APP_ID", "must be a positive integer")
        if (
            isinstance(self.installation_id, bool)
            or not isinstance(self.installation_id, int)
            or self.installation_id <= 0
        ):
            raise ValidationError("PREVIEWS_GITHUB_APP_INSTALLATION_ID", "must be a positive integer")
        if "PRIVATE KEY" not in self.private_key.get_secret_value():
            raise ValidationError("PREVIEWS_GITHUB_APP_PRIVATE_KEY", "is not a PEM private key")

    def __repr__(self) -> str:
        return (
            f"AppCredentials(app_id={self.app_id}, installation_id={self.installation_id}, private_key=***)"
        )


def app_jwt(
    credentials: AppCredentials, *, now: float | None = None, lifetime: int = DEFAULT_JWT_LIFETIME_SECONDS
) -> str:
    """The App's JWT: ``iss`` = App id, ``iat`` = now - 60 s, ``exp`` = now + lifetime (at most 10 minutes)."""
    if not 0 < lifetime <= JWT_MAX_LIFETIME_SECONDS - JWT_BACKDATE_SECONDS:
        raise ValidationError(
            "lifetime", f"must be 1-{JWT_MAX_LIFETIME_SECONDS - JWT_BACKDATE_SECONDS} seconds"
        )
    issued = int(time.time() if now is None else now)
    claims = {"iat": issued - JWT_BACKDATE_SECONDS, "exp": issued + lifetime, "iss": str(credentials.app_id)}
    # PEM text pasted into an env var often carries literal "\n" sequences.
    key = credentials.private_key.get_secret_value().replace("\\n", "\n")
    try:
        return jwt.encode(claims, key, algorithm="RS256")
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        raise AuthError("the GitHub App private key could not sign a JWT (not an RSA PEM key?)") from exc
    finally:
        del key


@dataclass(frozen=True, slots=True)
class InstallationToken:
    """An installation access token and the wall-clock time (epoch seconds) it expires."""

    token: SecretStr
    expires_at: float

    def __repr__(self) -> str:
        return f"InstallationToken(token=***, expires_at={self.expires_at})"

    @classmethod
    def from_api(cls, body: object) -> InstallationToken:
        """Parse the body of ``POST /app/installations/{id}/access_tokens`` (201)."""
        if not isinstance(body, dict):
            raise GitHubError("installation token response is not a JSON object")
        token, expires = body.get("token"), body.get("expires_at")
        if not isinstance(token, str) or not token or not isinstance(expires, str):
            raise GitHubError("installation token response lacks 'token' or 'expires_at'")
        try:
            moment = datetime.fromisoformat(expires.replace("Z", "+00:00"))
        except ValueError:
            raise GitHubError(
                f"installation token 'expires_at' is not a timestamp: {expires[:40]!r}"
            ) from None
        if moment.tzinfo is None:
            raise GitHubError("installation token 'expires_at' has no time zone")
        return cls(token=SecretStr(token), expires_at=moment.timestamp())


class InstallationTokenCache:
    """Holds one installation token; hands it out until ``refresh_margin`` seconds before it expires."""

    def __init__(
        self,
        *,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.refresh_margin = refresh_margin
        self._clock = clock
        self._token: InstallationToken | None = None
        self.lock = threading.Lock()

    def current(self) -> SecretStr | None:
        """The cached token while it is fresh, else None."""
        token = self._token
        if token is None or self._clock() >= token.expires_at - self.refresh_margin:
            return None
        return token.token

    def store(self, token: InstallationToken) -> None:
        """Remember a newly minted token."""
        self._token = token

    def invalidate(self) -> None:
        """Forget the token (GitHub answered 401 with it: revoked or expired early)."""
        self._token = None
