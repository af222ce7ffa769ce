"""``previews.local.processes.cpu_seconds``: the CPU time of a process tree, live and reaped descendants."""

from __future__ import annotations

import subprocess
import sys
import time

from previews.local.processes import cpu_seconds

BURN = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"


def test_cpu_of_a_tree_counts_a_live_child_and_then_the_reaped_one() -> None:
    # A parent that starts a CPU-burning child, waits for it, then sleeps: measured while the child runs, and
    # after it was reaped (then its time is in the parent's cutime).
    script = (
        f"import subprocess, sys, time\nsubprocess.run([sys.executable, '-c', {BURN!r}])\ntime.sleep(30)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        before = cpu_seconds(parent.pid)
        deadline = time.monotonic() + 20
        while cpu_seconds(parent.pid) - before < 0.6 and time.monotonic() < deadline:
            time.sleep(0.1)  # the child burning, counted live
        time.sleep(1.0)  # the child has ended and been reaped: counted in the parent's cutime now
        assert cpu_seconds(parent.pid) - before >= 0.6
    finally:
        parent.kill()
        parent.wait()
    assert cpu_seconds(parent.pid) == 0.0  # a process that is gone has none
