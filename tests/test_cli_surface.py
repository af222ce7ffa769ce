"""The ``previews`` command's surface through the real console script: help, global options, exit codes,
settings errors and JSON documents (no service needed: each case fails before one would be)."""

from __future__ import annotations

import json
import os
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from tests.support.console import PREVIEWS
from tests.support.services import free_port

BUILD = ["build", "--repository", "acme/app", "--pr", "1", "--sha", "a" * 40]
COMMANDS = {
    "build": BUILD,
    "cleanup": ["cleanup"],
    "status": ["status", "--repository", "acme/app"],
    "serve": ["serve", "--port", "1"],
    "outbox list": ["outbox", "list"],
    "outbox replay": ["outbox", "replay", "d-1"],
}


def previews(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREVIEWS_")}
    return subprocess.run(
        [PREVIEWS, *args], env={**clean, **(env or {})}, capture_output=True, text=True, timeout=60, cwd=cwd
    )


def test_version() -> None:
    proc = previews("--version")
    assert proc.returncode == 0
    assert proc.stdout == f"previews {version('previews')}\n"


@pytest.mark.parametrize(
    ("command", "variables"),
    [
        (
            ["build"],
            [
                "PREVIEWS_REGISTRY_TOKEN",
                "PREVIEWS_RETRIES                     retries of a transient failure (registry, git, GitHub); 0 to 10; default 3",
                "PREFECT_API_URL",
            ],
        ),
        (
            ["cleanup"],
            [
                "PREVIEWS_CLEANUP_TTL_DAYS",
                "more than 0 and at most 3650; default 30.0",
                "PREVIEWS_REGISTRY_KIND               registry API for listing and deleting tags; 'oci' or 'ghcr'",
            ],
        ),
        (["status"], ["PREFECT_API_URL", "PREVIEWS_UI_URL"]),
        (["serve"], ["PREVIEWS_WEBHOOK_SECRET", "PREVIEWS_MAX_BODY_BYTES", "1 to 4096; default 64"]),
        (
            ["outbox", "list"],
            [
                "PREVIEWS_OUTBOX_PATH               the receiver's SQLite outbox; default .state/outbox.sqlite3"
            ],
        ),
        (["outbox", "replay"], ["PREVIEWS_OUTBOX_PATH"]),
        (["up"], ["PREVIEWS_WEBHOOK_SECRET"]),
    ],
)
def test_every_command_help_lists_its_variables_exit_codes_and_the_global_options(
    command: list[str], variables: list[str]
) -> None:
    proc = previews(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    words = " ".join(text.split())
    assert "Environment:" in text
    for variable in variables:
        assert " ".join(variable.split()) in words
    assert "Exit codes:\n  0  ok\n  1  the run failed\n  2  bad input or configuration" in text
    assert "  3  a required service is unreachable (Docker engine, Prefect API, registry, GitHub)" in text
    for option in ("--debug", "--json", "--verbose"):
        assert option in text


@pytest.mark.parametrize(
    "args",
    [
        ["--json", "outbox", "list"],
        ["outbox", "--json", "list"],
        ["outbox", "list", "--json"],
        ["--debug", "outbox", "list", "--json", "--verbose"],
        ["-v", "outbox", "list", "--debug", "--json"],
    ],
)
def test_global_options_work_before_or_after_the_command(args: list[str], tmp_path: Path) -> None:
    proc = previews(*args, env={"PREVIEWS_OUTBOX_PATH": str(tmp_path / "none.sqlite3")})
    assert proc.returncode == 2, proc.stderr
    assert "unrecognized arguments" not in proc.stderr
    body = json.loads(proc.stdout)
    assert (body["status"], body["error"], body["flow_run_id"]) == ("failed", "InvalidInputError", None)
    assert body["reason"].startswith(f"PREVIEWS_OUTBOX_PATH: no outbox at {tmp_path / 'none.sqlite3'}")
    assert list(tmp_path.iterdir()) == []


def test_debug_and_verbose_are_accepted_after_build() -> None:
    proc = previews("build", "--repository", "acme", "--pr", "1", "--sha", "a" * 40, "--debug", "--verbose")
    assert proc.returncode == 2
    assert "unrecognized arguments" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("invalid input: repository: 'acme'")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_bad_setting_names_the_variable_the_problem_and_the_range_in_every_command(
    command: str, tmp_path: Path
) -> None:
    message = "PREVIEWS_RETRIES=99: must be at most 10 (allowed: 0 to 10)"
    proc = previews(*COMMANDS[command], env={"PREVIEWS_RETRIES": "99"}, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == f"invalid input: {message}\n"
    as_json = previews("--json", *COMMANDS[command], env={"PREVIEWS_RETRIES": "99"}, cwd=tmp_path)
    assert as_json.returncode == 2
    body = json.loads(as_json.stdout)
    assert (body["status"], body["error"], body["reason"]) == ("failed", "SettingsError", message)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_setting_of_each_kind_and_a_secret_one_without_its_value() -> None:
    kinds = {
        "PREVIEWS_TAG_SHA_LENGTH": ("six", "is not an integer (allowed: 7 to 40)"),
        "PREVIEWS_FORK_POLICY": (
            "always",
            "is not one of the allowed values (allowed: 'skip' or 'label' or 'allow')",
        ),
    }
    for variable, (value, problem) in kinds.items():
        proc = previews("cleanup", env={variable: value})
        assert proc.returncode == 2
        assert proc.stderr == f"invalid input: {variable}={value}: {problem}\n"
    proc = previews("cleanup", env={"PREVIEWS_BUILD_SECRET_VALUES": "hunter2", "PREVIEWS_RETRIES": "-1"})
    assert proc.returncode == 2
    assert proc.stderr == "invalid input: PREVIEWS_BUILD_SECRET_VALUES=<hidden>: is not valid JSON\n"
    several = previews("cleanup", env={"PREVIEWS_RETRIES": "-1", "PREVIEWS_CLEANUP_TTL_DAYS": "0"})
    assert several.stderr == (
        "invalid input: PREVIEWS_CLEANUP_TTL_DAYS=0: must be more than 0 (allowed: more than 0 and at most 3650); "
        "also refused: PREVIEWS_RETRIES\n"
    )


@pytest.mark.parametrize("command", ["build", "cleanup", "status"])
def test_an_unreachable_prefect_api_exits_3_in_the_command_json_shape(command: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}/api"
    proc = previews("--json", *COMMANDS[command], env={"PREFECT_API_URL": dead})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    body = json.loads(proc.stdout)
    assert (body["status"], body["error"], body["flow_run_id"]) == ("failed", "UnreachableError", None)
    assert body["reason"] == f"Prefect API: no answer at {dead} (ConnectError; PREFECT_API_URL)"


def test_a_usage_error_exits_2() -> None:
    proc = previews("build", "--repository", "acme/app")
    assert proc.returncode == 2
    assert "the following arguments are required: --pr, --sha" in proc.stderr


def test_a_command_that_adds_a_global_option_itself_still_takes_it_anywhere() -> None:
    from previews_cli.common import CommandParser, global_options

    def register(sub: Any) -> None:  # as a module written before the global options would
        cmd = sub.add_parser("reconcile", help="find unbuilt PR heads")
        cmd.add_argument("--json", action="store_true", help="print one JSON object")
        cmd.add_argument("--verbose", "-v", action="store_true")
        cmd.set_defaults(handler=len)

    root = CommandParser(prog="previews", parents=[global_options(suppress=False)])
    register(root.add_subparsers(dest="command", required=True))
    for argv in (["--json", "reconcile"], ["reconcile", "--json"], ["-v", "reconcile", "--json"]):
        args = root.parse_args(argv)
        assert args.json is True
        assert args.verbose is ("-v" in argv)
    assert root.parse_args(["reconcile"]).json is False
    assert "Exit codes:" in root._subparsers._group_actions[0].choices["reconcile"].format_help()  # type: ignore[union-attr]
