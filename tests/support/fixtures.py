"""Where the shared fixtures live: ``shared/fixtures`` beside the repository checkout (as in CI)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("PREVIEWS_SHARED_DIR", REPO_ROOT.parent / "shared"))
FIXTURES = SHARED / "fixtures"
if not FIXTURES.is_dir():  # pragma: no cover - a checkout without shared/ beside it
    raise RuntimeError(f"shared fixtures not found at {FIXTURES}; set PREVIEWS_SHARED_DIR")
