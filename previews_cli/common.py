"""What every ``previews`` command shares: global options, exit codes, settings, one JSON document.

A module adds its commands with ``register(sub)``; ``sub.add_parser(name, help=..., env=(...))`` gives each
one the global options (``--debug``, ``--json``, ``--verbose``, accepted before or after the command name)
and a help text that lists its environment variables and the exit codes below. A handler returns
:func:`finish` (or raises); :func:`exit_code` maps what it raised:

===  ====================================================================================================
 0   ok
 1   the run failed (the flow ran and ended Failed, or a remote refused for good)
 2   bad input or configuration (an argument, a ``PREVIEWS_*`` variable, a missing file to read)
 3   a required service is unreachable (Docker engine, Prefect API, registry, git remote, GitHub)
===  ====================================================================================================

With ``--json`` a command prints exactly one JSON document on stdout: ``status``, ``flow_run_id`` (null
where no run happened), ``error`` and ``reason`` (null unless it failed), and the command's own fields.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from previews.errors import PreviewsError, TransientError, ValidationError
from previews.settings import Settings, allowed_values, load_settings, variable_of

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_UNREACHABLE = 0, 1, 2, 3

EXIT_CODES = (
    f"Exit codes:\n  {EXIT_OK}  ok\n  {EXIT_FAILED}  the run failed\n"
    f"  {EXIT_INVALID}  bad input or configuration (arguments, PREVIEWS_* variables)\n"
    f"  {EXIT_UNREACHABLE}  a required service is unreachable (Docker engine, Prefect API, registry, GitHub)"
)

# What a variable is for, where its settings field has no description of its own.
PURPOSE = {
    "registry": "registry host[:port] the images go to",
    "registry_username": "registry user that pushes and deletes",
    "registry_token": "registry password or token (secret)",
    "registry_kind": "registry API for listing and deleting tags",
    "credentials_block": "name of a PreviewsCredentials block with the secrets",
    "config_block": "name of a PreviewsConfig block that overrides these settings",
    "git_url_template": "clone URL of a repository, with {repository}",
    "dockerfile": "Dockerfile path inside the build context",
    "build_context": "build context, relative to the app checkout",
    "build_timeout": "seconds a build may take",
    "push_timeout": "seconds a push may take",
    "retries": "retries of a transient failure (registry, git, GitHub)",
    "retry_delay": "seconds before the first retry (doubles after)",
    "github_token": "GitHub token (secret); or the GitHub App variables",
    "github_api_url": "GitHub REST API base URL",
    "infra_repository": "owner/name that receives preview-create/-teardown dispatches",
    "webhook_secret": "the GitHub webhook's secret (secret)",
    "allowed_repositories": "comma-separated owner/name accepted by the receiver (empty: any)",
    "outbox_path": "the receiver's SQLite outbox",
    "max_body_bytes": "largest delivery body accepted",
    "max_concurrent_deliveries": "deliveries handled at once",
    "forwarder_batch_size": "outbox entries sent to Prefect per batch",
    "outbox_retention_hours": "hours delivered entries stay in the outbox",
    "cleanup_grace_hours": "hours a closed PR's tags stay",
    "cleanup_keep_per_open_pr": "newest tags kept per open PR",
    "cleanup_ttl_days": "days after which an open PR's older tags go",
    "cleanup_deletes_per_minute": "deletion rate limit",
    "prefect_api_url": "the Prefect API (default: the active Prefect profile, else a temporary server)",
    "prefect_api_key": "Prefect Cloud API key (secret)",
    "prefect_api_auth_string": "Prefect server basic auth user:password (secret)",
}

# Read by every command that talks to Prefect (Prefect's own variables, as the prefect CLI reads them).
PREFECT_ENV = ("prefect_api_url", "prefect_api_key", "prefect_api_auth_string")


class UnreachableError(PreviewsError):
    """A service the command needs did not answer (exit 3). ``service`` names it."""

    def __init__(self, service: str, message: str) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service


class NotFoundError(PreviewsError):
    """What the command was asked about does not exist (exit 1)."""


class InvalidInputError(ValidationError):
    """A command's input or configuration is wrong in a way no setting check covers (exit 2)."""


def exit_code(exc: BaseException) -> int:
    """The exit code of a command that ended with ``exc``."""
    if isinstance(exc, ValidationError):
        return EXIT_INVALID
    if isinstance(exc, UnreachableError | TransientError):
        return EXIT_UNREACHABLE
    return EXIT_FAILED


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (or its class name)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def settings(**values: Any) -> Settings:
    """The settings from the environment; a bad value raises :class:`SettingsError` (exit 2)."""
    return load_settings(**values)


# --- output -------------------------------------------------------------------------------------------------


