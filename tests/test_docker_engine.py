"""The Docker engine adapter against the real engine, the real registry and a fault proxy in front of it.

Builds go through BuildKit (the Docker CLI); pushes through docker-py.
"""

from __future__ import annotations

import io
import json
import secrets
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import httpx
import pytest
from pydantic import SecretStr

from previews.docker_engine import (
    BuildSpec,
    BuiltImage,
    DockerEngine,
    PushedImage,
    RegistryLogin,
    classify_push_error,
    clean_line,
    resolve_build_cli,
)
from previews.errors import (
    AuthError,
    BuildError,
    PushError,
    TagPolicyError,
    TransientBuildError,
    TransientPushError,
    ValidationError,
)
from tests.support.faultproxy import FaultProxy
from tests.support.processes import processes_with, wait_until_gone, wait_until_running
from tests.support.services import Registry
from tests.support.socket_proxy import EngineProxy, socket_dir

REPO = "enginetest/app"

# What a production Dockerfile looks like: a stage nobody uses (and that fails), a cache mount (a Go module
# or npm cache) and a secret mount (a private-module token).
PRODUCTION = """\
FROM {base} AS base
ARG GREETING=hello
RUN echo "greeting=$GREETING" && echo "$GREETING" > /greeting.txt

FROM base AS never-used
RUN echo never-used-stage-ran && exit 1

FROM base AS final
RUN --mount=type=cache,target=/cache \\
    ls /cache && echo "$(cat /greeting.txt)" > /cache/seen-$(cat /greeting.txt) && echo cache-ok
RUN --mount=type=secret,id=token \\
    test "$(wc -c < /run/secrets/token)" -gt 10 && echo "secret-bytes=$(wc -c < /run/secrets/token)"
COPY payload.txt /payload.txt
RUN cat /greeting.txt /payload.txt

FROM final AS debug
RUN echo this-stage-must-not-run
"""


def new_tag(pr: int = 1) -> str:
    return f"pr-{pr}-{secrets.token_hex(20)}"


@pytest.fixture
def engine(docker_client: docker.DockerClient) -> DockerEngine:
    return DockerEngine(docker_client)


@pytest.fixture
def local_refs(engine: DockerEngine) -> Iterator[list[str]]:
    """Image references a test created locally; removed afterwards."""
    refs: list[str] = []
    yield refs
    for ref in refs:
        engine.remove(ref)


@pytest.fixture
def context(tmp_path: Path, base_image: str) -> Path:
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "Dockerfile").write_text(PRODUCTION.format(base=base_image))
    (root / "payload.txt").write_text(f"payload {secrets.token_hex(8)}\n")
    return root


