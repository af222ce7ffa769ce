"""The pure side of BuildKit builds: client choice, argv, build secrets and reading the plain progress log."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from previews.core.buildkit import (
    BuildCli,
    BuildLog,
    BuildSecret,
    CliProbe,
    build_argv,
    choose_build_cli,
    parse_build_secrets,
    resolve_build_secrets,
)
from previews.errors import ValidationError

V28 = "Docker version 28.2.2, build e6534b4"
V20 = "Docker version 20.10.24+dfsg1, build 297e128"


@pytest.mark.parametrize(
    ("probes", "path", "mode"),
    [
        # this machine: Docker 28 first on PATH without buildx, Debian's 20.10 client behind it
        (
            [CliProbe("/usr/local/bin/docker", V28, False), CliProbe("/usr/bin/docker", V20, False)],
            "/usr/bin/docker",
            "docker-buildkit",
        ),
        # buildx anywhere wins, even behind a client that could use DOCKER_BUILDKIT=1
        (
            [CliProbe("/usr/bin/docker", V20, False), CliProbe("/opt/docker", V28, True)],
            "/opt/docker",
            "buildx",
        ),
        ([CliProbe("/usr/bin/docker", V20, True)], "/usr/bin/docker", "buildx"),
        (
            [CliProbe("/a/docker", "Docker version 18.09.1, build 4c52b90", False)],
            "/a/docker",
            "docker-buildkit",
        ),
        ([CliProbe("/a/docker", "Docker version 22.06.0, build 1", False)], "/a/docker", "docker-buildkit"),
    ],
)
def test_the_build_client_is_chosen_deliberately(probes: list[CliProbe], path: str, mode: str) -> None:
    cli, _ = choose_build_cli(probes)
    assert (cli.path, cli.mode) == (path, mode)


def test_why_a_client_was_passed_over_is_said() -> None:
    cli, skipped = choose_build_cli(
        [CliProbe("/usr/local/bin/docker", V28, False), CliProbe("/usr/bin/docker", V20, False)]
    )
    assert skipped == (
        "/usr/local/bin/docker (28.2): no buildx plugin, and Docker 23+ clients refuse DOCKER_BUILDKIT=1 without it",
    )
    assert cli.describe() == f"BuildKit through /usr/bin/docker ({V20}): docker build with DOCKER_BUILDKIT=1"


@pytest.mark.parametrize(
    "probes",
    [
        [],
        [CliProbe("/usr/local/bin/docker", V28, False)],
        [CliProbe("/x/docker", None, False)],
        [CliProbe("/x/docker", "Docker version 17.12.1-ce, build 7390fc6", False)],
    ],
)
def test_no_usable_client_is_a_clear_error(probes: list[CliProbe]) -> None:
    with pytest.raises(ValidationError, match="no Docker client here can build with BuildKit") as caught:
        choose_build_cli(probes)
    assert caught.value.field == "PREVIEWS_DOCKER_CLI"


def test_argv_keeps_the_production_settings_and_names_secrets_by_id_only() -> None:
    cli = BuildCli("/usr/bin/docker", "docker-buildkit", V20)
    argv = build_argv(
        cli,
        dockerfile="app/Dockerfile",
        image_ref="r:5000/acme/app:pr-1-abc1234",
        iidfile="/tmp/x/iid",
        target="final",
        build_args={"B": "2", "A": "1", "BUILDKIT_INLINE_CACHE": "0"},
        labels={"org.opencontainers.image.revision": "abc"},
        cache_from=["r:5000/acme/app:pr-1-0000000"],
        secret_ids=["npm", "go"],
    )
    assert argv == [
        "/usr/bin/docker", "build", "--progress=plain", "--file", "app/Dockerfile",
        "--tag", "r:5000/acme/app:pr-1-abc1234", "--iidfile", "/tmp/x/iid", "--target", "final",
        "--build-arg", "A=1", "--build-arg", "B=2", "--build-arg", "BUILDKIT_INLINE_CACHE=1",
        "--label", "org.opencontainers.image.revision=abc",
        "--cache-from", "r:5000/acme/app:pr-1-0000000",
        "--secret", "id=npm,env=PREVIEWS_BUILD_SECRET_0", "--secret", "id=go,env=PREVIEWS_BUILD_SECRET_1",
        ".",
    ]  # fmt: skip


def test_buildx_argv_loads_the_image_into_the_engine() -> None:
    argv = build_argv(BuildCli("/d", "buildx", V28), dockerfile="Dockerfile", image_ref="a:b", iidfile="/i")
    assert argv[:4] == ["/d", "buildx", "build", "--load"]


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("", ()),
        ("npm=NPM_TOKEN", (BuildSecret("npm", "NPM_TOKEN"),)),
        (
            " npm = NPM_TOKEN , go.mod=GOPRIVATE_TOKEN ,",
            (BuildSecret("npm", "NPM_TOKEN"), BuildSecret("go.mod", "GOPRIVATE_TOKEN")),
        ),
    ],
)
def test_build_secrets_setting(value: str, parsed: tuple[BuildSecret, ...]) -> None:
    assert parse_build_secrets(value) == parsed


@pytest.mark.parametrize(
    "value", ["npm", "npm=", "=NPM", "npm=NPM TOKEN", "npm=1X", "a,b=C", "../x=Y", "npm=A,npm=B"]
)
def test_bad_build_secrets_setting_is_refused(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_build_secrets(value)
    assert caught.value.field == "PREVIEWS_BUILD_SECRETS"


def test_secret_values_come_from_the_block_first_then_the_environment() -> None:
    specs = parse_build_secrets("npm=NPM_TOKEN,go=GO_TOKEN")
    values = resolve_build_secrets(
        specs,
        environ={"NPM_TOKEN": "from-env", "GO_TOKEN": "go-env"},
        stored={"NPM_TOKEN": SecretStr("from-block")},
    )
    assert {k: v.get_secret_value() for k, v in values.items()} == {"npm": "from-block", "go": "go-env"}


def test_a_missing_secret_names_the_variable_and_never_a_value() -> None:
    with pytest.raises(ValidationError, match="secret 'npm' reads NPM_TOKEN, which is set neither") as caught:
        resolve_build_secrets(parse_build_secrets("npm=NPM_TOKEN"), environ={"NPM_TOKEN": ""}, stored={})
    assert caught.value.field == "PREVIEWS_BUILD_SECRETS"


# --- the plain progress log, as BuildKit 0.8 (Docker 20.10) writes it ------------------------------------------------

FAILED_RUN = """\
#1 [internal] load build definition from Dockerfile
#1 sha256:273b94a6b4e9dfe138692f2f9cd0eb3c84e25c612fa17b8122da71555143520e
#1 transferring dockerfile: 120B done
#1 DONE 0.0s
#4 [1/3] FROM docker.io/previews-test/busybox:1
#4 CACHED
#5 [2/3] RUN echo step-one
#5 CACHED
#6 [3/3] RUN echo boom-marker && exit 3
#6 0.277 boom-marker
#6 ERROR: executor failed running [/bin/sh -c echo boom-marker && exit 3]: exit code: 3
------
 > [3/3] RUN echo boom-marker && exit 3:
------
executor failed running [/bin/sh -c echo boom-marker && exit 3]: exit code: 3
"""

PARSE_ERROR = """\
#1 [internal] load build definition from Dockerfile
#1 DONE 0.0s
failed to solve with frontend dockerfile.v0: failed to create LLB definition: dockerfile parse error line 2: unknown instruction: FROBNICATE
"""

ENGINE_GONE = """\
#5 [2/2] RUN sleep 600
#5 0.3 started
error: failed to receive status: rpc error: code = Unavailable desc = error reading from server: EOF
"""

STREAM_CUT = """\
#5 [2/2] RUN sh -c 'sleep 2; echo lost'
#5 0.3 started
cannot write /tmp/previews-build-x/iid because server did not provide an image ID
"""

BASE_IMAGE_5XX = """\
#3 [internal] load metadata for r:5000/base:1
#3 ERROR: unexpected status code [manifests 1]: 503 Service Unavailable
------
 > [internal] load metadata for r:5000/base:1:
------
failed to solve with frontend dockerfile.v0: failed to create LLB definition: unexpected status code [manifests 1]: 503 Service Unavailable
"""

RUN_WITH_NETWORK_WORDS = """\
#7 [stage-2 2/4] RUN curl -fsS https://example.invalid/
#7 0.5 curl: (28) Connection timed out after 10001 milliseconds
#7 ERROR: executor failed running [/bin/sh -c curl -fsS https://example.invalid/]: exit code: 28
"""


def read(text: str) -> BuildLog:
    log = BuildLog()
    for line in text.splitlines():
        log.feed(line)
    return log


@pytest.mark.parametrize(
    ("text", "sentence", "transient"),
    [
        (FAILED_RUN, "step [3/3] RUN echo boom-marker && exit 3 failed: exit code: 3", False),
        (
            PARSE_ERROR,
            "failed to solve with frontend dockerfile.v0: failed to create LLB definition: dockerfile parse error line 2: unknown instruction: FROBNICATE",
            False,
        ),
        (
            ENGINE_GONE,
            "failed to receive status: rpc error: code = Unavailable desc = error reading from server: EOF",
            True,
        ),
        (
            BASE_IMAGE_5XX,
            "[internal] load metadata for r:5000/base:1 failed: unexpected status code [manifests 1]: 503 Service Unavailable",
            True,
        ),
        # a RUN that fails on the network is the Dockerfile's failure, whatever its output says
        (
            RUN_WITH_NETWORK_WORDS,
            "step [stage-2 2/4] RUN curl -fsS https://example.invalid/ failed: exit code: 28",
            False,
        ),
        ("", "the Docker client exited without saying why", False),
    ],
)
def test_a_failed_build_is_one_sentence_and_classified(text: str, sentence: str, transient: bool) -> None:
    assert read(text).failure() == (sentence, transient)


def test_steps_and_cached_steps_are_counted_without_from() -> None:
    log = read(FAILED_RUN)
    assert (log.steps, log.cached_steps) == (2, 1)


def test_a_repeated_vertex_header_is_not_a_new_step() -> None:
    log = read("#5 [2/3] RUN a\n#6 [3/3] RUN b\n#5 [2/3] RUN a\n#5 DONE 1.0s\n#6 CACHED\n")
    assert (log.steps, log.cached_steps) == (2, 1)