def document(
    args: argparse.Namespace,
    status: str,
    *,
    flow_run_id: str | None = None,
    error: BaseException | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The command's one JSON document: its template of fields, overlaid with ``fields``."""
    template: Callable[[], dict[str, Any]] = getattr(args, "template", dict)
    body = {**template(), **fields}
    body |= {
        "status": status,
        "flow_run_id": flow_run_id,
        "error": type(error).__name__ if error is not None else None,
        "reason": one_line(error) if error is not None else body.get("reason"),
    }
    return body


def finish(args: argparse.Namespace, body: Mapping[str, Any], human: Sequence[str], code: int) -> int:
    """Print the JSON document (``--json``) or the human lines (stdout on success, stderr otherwise)."""
    if args.json:
        print(json.dumps(body, sort_keys=True, default=str), flush=True)
    else:
        stream = sys.stdout if code == EXIT_OK else sys.stderr
        for line in human:
            print(line, file=stream, flush=True)
    return code


def fail(args: argparse.Namespace, exc: BaseException, *, flow_run_id: str | None = None) -> int:
    """Report ``exc`` in the command's shape (JSON document or one line on stderr); its exit code."""
    code = exit_code(exc)
    if args.debug:
        traceback.print_exception(exc)
    prefix = {EXIT_INVALID: "invalid input", EXIT_UNREACHABLE: "unreachable"}.get(code, "failed")
    body = document(args, "failed", flow_run_id=flow_run_id, error=exc)
    return finish(args, body, [f"{prefix}: {one_line(exc)}"], code)


# --- services -----------------------------------------------------------------------------------------------


def prefect_api_url(config: Settings) -> str | None:
    """``PREFECT_API_URL`` (environment, else the active Prefect profile); None means a temporary server."""
    if config.prefect_api_url:
        return config.prefect_api_url
    try:
        from prefect.settings import PREFECT_API_URL

        url = PREFECT_API_URL.value()
    except Exception:  # an unreadable profile: as if none were set
        return None
    return str(url) if url else None


def require_prefect(config: Settings, *, timeout: float = 5.0) -> str | None:
    """Check that the configured Prefect API answers at all (any HTTP answer will do); its URL."""
    import httpx

    from previews.redact import redact_url

    url = prefect_api_url(config)
    if url is None:
        return None
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=timeout)
    except httpx.HTTPError as exc:
        raise UnreachableError(
            "Prefect API", f"no answer at {redact_url(url)} ({type(exc).__name__}; PREFECT_API_URL)"
        ) from None
    return url


# --- the parser ---------------------------------------------------------------------------------------------


def global_options(*, suppress: bool) -> argparse.ArgumentParser:
    """``--debug``, ``--json`` and ``--verbose``; ``suppress`` keeps a subcommand from resetting the root's."""
    default: Any = argparse.SUPPRESS if suppress else False
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("global options (before or after the command)")
    group.add_argument("--debug", action="store_true", default=default, help="show tracebacks")
    group.add_argument("--json", action="store_true", default=default, help="print one JSON document only")
    group.add_argument(
        "--verbose", "-v", action="store_true", default=default, help="stream the run's log to the terminal"
    )
    return options


def environment_help(fields: Sequence[str]) -> str:
    """The ``Environment:`` part of a command's help: each variable, what it accepts and its default."""
    lines = ["Environment:"]
    for field in fields:
        info = Settings.model_fields[field]
        notes = [n for n in (info.description or PURPOSE.get(field), allowed_values(field)) if n]
        if info.default not in (None, "", {}) and "SecretStr" not in str(info.annotation):
            notes.append(f"default {info.default}")
        lines.append(f"  {variable_of(field):36} {'; '.join(notes)}".rstrip())
    return "\n".join(lines)


class Commands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Subcommands that take the global options, and whose help lists ``env`` variables and exit codes."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        env: Sequence[str] = kwargs.pop("env", ())
        extra: str = kwargs.pop("epilog", "") or ""
        epilog = "\n\n".join(p for p in (extra, environment_help(env) if env else "", EXIT_CODES) if p)
        kwargs.setdefault("description", kwargs.get("help"))
        parents = [*kwargs.pop("parents", []), global_options(suppress=True)]
        return super().add_parser(  # type: ignore[no-any-return]
            name,
            parents=parents,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,
        )


GLOBAL_OPTIONS = frozenset({"--debug", "--json", "--verbose", "-v"})


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose subcommands (nested ones too) are :class:`Commands`."""

    def add_subparsers(self, **kwargs: Any) -> Any:
        kwargs.setdefault("action", Commands)
        return super().add_subparsers(**kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """A command that adds a global option itself (``--json``) gets the global one, not a conflict."""
        known = self._option_string_actions
        if args and all(a in GLOBAL_OPTIONS and a in known for a in args):
            return known[args[0]]
        return super().add_argument(*args, **kwargs)


def run_handler(args: argparse.Namespace) -> int:
    """Run the chosen command's handler and turn what it raises into the exit-code scheme."""
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except PreviewsError as exc:
        return fail(args, exc)