@pytest.fixture(scope="module")
def small_image(
    docker_client: docker.DockerClient, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One small image (unique content) for the push tests; its id."""
    root = tmp_path_factory.mktemp("small")
    (root / "Dockerfile").write_text(f"FROM {base_image}\nRUN echo {secrets.token_hex(8)} > /unique.txt\n")
    ref = f"enginetest-local/small:{secrets.token_hex(6)}"  # a tag of its own: other runs share the engine
    built = DockerEngine(docker_client).build(BuildSpec(root, "Dockerfile", ref))
    yield built.image_id
    DockerEngine(docker_client).remove(ref)


def tag_for_push(engine: DockerEngine, image_id: str, host: str, tag: str, local_refs: list[str]) -> str:
    name = f"{host}/{REPO}"
    engine.tag(image_id, f"{name}:{tag}")
    local_refs.append(f"{name}:{tag}")
    return name


def push(
    engine: DockerEngine,
    name: str,
    tag: str,
    registry: Registry,
    *,
    password: str | None = None,
    **kwargs: object,
) -> PushedImage:
    return engine.push(
        name,
        tag,
        username=registry.username,
        password=SecretStr(registry.password if password is None else password),
        **kwargs,  # type: ignore[arg-type]
    )


def image_tarball(client: docker.DockerClient, ref: str) -> bytes:
    """Every byte of ``docker save``: layers, config, history, labels."""
    return b"".join(client.images.get(ref).save(named=True))


def layer_files(tarball: bytes) -> dict[str, bytes]:
    """The files inside every layer of a ``docker save`` tarball."""
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tarball)) as outer:
        for member in outer.getmembers():
            if member.name.endswith("layer.tar"):
                layer = outer.extractfile(member)
                assert layer is not None
                with tarfile.open(fileobj=io.BytesIO(layer.read())) as inner:
                    for item in inner.getmembers():
                        if item.isfile():
                            data = inner.extractfile(item)
                            files[item.name] = data.read() if data else b""
    return files


# -- build -------------------------------------------------------------------------------------------------------


def test_a_production_dockerfile_builds_with_buildkit_and_pushes(
    engine: DockerEngine, registry: Registry, context: Path, local_refs: list[str]
) -> None:
    tag = new_tag()
    ref = f"{registry.host}/{REPO}:{tag}"
    local_refs.append(ref)
    lines: list[str] = []
    token = "tok-" + secrets.token_hex(16)
    labels = {"org.opencontainers.image.revision": tag[-40:], "previews.pr": "1"}
    greeting = f"hi-{secrets.token_hex(4)}"  # a fresh value, so the steps that use it are not cached
    spec = BuildSpec(
        context, "Dockerfile", ref, target="final", build_args={"GREETING": greeting}, labels=labels
    )

    built = engine.build(spec, on_line=lines.append, secrets={"token": SecretStr(token)})

    cli, _ = resolve_build_cli()
    # the run log says which client builds, and why others were passed over
    assert cli.describe() in lines[:3]
    assert built.image_id.startswith("sha256:")
    assert built.size_bytes > 0
    assert any(line.endswith(f"greeting={greeting}") for line in lines)  # build arg reached the RUN, live
    assert any(line.endswith("cache-ok") for line in lines)  # RUN --mount=type=cache works
    assert any(line.endswith(f"secret-bytes={len(token)}") for line in lines)  # the secret reached the RUN
    assert not any("never-used-stage-ran" in line for line in lines)  # the unused (failing) stage was skipped
    assert not any("this-stage-must-not-run" in line for line in lines)  # --target stopped at `final`
    assert all(line == line.strip("\n") and line.strip() and "\x1b" not in line for line in lines)
    assert built.steps == 5  # base 2/2, final 1-4/4 (a FROM is not a step that is built)

    # the secret is nowhere: not in the output, the image's files, its config, history or labels
    assert not any(token in line for line in lines)
    tarball = image_tarball(engine.client, ref)
    assert token.encode() not in tarball
    assert not any(token.encode() in data for data in layer_files(tarball).values())
    history = json.dumps(engine.client.api.history(ref))
    assert token not in history
    assert "/run/secrets/token" in history  # the instruction is there, not its value

    pushed = push(engine, f"{registry.host}/{REPO}", tag, registry)

    digest, _ = registry.manifest(REPO, tag)
    assert pushed.digest == digest
    config = registry.image_config(REPO, tag)["config"]
    assert isinstance(config, dict)
    assert config["Labels"] == labels
    assert token not in json.dumps(registry.image_config(REPO, tag))

    again_lines: list[str] = []
    again = engine.build(spec, on_line=again_lines.append, secrets={"token": SecretStr(token)})
    assert again.image_id == built.image_id
    assert again.steps == built.steps
    assert again.cached_steps == again.steps  # everything came from BuildKit's cache
    other = engine.build(
        BuildSpec(context, "Dockerfile", ref, target="final", build_args={"GREETING": greeting + "x"}),
        on_line=again_lines.append,
        secrets={"token": SecretStr(token)},
    )
    assert other.cached_steps == 0  # the changed arg reran every step
    assert any(
        f"seen-{greeting}" in line for line in again_lines
    )  # the cache mount kept the first build's file


def test_a_secret_is_masked_even_when_the_dockerfile_prints_it(
    engine: DockerEngine, tmp_path: Path, base_image: str, local_refs: list[str]
) -> None:
    token = "leak-" + secrets.token_hex(12)
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base_image}\nRUN --mount=type=secret,id=tok echo leaked=$(cat /run/secrets/tok) {secrets.token_hex(4)}\n"
    )
    ref = "enginetest-local/leaky:1"
    local_refs.append(ref)
    lines: list[str] = []
    engine.build(
        BuildSpec(tmp_path, "Dockerfile", ref), on_line=lines.append, secrets={"tok": SecretStr(token)}
    )
    assert any(line.endswith("leaked=***") or "leaked=*** " in line for line in lines)
    assert not any(token in line for line in lines)


def test_a_failing_step_is_one_sentence_quoting_it(
    engine: DockerEngine, tmp_path: Path, base_image: str, local_refs: list[str]
) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {base_image}\nRUN echo boom-marker && exit 3\n")
    ref = "enginetest-local/failing:1"
    local_refs.append(ref)
    lines: list[str] = []

    with pytest.raises(BuildError) as caught:
        engine.build(BuildSpec(tmp_path, "Dockerfile", ref), on_line=lines.append)

    error = caught.value
    assert not isinstance(error, TransientBuildError)
    assert (
        error.reason == "docker build failed: step [2/2] RUN echo boom-marker && exit 3 failed: exit code: 3"
    )
    assert any(line.endswith("boom-marker") for line in error.log_tail)
    assert any(line.endswith("boom-marker") for line in lines)


@pytest.mark.parametrize(
    ("dockerfile", "reason"),
    [
        ("FROBNICATE all the things", "unknown instruction: FROBNICATE"),
        ("COPY missing.txt /x", 'step [2/2] COPY missing.txt /x failed: "/missing.txt" not found'),
    ],
)
def test_dockerfile_mistakes_are_permanent_build_errors(
    engine: DockerEngine, tmp_path: Path, base_image: str, dockerfile: str, reason: str
) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {base_image}\n{dockerfile}\n")
    with pytest.raises(BuildError) as caught:
        engine.build(BuildSpec(tmp_path, "Dockerfile", "enginetest-local/bad:1"))
    assert reason in caught.value.reason
    assert not isinstance(caught.value, TransientBuildError)


@pytest.mark.parametrize(
    ("dockerfile", "reason"),
    [
        ("../Dockerfile", "leaves the build context"),
        ("sub/../../Dockerfile", "leaves the build context"),
        ("/etc/passwd", "relative to the build context"),
        ("", "relative to the build context"),
        ("link/Dockerfile", "leaves the build context"),
        ("missing.Dockerfile", "not a file"),
    ],
)
def test_dockerfile_outside_the_context_is_refused(
    engine: DockerEngine, tmp_path: Path, base_image: str, dockerfile: str, reason: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "Dockerfile").write_text(f"FROM {base_image}\n")
    (tmp_path / "Dockerfile").write_text(f"FROM {base_image}\n")
    context = tmp_path / "ctx"
    (context / "sub").mkdir(parents=True)
    (context / "link").symlink_to(outside)
    lines: list[str] = []
    with pytest.raises(ValidationError, match=reason) as caught:
        engine.build(BuildSpec(context, dockerfile, "enginetest-local/escape:1"), on_line=lines.append)
    assert caught.value.field == "dockerfile"
    assert lines == []  # refused before the engine was asked


def test_relative_context_is_refused(engine: DockerEngine) -> None:
    with pytest.raises(ValidationError) as caught:
        engine.build(BuildSpec(Path("relative/dir"), "Dockerfile", "enginetest-local/x:1"))
    assert caught.value.field == "context_dir"


def sleeping_dockerfile(base_image: str, marker: str) -> str:
    """A RUN that prints, then sleeps in a child process whose command line carries ``marker``."""
    return f"FROM {base_image}\nRUN echo sleeping; sh -c 'sleep 600; echo {marker}'; true\n"


def test_build_timeout_stops_the_cli_and_the_buildkit_build(
    engine: DockerEngine, tmp_path: Path, base_image: str
) -> None:
    marker = f"timeout-{secrets.token_hex(6)}"
    (tmp_path / "Dockerfile").write_text(sleeping_dockerfile(base_image, marker))
    lines: list[str] = []
    with pytest.raises(BuildError, match="timed out after 4s") as caught:
        engine.build(
            BuildSpec(tmp_path, "Dockerfile", "enginetest-local/slow:1", timeout=4), on_line=lines.append
        )
    assert not isinstance(caught.value, TransientBuildError)
    assert any(line.endswith("sleeping") for line in caught.value.log_tail)
    assert wait_until_gone(marker) == []  # BuildKit stopped the RUN step: its processes are gone


def test_a_cancelled_caller_stops_the_build(tmp_path: Path, base_image: str) -> None:
    """The flow-run process gets SIGTERM when its run is cancelled; Prefect raises in the main thread then.
    Here a child process does the same: the build's CLI and BuildKit's RUN processes must go with it."""
    marker = f"cancel-{secrets.token_hex(6)}"
    (tmp_path / "Dockerfile").write_text(sleeping_dockerfile(base_image, marker))
    script = textwrap.dedent(
        f"""
        import signal, sys
        import docker
        from pathlib import Path
        from previews.docker_engine import BuildSpec, DockerEngine

        class Cancelled(BaseException):
            pass

        def on_term(*_):
            raise Cancelled()

        signal.signal(signal.SIGTERM, on_term)
        engine = DockerEngine(docker.from_env())
        try:
            engine.build(BuildSpec(Path({str(tmp_path)!r}), "Dockerfile", "enginetest-local/cancel:1"),
                         on_line=lambda line: print(line, flush=True))
        except Cancelled:
            print("cancelled-cleanly", flush=True)
            sys.exit(3)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=Path(__file__).parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_running(marker)
        cli_pids = [p for p in processes_with("enginetest-local/cancel:1") if p != child.pid]
        assert cli_pids  # the docker CLI that runs the build
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 3, out
    assert "cancelled-cleanly" in out
    assert wait_until_gone(marker) == []  # BuildKit's RUN processes are gone, not just the CLI
    assert all(not Path(f"/proc/{pid}").exists() for pid in cli_pids)


def test_an_engine_that_goes_away_mid_build_is_transient(tmp_path: Path, base_image: str) -> None:
    marker = f"gone-{secrets.token_hex(6)}"
    (tmp_path / "Dockerfile").write_text(sleeping_dockerfile(base_image, marker))
    with socket_dir() as sockets, EngineProxy(sockets / "engine.sock") as proxy:
        engine = DockerEngine(docker.DockerClient(base_url=proxy.host, timeout=60), docker_host=proxy.host)
        outcome: list[BaseException] = []

        def build() -> None:
            try:
                engine.build(BuildSpec(tmp_path, "Dockerfile", "enginetest-local/gone:1", timeout=120))
            except BaseException as exc:  # collected for the assertions below
                outcome.append(exc)

        worker = threading.Thread(target=build)
        worker.start()
        wait_until_running(marker)
        proxy.cut()
        worker.join(timeout=60)
    assert not worker.is_alive()
    assert len(outcome) == 1
    error = outcome[0]
    assert isinstance(error, TransientBuildError), error
    assert str(error).startswith("lost the Docker engine during the build: ")
    assert wait_until_gone(marker) == []  # the engine cancelled the build its client left


def test_the_build_client_gets_registry_credentials_only_in_a_private_config(
    engine: DockerEngine, registry: Registry, tmp_path: Path, base_image: str, local_refs: list[str]
) -> None:
    """A base image in the push registry is pulled by BuildKit with the push credentials (as after
    `docker login` in the workflow); the config holding them is gone afterwards and never in the output."""
    base = f"{registry.host}/enginetest/private-base-{secrets.token_hex(4)}"
    source = tmp_path / "base"
    source.mkdir()
    (source / "Dockerfile").write_text(f"FROM {base_image}\nRUN echo {secrets.token_hex(8)} > /base.txt\n")
    engine.build(BuildSpec(source, "Dockerfile", f"{base}:1"))
    local_refs.append(f"{base}:1")
    for _chunk in engine.client.api.push(
        base,
        tag="1",
        stream=True,
        decode=True,
        auth_config={"username": registry.username, "password": registry.password},
    ):
        pass
    engine.remove(f"{base}:1")
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base}:1\nRUN echo built-on-private-base {secrets.token_hex(4)}\n"
    )
    ref = "enginetest-local/on-private-base:1"
    local_refs.append(ref)
    before = set(Path(tempfile.gettempdir()).glob("previews-build-*"))
    lines: list[str] = []
    login = RegistryLogin(registry.host, registry.username, SecretStr(registry.password))

    engine.build(BuildSpec(tmp_path, "Dockerfile", ref), on_line=lines.append, login=login)

    assert any("built-on-private-base" in line for line in lines)
    assert not any(registry.password in line for line in lines)
    assert set(Path(tempfile.gettempdir()).glob("previews-build-*")) == before  # the private config is gone
    with pytest.raises(BuildError):  # without the login the registry refuses the base image
        engine.build(BuildSpec(tmp_path, "Dockerfile", ref + "-anon"))


