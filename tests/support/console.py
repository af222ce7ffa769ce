"""The console scripts of the virtualenv the tests run in, invoked as a user invokes them."""

from __future__ import annotations

import sys
from pathlib import Path

BIN = Path(sys.executable).parent
PREVIEWS = str(BIN / "previews")
