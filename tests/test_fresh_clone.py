"""The repository stands alone: a clone into an empty directory collects every test, and nothing in it
refers to files outside the checkout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_clone_in_an_empty_directory_collects_every_test_without_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(empty / "previews")], check=True, timeout=120)
    assert [p.name for p in empty.iterdir()] == ["previews"]  # nothing beside the clone
    clone = empty / "previews"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREVIEWS_", "PYTHONPATH"))}

    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import previews, tests.support.fixtures as f; print(previews.__file__, f.FIXTURES)",
        ],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    module, fixtures = where.stdout.split()
    assert Path(module).is_relative_to(clone)  # the clone's code, not this checkout's
    assert Path(fixtures) == clone / "tests" / "fixtures"

    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    summary = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.fullmatch(r"\d+ tests collected in [0-9.]+s", summary), summary
    assert int(summary.split()[0]) > 1000


def test_nothing_tracked_refers_to_a_directory_beside_the_checkout() -> None:
    outside = "../" + "shared"  # spelled in two parts so this file does not match itself
    hits = subprocess.run(
        ["git", "grep", "-n", "-F", "-e", outside, "-e", "/work/" + "shared", "-e", "shared/" + "fixtures"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert hits.returncode == 1, hits.stdout  # git grep exits 1 when nothing matches