# -- push --------------------------------------------------------------------------------------------------------


def test_push_returns_the_digest_the_registry_serves(
    engine: DockerEngine, registry: Registry, small_image: str, local_refs: list[str]
) -> None:
    tag = new_tag(2)
    name = tag_for_push(engine, small_image, registry.host, tag, local_refs)
    lines: list[str] = []

    pushed = push(engine, name, tag, registry, on_line=lines.append)

    digest, manifest = registry.manifest(REPO, tag)
    assert pushed.digest == digest
    assert pushed.reference == f"{name}:{tag}"
    assert pushed.duration_s > 0
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert any(line.startswith(f"{tag}: digest: {digest}") for line in lines)
    assert tag in registry.tags(REPO)


@pytest.mark.parametrize(
    "tag",
    [
        "latest",
        "master-abc",
        "main-1",
        "v1.2.3",
        "pr-1-xyz",
        "master",
        "pr-0-abcdef1",
        "PR-1-ABCDEF1",
        "pr-1-abc\n",
    ],
)
def test_protected_and_foreign_tags_are_refused_before_any_network_call(
    engine: DockerEngine, registry: Registry, small_image: str, local_refs: list[str], tag: str
) -> None:
    before = registry.tags(REPO)
    with FaultProxy(upstream=registry.host) as proxy:
        name = f"{proxy.host}/{REPO}"
        if "\n" not in tag:
            engine.tag(small_image, f"{name}:{tag.lower()}")
            local_refs.append(f"{name}:{tag.lower()}")
        with pytest.raises(TagPolicyError):
            push(engine, name, tag, registry)
        assert proxy.requests == 0
    assert registry.tags(REPO) == before


