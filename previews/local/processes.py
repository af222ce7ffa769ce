"""The process tree of ``previews up``: find every descendant, stop them in order, leave nothing behind.

Each part of the stack runs in its own process group, so a Ctrl-C in the terminal reaches only ``previews up``,
which then stops the parts itself, in dependency order. Some parts start processes in groups of their own (the
flow runner starts each flow run that way), and a process whose parent dies is re-parented: so ``previews up``
makes itself a child subreaper (Linux), which keeps every orphaned descendant in its tree, and sweeps that
tree at the end. Processes are found through ``/proc`` by parent PID, never by name.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36
_PROC = Path("/proc")


def become_subreaper() -> bool:
    """Make orphaned descendants of this process its children instead of init's (Linux); False elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its tree: its own and its reaped children's, plus its live descendants' own."""
    ticks = os.sysconf("SC_CLK_TCK")

    def used(one: int, *, reaped: bool) -> int:
        try:
            text = (_PROC / str(one) / "stat").read_text()
        except OSError:
            return 0
        fields = text[text.rindex(")") + 2 :].split()  # utime, stime, cutime, cstime are fields 14-17
        return sum(int(f) for f in fields[11 : 15 if reaped else 13])

    return (used(pid, reaped=True) + sum(used(d, reaped=False) for d in descendants(pid))) / ticks


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent PID) of a process, or None when it is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces and parentheses
    return fields[0], int(fields[1])


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _table() -> list[tuple[int, str, int]]:
    """(PID, state, parent PID) of every process."""
    rows = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            rows.append((int(entry.name), *stat))
    return rows


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), parents before their children."""
    children: dict[int, list[int]] = {}
    for child, state, parent in _table():
        if state not in ("Z", "X"):
            children.setdefault(parent, []).append(child)
    found: list[int] = []
    queue = [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def signal_tree(pids: Iterable[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each process and to the process group it leads, ignoring those already gone."""
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def wait_gone(pids: Iterable[int], deadline: float) -> list[int]:
    """Wait until none of ``pids`` runs or ``deadline`` (monotonic) passes; the ones still running."""
    waiting = list(pids)
    while True:
        reap()
        waiting = [pid for pid in waiting if running(pid)]
        if not waiting or time.monotonic() >= deadline:
            return waiting
        time.sleep(0.05)


def reap() -> None:
    """Collect the exit status of children that ended, adopted orphans included (a subreaper must).

    A :class:`subprocess.Popen` whose process is reaped here reports return code 0 from ``wait()``: call this
    only while stopping, when the return codes no longer matter.
    """
    own = os.getpid()
    for pid, state, parent in _table():
        if parent == own and state == "Z":
            with suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
