"""Find processes by a marker in their command line (BuildKit runs RUN steps as plain host processes)."""

from __future__ import annotations

import time
from pathlib import Path


def processes_with(marker: str) -> list[int]:
    """PIDs whose command line contains ``marker`` (the caller's own process excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if marker in cmdline and "pytest" not in cmdline:
            found.append(int(entry.name))
    return found


def wait_until_gone(marker: str, *, timeout: float = 20.0) -> list[int]:
    """Poll until no process carries ``marker``; return what is still there at the deadline."""
    deadline = time.monotonic() + timeout
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def wait_until_running(marker: str, *, timeout: float = 60.0) -> list[int]:
    """Poll until a process carries ``marker``; raise if none appears."""
    deadline = time.monotonic() + timeout
    while not (found := processes_with(marker)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no process with {marker!r} appeared within {timeout}s")
        time.sleep(0.2)
    return found