def test_wrong_password_is_an_auth_error_without_the_password(
    engine: DockerEngine, registry: Registry, small_image: str, local_refs: list[str]
) -> None:
    tag = new_tag(3)
    name = tag_for_push(engine, small_image, registry.host, tag, local_refs)
    wrong = "definitely-wrong-password-" + secrets.token_hex(6)
    lines: list[str] = []

    with pytest.raises(AuthError) as caught:
        push(engine, name, tag, registry, password=wrong, on_line=lines.append)

    assert caught.value.status == 401
    assert "unauthorized" in str(caught.value)
    assert wrong not in str(caught.value)
    assert not any(wrong in line for line in lines)
    assert tag not in registry.tags(REPO)


def test_a_registry_echoing_the_password_is_redacted(
    engine: DockerEngine, registry: Registry, small_image: str, local_refs: list[str]
) -> None:
    tag = new_tag(4)
    with FaultProxy(upstream=registry.host) as proxy:
        name = tag_for_push(engine, small_image, proxy.host, tag, local_refs)
        echoed = json.dumps({"errors": [{"code": "MANIFEST_INVALID", "message": f"bad {registry.password}"}]})
        proxy.fail_next(5, status=400, body=echoed.encode(), method="PUT", path="/manifests/")
        lines: list[str] = []
        with pytest.raises(PushError) as caught:
            push(engine, name, tag, registry, on_line=lines.append)
    assert not isinstance(caught.value, TransientPushError)
    assert "manifest invalid: bad ***" in str(caught.value)
    assert registry.password not in str(caught.value)
    assert not any(registry.password in line for line in lines)


