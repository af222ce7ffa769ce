"""BuildKit against the classic builder, and cold engines with and without the registry cache.

    python bench/buildkit.py [--samples 3]      (needs root: it starts private, empty Docker engines)

One fixture repository (a busybox-based Dockerfile with a 16 MiB layer, a COPY of the sources and a RUN over
them, as in bench/pipeline.py) measured side by side:

1. warm one-line rebuild on the shared engine: the classic builder (docker-py ``api.build``, what `previews`
   used before) against BuildKit through `previews`' own build adapter (the Docker CLI, process start
   included); median of ``--samples`` one-line changes each, after one cold build of each;
2. cold-engine rebuild after a one-line change, each on a fresh private engine (no layers, no BuildKit cache,
   only the base image loaded): without any cache; with the registry cache the flow uses (docker-py pulls the
   PR's previous image, then ``--cache-from`` it: BuildKit reads its inline cache metadata); and with
   ``--cache-from`` straight from the registry (BuildKit fetches the cache metadata itself, with the push
   credentials in a private DOCKER_CONFIG). Twice: with the 16 MiB layer (a cache hit saves little: the layer
   must be fetched), and with a CPU-bound step of small output instead (a compile: a hit saves its time).

``bench/run.py`` runs this too and prints its rows in the one table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import docker
from pydantic import SecretStr

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from previews import build_cache  # noqa: E402
from previews.docker_engine import BuildSpec, DockerEngine, RegistryLogin  # noqa: E402
from tests.support.private_engine import private_engine  # noqa: E402
from tests.support.services import BASE_IMAGE, ensure_base_image, run_registry  # noqa: E402

DOCKERFILE = """\
FROM {base}
RUN mkdir -p /opt && echo {salt} > /opt/salt && dd if=/dev/urandom of=/opt/blob bs=1M count=16 2>/dev/null
COPY src/ /opt/src/
RUN cat /opt/src/* /opt/salt > /opt/all.txt && sha256sum /opt/blob > /opt/blob.sha256
"""

# The same shape with a CPU-bound step whose output is small (standing in for a compile or a dependency
# install), where a cache hit saves time rather than bytes.
COMPILE_DOCKERFILE = """\
FROM {base}
RUN mkdir -p /opt && echo {salt} > /opt/salt && i=0 && while [ $i -lt 400000 ]; do i=$((i+1)); done \\
    && echo $i > /opt/compiled
COPY src/ /opt/src/
RUN cat /opt/src/* /opt/salt /opt/compiled > /opt/all.txt
"""

Row = tuple[str, str, str, str, str]


class Fixture:
    """The build context: a Dockerfile with a salt of its own and a source file to change one line of."""

    def __init__(self, root: Path, dockerfile: str = DOCKERFILE) -> None:
        self.root = root
        (root / "src").mkdir(parents=True)
        (root / "Dockerfile").write_text(dockerfile.format(base=BASE_IMAGE, salt=uuid.uuid4().hex))
        self.version = 0
        self.one_line_change()

    def one_line_change(self) -> None:
        self.version += 1
        (self.root / "src" / "main.txt").write_text(f"line {self.version}\n")


def classic_build(client: docker.DockerClient, context: Path, ref: str) -> float:
    """The classic builder through docker-py, as `previews` built before BuildKit."""
    start = time.monotonic()
    for chunk in client.api.build(path=str(context), tag=ref, rm=True, forcerm=True, pull=False, decode=True):
        if isinstance(chunk, dict) and "error" in chunk:
            raise RuntimeError(chunk["error"])
    return time.monotonic() - start


def buildkit_build(engine: DockerEngine, context: Path, ref: str, **kwargs: object) -> tuple[float, int, int]:
    """BuildKit through `previews`' adapter; (seconds, steps, cached steps)."""
    start = time.monotonic()
    built = engine.build(BuildSpec(context, "Dockerfile", ref), **kwargs)  # type: ignore[arg-type]
    return time.monotonic() - start, built.steps, built.cached_steps


def warm_rebuilds(samples: int, workdir: Path) -> list[Row]:
    """Median warm one-line rebuild: classic builder against BuildKit, same repository, same engine."""
    client = docker.from_env(timeout=600)
    engine = DockerEngine(client)
    fixture = Fixture(workdir / "warm")
    refs = ("previews-bench/classic:warm", "previews-bench/buildkit:warm")
    try:
        classic_cold = classic_build(client, fixture.root, refs[0])
        buildkit_cold, _, _ = buildkit_build(engine, fixture.root, refs[1])
        classic: list[float] = []
        buildkit: list[float] = []
        cached = ""
        for _ in range(samples):
            fixture.one_line_change()
            classic.append(classic_build(client, fixture.root, refs[0]))
            seconds, steps, hits = buildkit_build(engine, fixture.root, refs[1])
            buildkit.append(seconds)
            cached = f"{hits}/{steps} steps cached"
    finally:
        for ref in refs:
            engine.remove(ref)
    c, b = statistics.median(classic), statistics.median(buildkit)
    return [
        ("warm one-line rebuild: classic builder", f"{c:.2f} s", f"cold {classic_cold:.2f} s", "1.00x", f"median of {samples}"),
        ("warm one-line rebuild: BuildKit (CLI)", f"{b:.2f} s", f"cold {buildkit_cold:.2f} s", f"{b / c:.2f}x", f"median of {samples}, {cached}"),
    ]  # fmt: skip


def cold_engine_rebuilds(
    workdir: Path, dockerfile: str = DOCKERFILE, what: str = "16 MiB layer"
) -> list[Row]:
    """A one-line rebuild on fresh, empty engines: no cache, pulled image as cache, registry cache."""
    client = docker.from_env(timeout=600)
    fixture = Fixture(workdir / f"cold-{uuid.uuid4().hex[:6]}", dockerfile)
    with run_registry(workdir / f"registry-{uuid.uuid4().hex[:6]}") as registry:
        name = f"{registry.host}/bench/app"
        password = SecretStr(registry.password)
        login = RegistryLogin(registry.host, registry.username, password)
        first = f"pr-1-{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}"
        shared = DockerEngine(client)
        shared.build(BuildSpec(fixture.root, "Dockerfile", f"{name}:{first}"))
        shared.push(name, first, username=registry.username, password=password)
        shared.remove(f"{name}:{first}")
        fixture.one_line_change()

        def on_fresh_engine(
            measure: Callable[[DockerEngine], tuple[float, int, int, float]],
        ) -> tuple[float, int, int, float]:
            with private_engine() as cold:
                cold.load(BASE_IMAGE)
                return measure(DockerEngine(cold.client(), docker_host=cold.host))

        def no_cache(engine: DockerEngine) -> tuple[float, int, int, float]:
            return (*buildkit_build(engine, fixture.root, f"{name}:next"), 0.0)

        def pulled_cache(engine: DockerEngine) -> tuple[float, int, int, float]:
            start = time.monotonic()
            failure = build_cache.pull(
                engine.client, f"{name}:{first}", username=registry.username, password=password
            )
            if failure is not None:
                raise RuntimeError(failure)
            pulled = time.monotonic() - start
            seconds, steps, hits = _build_with_cache(
                engine, fixture.root, f"{name}:next", f"{name}:{first}", None
            )
            return seconds, steps, hits, pulled

        def registry_cache(engine: DockerEngine) -> tuple[float, int, int, float]:
            return (*_build_with_cache(engine, fixture.root, f"{name}:next", f"{name}:{first}", login), 0.0)

        results = {
            "none": on_fresh_engine(no_cache),
            "pulled": on_fresh_engine(pulled_cache),
            "registry": on_fresh_engine(registry_cache),
        }
    base = results["none"][0]
    rows: list[Row] = []
    labels = {
        "none": f"cold engine one-line rebuild ({what}): no cache",
        "pulled": f"cold engine one-line rebuild ({what}): pull + --cache-from (flow)",
        "registry": f"cold engine one-line rebuild ({what}): --cache-from registry",
    }
    for key, (seconds, steps, hits, pulled) in results.items():
        total = seconds + pulled
        note = f"{hits}/{steps} steps cached" + (
            f", build {seconds:.2f} s + pull {pulled:.2f} s" if pulled else ""
        )
        rows.append((labels[key], f"{total:.2f} s", f"no cache {base:.2f} s", f"{total / base:.2f}x", note))
    return rows


def _build_with_cache(
    engine: DockerEngine, context: Path, ref: str, cache: str, login: RegistryLogin | None
) -> tuple[float, int, int]:
    start = time.monotonic()
    built = engine.build(BuildSpec(context, "Dockerfile", ref, cache_from=(cache,)), login=login)
    return time.monotonic() - start, built.steps, built.cached_steps


def measure(samples: int = 3) -> list[Row]:
    """Every row of this bench (the private engines need root)."""
    ensure_base_image(docker.from_env(timeout=300))
    with tempfile.TemporaryDirectory(prefix="previews-bench-buildkit-") as tmp:
        rows = warm_rebuilds(samples, Path(tmp))
        if os.geteuid() == 0:
            rows += cold_engine_rebuilds(Path(tmp))
            rows += cold_engine_rebuilds(Path(tmp), COMPILE_DOCKERFILE, "CPU-bound step")
        else:
            rows.append(("cold engine rebuilds", "not measured", "", "", "needs root (private dockerd)"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=3, help="warm one-line rebuilds per builder")
    args = parser.parse_args()
    started = time.monotonic()
    rows = measure(args.samples)
    print(f"total {time.monotonic() - started:.0f} s")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
