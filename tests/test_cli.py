"""``previews build`` as a person runs it: a subprocess with environment settings, JSON out, exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support.console import PREVIEWS
from tests.support.fake_github import FakeGitHub
from tests.support.sample import make_sample
from tests.support.services import Registry, free_port

pytestmark = pytest.mark.usefixtures("prefect_server", "base_image")


def previews(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PREVIEWS, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_build_pushes_and_prints_json(remotes_root: Path, registry: Registry) -> None:
    sample = make_sample(remotes_root, f"cli-{uuid.uuid4().hex[:8]}")
    env = {
        "PREVIEWS_REGISTRY": registry.host,
        "PREVIEWS_REGISTRY_USERNAME": registry.username,
        "PREVIEWS_REGISTRY_TOKEN": registry.password,
        "PREVIEWS_GIT_URL_TEMPLATE": sample.git_url_template,
        "PREVIEWS_SIBLINGS": sample.siblings,
        "PREVIEWS_BUILD_CONTEXT": "..",
    }
    args = ["build", "--repository", sample.app.repository, "--pr", "31", "--sha", sample.head_sha, "--json"]
    proc = previews(*args, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)  # the one document, nothing else on stdout
    assert proc.stderr == ""  # --json: no progress either
    image = f"{registry.host}/{sample.app.repository.lower()}:pr-31-{sample.head_sha}"
    assert out["status"] == "pushed"
    assert out["image"] == image
    assert out["digest"] == registry.manifest(sample.app.repository.lower(), f"pr-31-{sample.head_sha}")[0]
    assert uuid.UUID(out["flow_run_id"])
    assert registry.password not in proc.stdout + proc.stderr

    skipped = previews("--json", *args[:-1], env={**env, "PREVIEWS_REGISTRY_TOKEN": ""})
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    skipped_body = json.loads(skipped.stdout)
    assert skipped_body["status"] == "skipped"
    assert set(skipped_body) == set(out)

    failed = previews(*args[:-3], "--sha", "e" * 40, "--json", env=env)
    assert failed.returncode == 1
    body = json.loads(failed.stdout)
    assert set(body) == set(out)  # one shape, whatever happened
    assert (body["status"], body["error"]) == ("failed", "GitError")
    assert uuid.UUID(body["flow_run_id"])
    assert "e" * 40 in body["reason"]
    assert "Traceback" not in failed.stderr


def test_build_and_cleanup_show_each_step_with_its_duration_and_the_run_url(
    remotes_root: Path, registry: Registry, github: FakeGitHub
) -> None:
    sample = make_sample(remotes_root, f"cli-{uuid.uuid4().hex[:8]}")
    env = {
        "PREVIEWS_REGISTRY": registry.host,
        "PREVIEWS_REGISTRY_USERNAME": registry.username,
        "PREVIEWS_REGISTRY_TOKEN": registry.password,
        "PREVIEWS_GIT_URL_TEMPLATE": sample.git_url_template,
        "PREVIEWS_SIBLINGS": sample.siblings,
        "PREVIEWS_BUILD_CONTEXT": "..",
        "PREVIEWS_UI_URL": "http://prefect.example.test",
    }
    proc = previews(
        "build", "--repository", sample.app.repository, "--pr", "32", "--sha", sample.head_sha, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [line for line in proc.stderr.splitlines() if line.startswith("step ")]
    names = [line.split(":")[0].removeprefix("step ") for line in steps]
    for step in ("validate", "supersede", "checkout", "build", "push", "notify-infra"):
        assert f"step {step}: started" in steps
        assert re.search(rf"^step {step}: Completed in \d+\.\d\ds$", proc.stderr, re.MULTILINE), proc.stderr
    assert names.index("checkout") < names.index("build") < names.index("push")
    run_line = proc.stderr.splitlines()[0]
    assert re.fullmatch(
        r"flow run pr-32-[0-9a-f]{7}: http://prefect.example.test/runs/flow-run/[0-9a-f-]{36}", run_line
    )
    assert proc.stdout.startswith(f"pushed {registry.host}/")
    assert f"flow run: {run_line.split(': ')[1]}" in proc.stdout
    assert registry.password not in proc.stdout + proc.stderr

    shown = json.loads(
        previews("status", "--repository", sample.app.repository, "--pr", "32", "--json", env={}).stdout
    )
    (run,) = shown["pull_requests"][0]["runs"]
    assert run["trigger"] == {"kind": "cli", "detail": None}
    assert run["state"] == "Completed"
    # cleanup: the same progress, and one document with status and flow_run_id
    github.add_pull(sample.app.repository, 32, head_sha=sample.head_sha)
    cleanup_env = {
        **env,
        "PREVIEWS_IMAGE": sample.app.repository.lower(),
        "PREVIEWS_CLEANUP_REPOSITORY": sample.app.repository,
        "PREVIEWS_GITHUB_API_URL": github.url,
        "PREVIEWS_GITHUB_TOKEN": github.token,
    }
    planned = previews("cleanup", env=cleanup_env)
    assert planned.returncode == 0, planned.stderr[-2000:]
    for step in ("list-versions", "read-pr-states", "plan-cleanup"):
        assert re.search(rf"^step {step}: Completed in \d+\.\d\ds$", planned.stderr, re.MULTILINE), (
            planned.stderr
        )
    assert re.match(r"flow run [a-z]+-[a-z]+: http://prefect.example.test/runs/flow-run/", planned.stderr)
    assert "1 tags, 0 planned removals (dry run: nothing deleted)" in planned.stdout
    body = json.loads(previews("cleanup", "--dry-run", "--json", env=cleanup_env).stdout)
    assert (body["status"], body["dry_run"], body["tags"], body["planned_removals"]) == (
        "planned",
        True,
        1,
        0,
    )
    assert uuid.UUID(body["flow_run_id"])
    assert body["error"] is None
    refused = json.loads(previews("cleanup", "--json", env={**cleanup_env, "PREVIEWS_RETRIES": "11"}).stdout)
    assert set(refused) == set(body)  # one shape, whatever happened
    assert (refused["status"], refused["error"], refused["flow_run_id"]) == ("failed", "SettingsError", None)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--repository", "acme", "--pr", "1", "--sha", "a" * 40], "repository"),
        (["--repository", "acme/app", "--pr", "100000", "--sha", "a" * 40], "pr_number"),
        (["--repository", "acme/app", "--pr", "1", "--sha", "$(id)"], "head_sha"),
    ],
)
def test_invalid_input_exits_2_with_one_sentence(args: list[str], field: str) -> None:
    proc = previews("build", *args, "--debug", env={})
    assert proc.returncode == 2
    assert proc.stderr.startswith("Traceback")  # --debug after the command: the traceback, then the sentence
    assert "previews.errors.ValidationError: " in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(f"invalid input: {field}:")

    plain = previews("build", *args, env={})
    assert plain.returncode == 2
    assert plain.stderr.startswith(f"invalid input: {field}:")
    assert len(plain.stderr.strip().splitlines()) == 1

    as_json = previews("build", *args, "--json", env={})
    assert as_json.returncode == 2
    body = json.loads(as_json.stdout)
    assert (body["status"], body["error"], body["flow_run_id"]) == ("failed", "ValidationError", None)


def test_build_exits_3_when_the_prefect_api_does_not_answer() -> None:
    dead = f"http://127.0.0.1:{free_port()}/api"
    args = ["build", "--repository", "acme/app", "--pr", "1", "--sha", "a" * 40]
    proc = previews(*args, env={"PREFECT_API_URL": dead})
    assert proc.returncode == 3
    assert proc.stderr == f"unreachable: Prefect API: no answer at {dead} (ConnectError; PREFECT_API_URL)\n"


def test_on_a_terminal_the_steps_are_drawn_by_rich(remotes_root: Path) -> None:
    sample = make_sample(remotes_root, f"cli-{uuid.uuid4().hex[:8]}")
    args = ["build", "--repository", sample.app.repository, "--pr", "33", "--sha", sample.head_sha]
    leader, follower = pty.openpty()
    env = {
        **os.environ,
        "PREVIEWS_GIT_URL_TEMPLATE": sample.git_url_template,
        "COLUMNS": "120",
        "TERM": "xterm",
    }
    with subprocess.Popen(
        [PREVIEWS, *args], stdout=subprocess.PIPE, stderr=follower, env=env, text=True
    ) as proc:
        os.close(follower)
        out, _ = proc.communicate(timeout=300)
        screen = b""
        with contextlib.suppress(OSError):  # EIO once the child has closed its end
            while chunk := os.read(leader, 65536):
                screen += chunk
    os.close(leader)
    text = screen.decode()
    assert proc.returncode == 0, text
    assert out.startswith("skipped: ")  # no registry credentials: the plan skips before the checkout
    assert "\x1b[" in text  # styled for a terminal
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert re.search(
        r"flow run pr-33-[0-9a-f]{7}: http://127\.0\.0\.1:\d+/runs/flow-run/[0-9a-f-]{36}", plain
    ), plain
    assert re.search(r"✓ validate Completed in \d+\.\d\ds", plain), plain
    assert re.search(r"✓ supersede Completed in \d+\.\d\ds", plain), plain
    assert "step validate: started" not in plain  # the plain lines are for pipes and files