def test_denied_with_valid_credentials_is_permanent(
    engine: DockerEngine, registry: Registry, small_image: str, local_refs: list[str]
) -> None:
    """The registry knows the (valid) credentials and refuses this repository: a successful login proves
    nothing about that, so the push is not retried."""
    tag = new_tag(12)
    with FaultProxy(upstream=registry.host) as proxy:
        name = tag_for_push(engine, small_image, proxy.host, tag, local_refs)
        denied = b'{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}'
        proxy.fail_next(
            10_000,
            status=403,
            body=denied,
            headers={"Content-Type": "application/json"},
            method="PUT",
            path="/manifests/",
        )
        with pytest.raises(AuthError) as caught:
            push(engine, name, tag, registry)
    assert caught.value.status == 403
    assert "denied" in str(caught.value)
    assert not isinstance(caught.value, TransientPushError)
    assert tag not in registry.tags(REPO)


@pytest.mark.slow
def test_a_registry_failing_every_request_is_transient(
    engine: DockerEngine, registry: Registry, small_image: str, local_refs: list[str]
) -> None:
    """The engine itself retries layer uploads 5 times (5+10+15+20 s), so this takes ~50 s."""
    tag = new_tag(5)
    with FaultProxy(upstream=registry.host) as proxy:
        name = tag_for_push(engine, small_image, proxy.host, tag, local_refs)
        proxy.fail_next(10_000, status=503)
        lines: list[str] = []
        with pytest.raises(TransientPushError) as caught:
            push(engine, name, tag, registry, on_line=lines.append)
        assert caught.value.status == 503
        assert proxy.requests == proxy.faults_served > 5
    retry_lines = [line for line in lines if "Retrying in" in line]
    assert 0 < len(retry_lines) <= 20  # the engine's per-second countdown is shown once per round
    assert tag not in registry.tags(REPO)


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ({"status": 503, "method": "PUT", "path": "/manifests/"}, 503),
        ({"status": 500, "method": "PUT", "path": "/manifests/"}, 500),
        (
            {
                "status": 429,
                "body": b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}',
                "headers": {"Content-Type": "application/json"},
            },
            429,
        ),
    ],
    ids=["manifest-503", "manifest-500", "all-429"],
)
def test_registry_5xx_and_429_are_transient(
    engine: DockerEngine,
    registry: Registry,
    small_image: str,
    local_refs: list[str],
    fault: dict[str, object],
    status: int,
) -> None:
    tag = new_tag(6)
    with FaultProxy(upstream=registry.host) as proxy:
        name = tag_for_push(engine, small_image, proxy.host, tag, local_refs)
        proxy.fail_next(10_000, **fault)  # type: ignore[arg-type]
        with pytest.raises(TransientPushError) as caught:
            push(engine, name, tag, registry)
        assert proxy.faults_served >= 1
    assert caught.value.status == status
    assert tag not in registry.tags(REPO)


