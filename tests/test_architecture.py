"""The architecture holds: every module imports on its own, and the core does no I/O."""

from __future__ import annotations

import ast
import subprocess
import sys
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


def modules() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def test_every_module_imports_alone() -> None:
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    failures = []
    for name in modules():
        proc = subprocess.run([sys.executable, "-c", script, name], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            failures.append(f"{name}: {proc.stderr.strip().splitlines()[-1:]}")
    assert failures == []


@pytest.mark.parametrize("path", sorted((ROOT / "previews" / "core").rglob("*.py")), ids=lambda p: p.name)
def test_core_imports_no_io_library(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported & IO_LIBRARIES == set()
    assert not {m for m in imported if m == "previews"} or all(
        not isinstance(node, ast.ImportFrom)
        or not node.module
        or not node.module.startswith("previews.")
        or node.module.startswith(("previews.core", "previews.errors"))
        for node in ast.walk(tree)
    )


def test_imports_point_one_way() -> None:
    """previews_cli -> flows -> blocks -> previews; nothing in previews/ imports flows, blocks or the CLI."""
    offenders = []
    for path in (ROOT / "previews").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {n}" for n in names if n.split(".")[0] in {"flows", "blocks", "previews_cli"}
            ]
    assert offenders == []
