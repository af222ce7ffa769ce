"""Process trees from ``/proc``, for checking that a command leaves nothing running (by PID and group)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    """One process: its PID, parent, process group, state letter and start time (PIDs get reused)."""

    pid: int
    ppid: int
    pgid: int
    state: str
    started: int

    @property
    def live(self) -> bool:
        return self.state not in ("Z", "X")


def read(pid: int) -> Proc | None:
    """The process ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return Proc(pid, int(fields[1]), int(fields[2]), fields[0], int(fields[19]))


def table() -> list[Proc]:
    """Every process on the machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (proc := read(int(entry.name))) is not None:
            found.append(proc)
    return found


def tree(root: int) -> list[Proc]:
    """``root`` and every live process below it."""
    procs = table()
    below: dict[int, list[Proc]] = {}
    for proc in procs:
        below.setdefault(proc.ppid, []).append(proc)
    top = read(root)
    result = [top] if top is not None else []
    queue = [root]
    while queue:
        for child in below.get(queue.pop(0), []):
            if child.live:
                result.append(child)
                queue.append(child.pid)
    return result


def survivors(snapshot: list[Proc]) -> list[Proc]:
    """Processes of ``snapshot`` still running (same PID and start time), or running in one of its groups."""
    groups = {proc.pgid for proc in snapshot}
    known = {(proc.pid, proc.started) for proc in snapshot}
    return [
        proc for proc in table() if proc.live and ((proc.pid, proc.started) in known or proc.pgid in groups)
    ]