def test_connection_reset_is_transient(
    engine: DockerEngine, registry: Registry, small_image: str, local_refs: list[str]
) -> None:
    tag = new_tag(7)
    with FaultProxy(upstream=registry.host) as proxy:
        name = tag_for_push(engine, small_image, proxy.host, tag, local_refs)
        proxy.reset_next(1)
        with pytest.raises(TransientPushError, match="connection reset by peer"):
            push(engine, name, tag, registry)
        assert [s.outcome for s in proxy.seen] == ["reset"]


@pytest.mark.parametrize("failures", [1, 3, 6])
def test_after_503s_clear_a_second_push_succeeds(
    engine: DockerEngine, registry: Registry, small_image: str, local_refs: list[str], failures: int
) -> None:
    """A failed ``/v2/`` ping makes the engine push without credentials: the "unauthorized" that follows
    is recognised as transient by checking the credentials, so the flow retries instead of giving up."""
    tag = new_tag(8)
    with FaultProxy(upstream=registry.host) as proxy:
        name = tag_for_push(engine, small_image, proxy.host, tag, local_refs)
        proxy.fail_next(failures, status=503)
        with pytest.raises(TransientPushError):
            push(engine, name, tag, registry)
        assert proxy.faults_served == failures
        assert proxy.pending_faults == 0

        pushed = push(engine, name, tag, registry)

        manifests = [s for s in proxy.seen if s.method == "PUT" and "/manifests/" in s.path]
        assert [s.outcome for s in manifests] == [201]
    digest, _ = registry.manifest(REPO, tag)
    assert pushed.digest == digest


