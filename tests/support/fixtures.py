"""Where the test fixtures live: ``tests/fixtures`` (sources and licences in ``tests/fixtures/PROVENANCE.md``)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
