"""``previews up`` as a user and a service manager run it: it says why it cannot start, follows its demo run,
and leaves nothing behind when a signal stops it."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import pytest

from previews.local.stack import _port_free
from tests.support import proctree
from tests.support.console import PREVIEWS
from tests.support.services import free_port


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: none of the test session's Prefect or previews settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PREVIEWS_"))}
    return {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def test_without_a_docker_engine_it_exits_at_once_naming_docker(tmp_path: Path) -> None:
    missing = f"unix://{tmp_path}/no-docker.sock"
    proc = subprocess.run(
        [PREVIEWS, "up", "--demo", "--state-dir", str(tmp_path / "state"), "--port", str(free_port())],
        env=user_env(DOCKER_HOST=missing),
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert proc.returncode == 3  # a required service is unreachable
    assert f"no Docker engine answers at {missing}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "state").exists()  # nothing was started


def test_a_port_in_use_is_named_with_the_option_that_moves_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [
                PREVIEWS,
                "up",
                "--state-dir",
                str(tmp_path),
                "--prefect-port",
                str(port),
                "--port",
                str(free_port()),
            ],
            env=user_env(),
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    assert proc.returncode == 2  # bad configuration
    assert f"port {port} on 127.0.0.1 is in use" in proc.stderr
    assert "--prefect-port" in proc.stderr


def test_a_port_whose_last_connection_is_in_time_wait_counts_as_free() -> None:
    with socket.socket() as server:
        # as the listeners of uvicorn (receiver, Prefect server) do; Linux lets a port in TIME_WAIT be bound
        # again only when both the old and the new socket set SO_REUSEADDR
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the side that closes first keeps the port in TIME_WAIT
    client.close()
    assert port in ports_in_time_wait()
    assert _port_free(port)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert not _port_free(listener.getsockname()[1])


def ports_in_time_wait() -> set[int]:
    """Local TCP ports with a socket in TIME_WAIT (state 06 in ``/proc/net/tcp``)."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "06":
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class Up:
    """A running ``previews up`` in a session of its own, as a service manager starts it."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [PREVIEWS, "up", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._seen:
            while text not in self.output:
                assert self.proc.poll() is None or self._reader.is_alive(), self.output
                left = deadline - time.monotonic()
                assert left > 0, f"no {text!r} within {timeout}s:\n{self.output}"
                self._seen.wait(min(left, 1.0))

    def exit_status(self, *, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code


@contextmanager
def previews_up(args: list[str], env: dict[str, str]) -> Iterator[Up]:
    up = Up(args, env)
    try:
        yield up
    finally:
        if up.proc.poll() is None:  # a failed assertion: do not leave a stack behind
            for proc in proctree.tree(up.proc.pid):
                with suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            up.proc.wait()


def wait_for_grandchild(up: Up, *, timeout: float) -> None:
    """Until a child of a child of ``previews up`` runs (the flow runner's flow-run process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = {p.pid for p in proctree.table() if p.ppid == up.proc.pid}
        if any(p.ppid in children and p.live for p in proctree.table()):
            return
        time.sleep(0.1)
    raise AssertionError(f"no flow run process within {timeout}s:\n{up.output}")


@pytest.mark.slow
def test_each_stop_signal_stops_the_whole_tree_and_the_same_ports_work_again_at_once(tmp_path: Path) -> None:
    ports = ["--prefect-port", str(free_port()), "--port", str(free_port())]
    env = user_env()
    runs = [
        # mid-demo: the registry, the flow runner and its flow-run process are all running
        (signal.SIGTERM, ["--demo", "--state-dir", str(tmp_path / "demo")], 128 + signal.SIGTERM),
        (signal.SIGINT, ["--state-dir", str(tmp_path / "stack")], 0),
        (signal.SIGHUP, ["--state-dir", str(tmp_path / "stack")], 0),
    ]
    for sig, args, expected in runs:
        with previews_up([*args, *ports], env) as up:
            if "--demo" in args:
                up.wait_for("Demo: sending", timeout=300)
                wait_for_grandchild(up, timeout=120)
            else:
                up.wait_for("Press Ctrl-C to stop.", timeout=300)
            snapshot = proctree.tree(up.proc.pid)
            assert len(snapshot) >= 4, up.output  # previews up, Prefect server, flow runner, receiver
            up.proc.send_signal(sig)
            assert up.exit_status(timeout=15) == expected, up.output
            assert proctree.survivors(snapshot) == [], up.output
            assert "Stopped." in up.output


@pytest.mark.slow
def test_a_failed_demo_run_exits_1_at_once_with_the_task_and_its_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # a real failure: the engine refuses to build a target the demo's Dockerfile does not have
    env = user_env(PREVIEWS_BUILD_TARGET="no-such-stage")
    with previews_up(
        ["--demo", "--state-dir", str(state), "--prefect-port", str(free_port()), "--port", str(free_port())],
        env,
    ) as up:
        assert up.exit_status(timeout=600) == 1, up.output
        exited = time.time()
    assert re.search(
        r"^error: the demo's flow run failed in task build: BuildError: .*no-such-stage", up.output, re.M
    )
    assert re.search(r"^flow run: http://127\.0\.0\.1:\d+/runs/flow-run/[0-9a-f-]{36}$", up.output, re.M)
    with sqlite3.connect(state / "prefect" / "prefect.db") as db:
        ((state_type, ended),) = db.execute("SELECT state_type, end_time FROM flow_run").fetchall()
    assert state_type == "FAILED"
    failed_at = datetime.fromisoformat(ended).replace(tzinfo=UTC).timestamp()  # stored as UTC
    assert exited - failed_at < 10, f"exited {exited - failed_at:.1f}s after the run failed"