def test_stalled_registry_push_times_out(
    engine: DockerEngine, registry: Registry, small_image: str, local_refs: list[str]
) -> None:
    tag = new_tag(9)
    with FaultProxy(upstream=registry.host) as proxy:
        name = tag_for_push(engine, small_image, proxy.host, tag, local_refs)
        proxy.stall_next(100, seconds=120, path="/blobs/")
        start = time.monotonic()
        with pytest.raises(TransientPushError, match="timed out after 3s"):
            push(engine, name, tag, registry, timeout=3)
        assert 3 <= time.monotonic() - start < 10
        assert any(s.outcome == "stall" for s in proxy.seen)
    assert tag not in registry.tags(REPO)


def test_pushing_an_image_the_engine_does_not_have_is_permanent(
    engine: DockerEngine, registry: Registry
) -> None:
    tag = new_tag(10)
    with pytest.raises(PushError) as caught:
        push(engine, f"{registry.host}/{REPO}-missing", tag, registry)
    assert not isinstance(caught.value, TransientPushError | AuthError)


@pytest.mark.parametrize("name", ["", "127.0.0.1:5000/app:tag", "app@sha256:abc", "has space/app"])
def test_image_name_with_a_tag_or_junk_is_refused(
    engine: DockerEngine, registry: Registry, name: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        push(engine, name, new_tag(), registry)
    assert caught.value.field == "image_name"


def test_remove_is_best_effort(engine: DockerEngine, small_image: str) -> None:
    ref = "enginetest-local/remove-me:1"
    engine.tag(small_image, ref)
    engine.remove(ref)
    with pytest.raises(docker.errors.ImageNotFound):
        engine.client.images.get(ref)
    engine.remove(ref)  # already gone: no error
    engine.client.images.get(small_image)  # other references of the image untouched


# -- the fault proxy itself --------------------------------------------------------------------------------------


def test_fault_proxy_keeps_location_pointing_at_itself(registry: Registry) -> None:
    with FaultProxy(upstream=registry.host) as proxy:
        auth = (registry.username, registry.password)
        with httpx.Client(base_url=proxy.url, auth=auth, timeout=10) as http:
            started = http.post(f"/v2/{REPO}-proxy/blobs/uploads/")
            assert started.status_code == 202
            assert started.headers["Location"].startswith(f"{proxy.url}/v2/{REPO}-proxy/blobs/uploads/")
            proxy.fail_next(2, status=429, headers={"Retry-After": "7"})
            assert http.get("/v2/").status_code == 429
            limited = http.get("/v2/")
            assert limited.headers["Retry-After"] == "7"
            assert http.get("/v2/").status_code == 200
        assert proxy.requests == 4
        assert proxy.faults_served == 2


# -- pure helpers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "kind", "status"),
    [
        ("unauthorized: authentication required", AuthError, 401),
        ("denied: requested access to the resource is denied", AuthError, 403),
        ("received unexpected HTTP status: 403 Forbidden", AuthError, 403),
        ("manifest invalid: timeout must be a positive number", PushError, None),
        ("unknown: the timeout policy of this repository refuses the push", PushError, None),
        (
            "net/http: request canceled (Client.Timeout exceeded while awaiting headers)",
            TransientPushError,
            None,
        ),
        ('Put "http://r/v2/x": dial tcp 10.0.0.1:443: i/o timeout', TransientPushError, None),
        ("read tcp 10.0.0.2:5000: connection timed out", TransientPushError, None),
        ("received unexpected HTTP status: 503 Service Unavailable", TransientPushError, 503),
        ("received unexpected HTTP status: 502 Bad Gateway", TransientPushError, 502),
        ("toomanyrequests: slow down", TransientPushError, 429),
        ('Put "http://r/v2/x": read: connection reset by peer', TransientPushError, None),
        ('Patch "http://r/v2/x/blobs/uploads/1": EOF', TransientPushError, None),
        ("net/http: TLS handshake timeout", TransientPushError, None),
        ("manifest invalid: manifest invalid", PushError, None),
        ("blob upload invalid: size 512 does not match", PushError, None),
        ("unexpected status code 504 Gateway Timeout", TransientPushError, 504),
        ("received unexpected HTTP status: 401 Unauthorized", AuthError, 401),
        ("name unknown: repository name not known to registry", PushError, None),
    ],
)
def test_push_errors_are_classified(message: str, kind: type[Exception], status: int | None) -> None:
    error = classify_push_error(message)
    assert type(error) is kind
    assert error.status == status
    assert message in str(error)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("\x1b[1mStep 1/2\x1b[0m : FROM x", "Step 1/2 : FROM x"),
        ("progress 10%\rprogress 100%\r", "progress 100%"),
        ("trailing   ", "trailing"),
    ],
)
def test_output_lines_are_cleaned(raw: str, clean: str) -> None:
    assert clean_line(raw) == clean


