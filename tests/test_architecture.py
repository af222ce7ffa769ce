"""The architecture holds: imports point one way, the core does no I/O, adapters stand alone, one place wires
the clients, and flows stay short enough to read as a list of steps.

    previews_cli -> flows -> blocks -> previews.wiring -> adapters -> previews.core (+ previews.errors)
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("previews", "previews_cli", "flows", "blocks")
IO_LIBRARIES = {
    "prefect",
    "httpx",
    "docker",
    "git",
    "starlette",
    "uvicorn",
    "requests",
    "socket",
    "subprocess",
    "sqlite3",
    "urllib",
    "http",
    "asyncio",
    "shutil",
    "tempfile",
}
PURE_PARTS = {"urllib.parse"}  # string handling inside an I/O library's package
# The adapters: each talks to one outside thing and takes plain values (never Settings).
ADAPTERS = (
    "previews.github",
    "previews.registry",
    "previews.docker_engine",
    "previews.git",
    "previews.ingress",
    "previews.runs",
    "previews.run_history",
    "previews.pool",
)
# Constructors of clients: called in previews/wiring.py only (the adapters' own modules define them).
CLIENTS = {
    "GitHubClient",
    "GitHubDispatchTarget",
    "WebhookTarget",
    "OciRegistry",
    "OciRepository",
    "GhcrPackage",
    "GitHubPackages",
    "DockerEngine",
    "from_env",
    "GitSource",
    "PrefectRuns",
    "RunHistory",
    "PoolLimits",
    "get_client",
    "Forwarder",
    "Outbox",
}
# ... and the adapter's own module, where it wraps the library's constructor.
OWN_CONSTRUCTORS = {"from_env": "previews.docker_engine"}
MAX_LINES = {"flows": 40, "previews": 60}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports (relative imports resolved), at any depth of the file."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(x for x in (base, node.module or "") if x)
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def io_imports(path: Path) -> set[str]:
    """The I/O libraries ``path`` imports."""
    return {
        name.split(".")[0]
        for name in imports(path)
        if name.split(".")[0] in IO_LIBRARIES and not any(within(name, pure) for pure in PURE_PARTS)
    }


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def adapter_of(name: str) -> str | None:
    return next((a for a in ADAPTERS if within(name, a)), None)


def test_every_module_imports_alone() -> None:
    """Each module imports with none of ours loaded before it (third-party modules stay loaded, for speed)."""
    script = (
        "import importlib, sys, traceback\n"
        f"ours = {PACKAGES!r}\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] in ours]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except BaseException as exc:\n"
        "        print(f'{name}: {type(exc).__name__}: {exc}')\n"
    )
    names = [module_name(p) for p in sources(*PACKAGES)]
    proc = subprocess.run([sys.executable, "-c", script, *names], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == []


@pytest.mark.parametrize("path", sources("previews/core"), ids=lambda p: p.name)
def test_core_does_no_io_and_imports_only_core_and_errors(path: Path) -> None:
    found = set(imports(path))
    assert io_imports(path) == set()
    ours = {n for n in found if within(n, "previews")}
    assert {n for n in ours if not within(n, "previews.core") and not within(n, "previews.errors")} == set()


def does_io(module: str) -> bool:
    """True when ``module`` (one of ours) imports an I/O library; a name that is no file is an attribute."""
    base = ROOT / Path(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return bool(io_imports(path))
    return False


ADAPTER_MODULES = [p for p in sources("previews") if adapter_of(module_name(p))]


@pytest.mark.parametrize("path", ADAPTER_MODULES, ids=module_name)
def test_adapters_import_neither_settings_nor_each_other(path: Path) -> None:
    """An adapter takes plain values. Of another adapter's package it may use pure protocol code only
    (``previews.github.webhooks``: GitHub's signature header and delivery format), never its I/O."""
    mine = adapter_of(module_name(path))
    offenders = {
        name
        for name in imports(path)
        if within(name, "previews.settings")
        or within(name, "previews.wiring")
        or (adapter_of(name) not in (None, mine) and does_io(name))
    }
    assert offenders == set()


def test_the_library_imports_neither_flows_blocks_nor_the_cli() -> None:
    offenders = [
        f"{module_name(path)}: {name}"
        for path in sources("previews")
        for name in imports(path)
        if name.split(".")[0] in {"flows", "blocks", "previews_cli"}
    ]
    assert offenders == []


def test_clients_are_built_in_the_composition_root_only() -> None:
    """Outside previews/wiring.py nothing calls a client's constructor, except an adapter composing a client
    of its own package (GHCR's Packages API speaks through the GitHub client) and the local stack's
    housekeeping (previews/local: the demo forgets its images; not imported by the library)."""
    homes = {
        node.name: module_name(path)
        for path in sources("previews")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
    } | OWN_CONSTRUCTORS
    offenders = []
    for path in sources(*PACKAGES):
        name = module_name(path)
        if name == "previews.wiring" or within(name, "previews.local"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called not in CLIENTS or homes.get(called) == name:
                continue
            if adapter_of(name) is not None and adapter_of(name) == adapter_of(homes.get(called, "")):
                continue
            offenders.append(f"{name}:{node.lineno} {called}")
    assert offenders == []


@pytest.mark.parametrize(("package", "limit"), sorted(MAX_LINES.items()))
def test_functions_stay_short(package: str, limit: int) -> None:
    """No function in flows/ is longer than 40 lines, none in previews/ longer than 60 (docstring included)."""
    long = []
    for path in sources(package):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = (node.end_lineno or node.lineno) - start + 1
                if lines > limit:
                    long.append(f"{module_name(path)}.{node.name}: {lines} lines")
    assert long == []


def test_the_cli_imports_no_prefect_before_a_command_runs() -> None:
    """One-shot commands choose their Prefect API (``previews.local.prefect_api``) before Prefect is imported:
    Prefect fixes its settings on import, so a command module that imports it early sends runs elsewhere."""
    probe = (
        "import sys, previews_cli.app; print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