def test_built_image_is_a_plain_value() -> None:
    built = BuiltImage(image_id="sha256:1", size_bytes=1, steps=2, cached_steps=1, duration_s=0.5)
    with pytest.raises(AttributeError):
        built.steps = 3  # type: ignore[misc]


def test_a_large_layer_streams_through_the_proxy_and_the_engine_retries_a_failed_upload(
    engine: DockerEngine, registry: Registry, tmp_path: Path, base_image: str, local_refs: list[str]
) -> None:
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base_image}\nRUN head -c 24000000 /dev/urandom > /big.bin && echo {secrets.token_hex(4)}\n"
    )
    tag = new_tag(11)
    with FaultProxy(upstream=registry.host) as proxy:
        name = f"{proxy.host}/{REPO}-big"
        local_refs.append(f"{name}:{tag}")
        engine.build(BuildSpec(tmp_path, "Dockerfile", f"{name}:{tag}"))
        proxy.fail_next(1, status=502, method="PATCH")
        lines: list[str] = []

        pushed = push(engine, name, tag, registry, on_line=lines.append)

        assert any("Retrying in 5 seconds" in line for line in lines)  # the engine retried the layer itself
        uploads = [s for s in proxy.seen if s.method in ("PATCH", "PUT") and "/blobs/uploads/" in s.path]
        assert any(s.outcome == 502 for s in uploads)
        assert any(s.outcome in (201, 202) for s in uploads)
    digest, manifest = registry.manifest(f"{REPO}-big", tag)
    assert pushed.digest == digest
    layers = manifest["layers"]
    assert isinstance(layers, list)
    assert max(int(layer["size"]) for layer in layers) > 20_000_000
